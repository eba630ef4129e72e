"""A run's progress, and the heartbeat that writes it to the run's row while the run executes.

Readers in other processes (the app when a standalone worker trains, a replica) see the run through its row, so
each beat carries the whole progress: ``phase``, ``step``, ``total``, ``message`` and ``history``, the training
curve (at most :data:`HISTORY_POINTS` records of TRL's metric names, thinned evenly, the newest always kept).
The heartbeat beats every ``every_s`` seconds through every phase (embedding included, so the reaper does not
take a long embedding for a dead worker), and at once when the phase changes, at most one write per
:data:`MIN_BEAT_GAP_S`. It notes when the lease is lost, so the run stops at its next step.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from annotation_db import Repository, RunInfo, RunLostError

log = logging.getLogger(__name__)

BEAT_EVERY_S = 10.0  # heartbeat period (the reaper's timeout is 300 s)
MIN_BEAT_GAP_S = 1.0  # phase changes beat at once, but the row is written at most this often
HISTORY_POINTS = 200  # training-curve records a beat carries
# What a beat's curve records carry: TRL's metric names and kl/clean, as the training chart draws them. With
# values to 5 significant digits, 200 records are about 40 kB, inside the store's 64 kB for a run's metrics.
HISTORY_KEYS = ("step", "epoch", "loss", "rewards/chosen", "rewards/rejected", "rewards/margins",
                "rewards/accuracies", "kl/clean")


# The phases a run goes through, and what the run's record calls the seconds of each (``phases_s``).
PHASE_NAMES = {"loading pairs": "data", "embedding": "embedding", "training": "training", "evaluating": "evaluation"}


def clocks() -> tuple[float, float]:
    """(wall, CPU) clocks now: ``perf_counter`` and this process's CPU time over all its threads."""
    return time.perf_counter(), time.process_time()


@dataclass
class Progress:
    """What the UI shows while a run trains, and how long each phase took (:meth:`timings`)."""

    run_id: int | None = None
    phase: str = "idle"
    step: int = 0
    total: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    message: str = ""
    updated: float = field(default_factory=time.time)
    spent: dict[str, tuple[float, float]] = field(default_factory=dict)  # (wall, CPU) s of the phases left so far
    entered: tuple[float, float] = field(default_factory=clocks)  # the clocks when the current phase began

    def enter(self, phase: str) -> None:
        """Move on to ``phase``; the time spent in the current one goes to :attr:`spent`."""
        self.spent = self.timings()
        self.phase, self.entered, self.updated = phase, clocks(), time.time()

    def timings(self) -> dict[str, tuple[float, float]]:
        """(wall, CPU) seconds per phase, the current one counted up to now. On a busy machine the wall time
        grows while the CPU time (all threads together) stays about what the phase costs."""
        now, before = clocks(), self.spent.get(self.phase, (0.0, 0.0))
        current = tuple(b + n - e for b, n, e in zip(before, now, self.entered, strict=True))
        return {**self.spent, self.phase: current}


def thin(history: Sequence[dict], limit: int = HISTORY_POINTS) -> list[dict]:
    """At most ``limit`` records of ``history``, evenly spaced, the first and the newest always among them."""
    n = len(history)
    if n <= limit:
        return list(history)
    # Spacing (n - 1) / (limit - 1) > 1, so the rounded indices are distinct and end at n - 1.
    return [history[round(i * (n - 1) / (limit - 1))] for i in range(limit)]


def _curve_point(record: dict[str, Any]) -> dict[str, Any]:
    point: dict[str, Any] = {}
    for key in HISTORY_KEYS:
        if key in record:
            value = record[key]
            if isinstance(value, float):
                value = float(f"{value:.5g}") if math.isfinite(value) else None  # JSON has no NaN
            point[key] = value
    return point


def beat_metrics(progress: Progress) -> dict[str, Any]:
    """A beat's metrics: exactly ``phase``, ``step``, ``total``, ``message`` and ``history`` (see the module)."""
    history = list(progress.history)  # a copy: the training thread appends while a beat is written
    return {"phase": progress.phase, "step": int(progress.step), "total": int(progress.total),
            "message": progress.message, "history": [_curve_point(r) for r in thin(history)]}


class Heartbeat:
    """Beats for a claimed run from a thread while the run executes (a context manager).

    Args:
        repo: the store holding the run.
        run: the claimed run; its lease goes with every beat.
        every_s: the period between beats.
        metrics: what a beat writes (:func:`beat_metrics` of the trainer's progress), asked at each beat.
        min_gap_s: the least time between two writes from the thread (phase changes included).
    """

    def __init__(self, repo: Repository, run: RunInfo, every_s: float, metrics: Callable[[], dict],
                 min_gap_s: float = MIN_BEAT_GAP_S) -> None:
        self.repo, self.run, self.every_s, self.metrics, self.min_gap_s = repo, run, every_s, metrics, min_gap_s
        self.lost: str | None = None
        self._stop = threading.Event()
        self._nudge = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"poclip-heartbeat-{run.id}", daemon=True)

    def _beat(self) -> None:
        last = -math.inf
        while True:
            self._nudge.wait(self.every_s)
            self._nudge.clear()
            wait = last + self.min_gap_s - time.monotonic()
            if self._stop.is_set() or (wait > 0 and self._stop.wait(wait)):
                return
            last = time.monotonic()
            try:
                self.write()
            except RunLostError as exc:
                self.lost = str(exc)
                return
            except Exception:  # a database hiccup: try again next period; the reaper allows 30 periods
                log.exception("heartbeat for run %s failed", self.run.id)

    def write(self, judgment_watermark: int | None = None) -> None:
        """Beat now, from the calling thread, with the current metrics (and the judgment watermark, if given).

        Raises ``RunLostError`` when the run is no longer ours.
        """
        self.repo.heartbeat(self.run.id, self.metrics(), lease=self.run.lease, judgment_watermark=judgment_watermark)

    def nudge(self) -> None:
        """Beat soon (the phase changed): at once, or when :data:`MIN_BEAT_GAP_S` has passed since the last beat."""
        self._nudge.set()

    def check(self) -> None:
        """Raise ``RunLostError`` if a beat found the run no longer ours."""
        if self.lost is not None:
            raise RunLostError(self.lost)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._nudge.set()
        self._thread.join(timeout=30)
