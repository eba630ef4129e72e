"""Trainer control from the serving side: queue a retrain, and read the trainer's progress, all through the store.

The trainer (:mod:`poclip.app.worker`) runs in a thread that ``app.py`` starts beside the service, or in a
``python -m poclip worker`` process; either way serving never builds or imports it. A retrain is a queued
run; progress is the newest run's row and, while it runs, the metrics of its heartbeat, which the trainer
writes with the keys ``phase``, ``step``, ``total``, ``message`` and ``history`` (at most
:data:`MAX_HISTORY` records ``{"step": int, <metric>: float, ...}``, TRL's metric names).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

from annotation_db import NotFoundError, Repository, RunInfo
from poclip.engine.losses import PREFERENCE_LOSSES
from poclip.errors import UserError

MAX_HISTORY = 200  # metric records a heartbeat carries (the chart's points)


@dataclass(frozen=True)
class TrainingProgress:
    """What the Train tab shows about the newest run: its phase, steps and metric history.

    ``phase`` is ``idle`` (no run yet), ``queued``, the running trainer's own phase (``loading pairs``,
    ``embedding``, ``training``, ``evaluating``), or how the run ended: ``promoted``, ``rejected``, ``failed``.
    """

    run_id: int | None = None
    phase: str = "idle"
    step: int = 0
    total: int = 0
    message: str = ""
    history: list[dict[str, float]] = field(default_factory=list)

    def as_status(self) -> dict[str, Any]:
        """The JSON form in ``/status`` (``trainer``): run, phase, step, total, message."""
        return {"run": self.run_id, "phase": self.phase, "step": self.step, "total": self.total,
                "message": self.message}


def _count(value: Any) -> int:
    return int(value) if isinstance(value, Real) and not isinstance(value, bool) else 0


def metric_history(records: Any) -> list[dict[str, float]]:
    """The last :data:`MAX_HISTORY` well-formed records of a stored history: dicts with a numeric ``step``,
    keeping their numeric entries; anything else (a missing or malformed history) is left out."""
    if not isinstance(records, list):
        return []
    kept = []
    for record in records[-MAX_HISTORY:]:
        if isinstance(record, dict) and isinstance(record.get("step"), Real):
            kept.append({k: float(v) for k, v in record.items()
                         if isinstance(k, str) and isinstance(v, Real) and not isinstance(v, bool)})
    return kept


class TrainingControl:
    """Retrain on request and report the trainer's progress, reading and writing only the store.

    Args:
        repo: the store: the run queue and each run's heartbeat.
        require_admin: raises unless the token or Hugging Face orgs give admin rights.
    """

    def __init__(self, repo: Repository, require_admin: Callable[[str | None, list[str] | None], None]) -> None:
        self.repo = repo
        self.require_admin = require_admin
        # Set where a retrain runs as part of the click (POCLIP_TRAINER=zerogpu): executes a queued run by id.
        self.executor: Callable[[int], RunInfo | None] | None = None

    def retrain(self, loss: str = "dpo", *, token: str | None = None, hf_orgs: list[str] | None = None) -> dict:
        """Queue a retrain (admin); the trainer, wherever it runs, picks it up, or (with an :attr:`executor`) the
        run is executed now and this returns once it is over.

        Dead runs (a stale heartbeat, a worker process on this host that is gone) are failed first, so a crash
        does not leave "run N is running" behind. At most one run is queued: further clicks get that run.

        Returns:
            ``{"run_id": id, "status": "queued"}`` (or the status the queued run has by now); after executing it,
            the outcome: ``promoted``, ``rejected`` or ``failed``.
        """
        self.require_admin(token, hf_orgs)
        if loss not in PREFERENCE_LOSSES:
            raise UserError(f"Unknown loss {loss!r}; choose one of {', '.join(PREFERENCE_LOSSES)}.")
        self.repo.reap_stale_runs()
        if self.executor is not None and any(r.status == "running" for r in self.repo.list_runs(limit=2)):
            # Nothing would pick a run queued now up: the next click would. Say so instead of queueing it.
            raise UserError("A retrain is running; its verdict appears here when it ends. Click again after that.")
        run = self.repo.enqueue_run({"loss": loss, "reason": "manual retrain"})
        if self.executor is not None and run.status == "queued":
            done = self.executor(run.id)
            if done is not None:
                return {"run_id": done.id, "status": self.progress_of(done).phase}
        return {"run_id": run.id, "status": run.status}

    def progress(self) -> TrainingProgress:
        """The newest run's progress, from its row and heartbeat. Two primary-key reads at most."""
        runs = self.repo.list_runs(limit=1)
        return self.progress_of(runs[0] if runs else None)

    def progress_of(self, run: RunInfo | None) -> TrainingProgress:
        """The progress ``run`` shows: its heartbeat while it runs, how it ended once it has."""
        if run is None:
            return TrainingProgress()
        metrics = run.metrics or {}
        history = metric_history(metrics.get("history"))
        step, total = _count(metrics.get("step")), _count(metrics.get("total"))
        if run.status == "running":
            return TrainingProgress(run.id, str(metrics.get("phase") or "running"), step, total,
                                    str(metrics.get("message") or ""), history)
        if run.status == "failed":
            return TrainingProgress(run.id, "failed", step, total, (run.error or "").splitlines()[0] if run.error
                                    else "", history)
        if run.status == "succeeded":
            return TrainingProgress(run.id, self._outcome(run), step, total, str(metrics.get("gate", "")), history)
        return TrainingProgress(run.id, run.status)

    def _outcome(self, run: RunInfo) -> str:
        """``rejected`` when the gate refused the run's candidate, else ``promoted`` (rolled back later or not)."""
        if run.version_id is None:
            return run.status
        try:
            return "rejected" if self.repo.get_version(run.version_id).status == "rejected" else "promoted"
        except NotFoundError:
            return run.status

    def latest_evaluation(self) -> dict | None:
        """The newest finished run's held-out evaluation (candidate, live before, base), if any."""
        runs = self.repo.list_runs(limit=1)
        return runs[0].metrics if runs and runs[0].metrics and "candidate" in runs[0].metrics else None
