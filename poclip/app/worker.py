"""The trainer: turns collected preference pairs into a new head, gates it, and promotes or rejects it.

One loop, :meth:`Trainer.loop`, runs either as a background thread inside the app (``POCLIP_TRAINER=thread``)
or as the standalone process ``python -m poclip worker``, against the same database. The database decides
who trains: at most one run is queued and one running (partial unique indexes), and a claimed run carries a
lease that registering, promoting and finishing must present, so a worker that lost its run (frozen past the
heartbeat timeout, then resumed) cannot overwrite the next worker's result. A heartbeat thread beats through
every phase, embedding included, carrying the run's progress. The live head is
:class:`poclip.app.live.LiveHead`'s; serving never imports this module.

Each step of a run has its own module in :mod:`poclip.app.retrain` (data, training, evaluation, gate,
registration, schedule, heartbeat); this module runs them in order. Their public names used elsewhere are
importable from here too.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from annotation_db import Repository, RunInfo, RunLostError, RunnerBusyError, worker_name
from poclip.app.identity import server_secret
from poclip.app.live import LiveHead, LiveModel
from poclip.app.pair_counts import PairCounts, count_pairs
from poclip.app.retrain.crowd import HeldOutSplit, crowd_agreement
from poclip.app.retrain.data import MIN_CLEAN, MIN_PAIRS, REPLAY_SEED, NotEnoughData, collect, text_invariance_pairs
from poclip.app.retrain.evaluation import GATE_SEED, GateEvaluation
from poclip.app.retrain.gate import (
    CLASS_DROP_LIMIT,
    CLEAN_DROP_LIMIT,
    MIN_HELD_OUT,
    class_table,
    format_class_table,
    gate,
    gate_table,
)
from poclip.app.retrain.heartbeat import BEAT_EVERY_S, Heartbeat, Progress, beat_metrics
from poclip.app.retrain.registration import finish, register, run_record
from poclip.app.retrain.schedule import BACKOFF_S, Schedule
from poclip.app.retrain.training import replay_epochs, run_config, train_candidate
from poclip.engine.config import DEFAULT_HEAD
from poclip.engine.evaluate import EvalEmbeddings
from poclip.engine.models import ClipEncoder
from poclip.engine.policy import Policy, check_head
from poclip.engine.starter import load_starter
from poclip.settings import Settings

__all__ = [
    "BACKOFF_S", "BEAT_EVERY_S", "CLASS_DROP_LIMIT", "CLEAN_DROP_LIMIT", "GATE_SEED", "MIN_CLEAN", "MIN_HELD_OUT",
    "MIN_PAIRS",
    "REPLAY_SEED", "NotEnoughData", "Progress", "Trainer", "class_table", "format_class_table", "gate",
    "replay_epochs", "text_invariance_pairs",
]

log = logging.getLogger(__name__)


class Trainer:
    """Runs queued training runs one at a time and keeps its live head in step with the database."""

    def __init__(self, settings: Settings, repo: Repository, encoder: ClipEncoder, live: LiveHead | None = None,
                 *, clock: Callable[[], float] | None = None, beat_every_s: float = BEAT_EVERY_S) -> None:
        self.settings = settings
        self.head = check_head(encoder, settings.head or DEFAULT_HEAD)  # fails at start, not at the first run
        self.repo = repo
        self.encoder = encoder
        self.live_head = live or LiveHead(repo, encoder, load_starter(encoder) if settings.starter_head else None)
        self.worker_id = worker_name(f"{id(self):x}")
        self.progress = Progress()
        self.clock = clock or (lambda: time.time())  # looked up per call, so tests can move the module's time
        self.beat_every_s = beat_every_s
        self.heads_dir = settings.data_dir / "heads"
        self.cache_dir = settings.data_dir / "embeddings"
        self.gate_evaluation = GateEvaluation(encoder, settings.gate_eval_n, self.cache_dir, settings.gate_families)
        # Keyed by the deployment secret, like gold placement: every replica holds out the same items.
        self.held_out = HeldOutSplit(server_secret(settings.data_dir), settings.held_out_share)
        self.schedule = Schedule(settings.retrain_every_pairs, settings.retrain_every_minutes, self.clock())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_backup = self.clock()

    # ----- the live head ------------------------------------------------------------------------------------

    @property
    def live(self) -> LiveModel:
        return self.live_head.current

    def sync_live(self) -> LiveModel:
        """Load the database's active version if it is not the one serving; returns the live model."""
        return self.live_head.sync()

    # ----- evaluation for the gate ----------------------------------------------------------------------------

    def gate_data(self) -> EvalEmbeddings:
        """The gate's held-out pictures (embedded on first use)."""
        return self.gate_evaluation.data()

    def base_metrics(self) -> dict:
        """The base model's gate metrics."""
        return self.gate_evaluation.base_metrics()

    def evaluate(self, policy: Policy | None) -> dict:
        """Gate metrics (clean / typographic accuracy, attack success, KL drift, per class) of a policy."""
        return self.gate_evaluation.evaluate(policy)

    # ----- runs ------------------------------------------------------------------------------------------------

    def request(self, config: dict[str, Any] | None = None, reason: str = "manual") -> RunInfo:
        """Queue a run, unless one is already queued (the database keeps at most one); returns the queued run.

        Dead runs (stale heartbeat, or a worker process on this host that is gone) are failed first, so a crash
        does not leave "run N is running" behind.
        """
        self.repo.reap_stale_runs()
        return self.repo.enqueue_run({"loss": "dpo", **(config or {}), "reason": reason})

    def run_pending(self) -> RunInfo | None:
        """Claim and execute the oldest queued run, if no other process is running one."""
        self.repo.reap_stale_runs()
        try:
            run = self.repo.claim_run(self.worker_id)
        except RunnerBusyError:
            return None
        if run is None:
            return None
        try:
            with Heartbeat(self.repo, run, self.beat_every_s, lambda: beat_metrics(self.progress)) as beat:
                done = self._execute(run, beat)
            self.schedule.succeeded()
            return done
        except RunLostError as exc:
            # Someone else owns the run now: write nothing more about it.
            log.warning("training run %s was lost: %s", run.id, exc)
            self.progress = Progress(run.id, "lost", message=str(exc))
            return self.repo.get_run(run.id)
        except Exception as exc:  # any other failure ends the run as failed, with the reason kept
            log.exception("training run %s failed", run.id)
            self.progress = Progress(run.id, "failed", message=str(exc))
            self.schedule.failed(self.clock())
            try:
                return self.repo.fail_run(run.id, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}")
            except Exception:
                log.exception("could not mark run %s failed", run.id)
                return self.repo.get_run(run.id)

    def _execute(self, run: RunInfo, beat: Heartbeat) -> RunInfo:
        """One run: data, training, evaluation, the gate, registration (each step in :mod:`poclip.app.retrain`)."""
        self.progress = Progress(run.id, "loading pairs")
        data = collect(self.repo, lambda watermark: beat.write(judgment_watermark=watermark),
                       augment_attacks=self.settings.augment_attacks, replay_pairs=self.settings.replay_pairs,
                       held_out=self.held_out)
        config = run_config(self.head, run.config, data)
        path = self.heads_dir / f"run{run.id}.safetensors"
        self._phase("embedding", beat)
        result = train_candidate(self.encoder, data, config, path, self.cache_dir, self.sync_live().policy,
                                 self._on_step(beat))
        beat.check()
        self._phase("evaluating", beat)
        live = self.sync_live()
        candidate, live_metrics, base = self.evaluate(result.policy), self.evaluate(live.policy), self.base_metrics()
        crowd = {name: crowd_agreement(policy, self.encoder, data.held_out, self.cache_dir)
                 for name, policy in (("candidate", result.policy), ("live", live.policy), ("base", None))}
        ok, reason = gate(candidate, live_metrics, base, crowd=crowd)
        beat.check()
        record = run_record(candidate, live_metrics, base, result, data, config, reason, crowd=crowd,
                            table=gate_table(candidate, live_metrics, base, crowd))
        version = register(self.repo, run, self.encoder.spec, path, record, promote=ok, reason=reason,
                           parent_id=live.version.id if live.version else None, watermark=data.watermark)
        if ok:
            self.sync_live()
        done = self.progress  # the steps it took, not the epochs
        self.progress = Progress(run.id, "promoted" if ok else "rejected", done.step, done.total, done.history, reason)
        # The run's row keeps the curve and the steps too, so the Train tab still shows them once the run is over.
        kept = {"history": beat_metrics(self.progress)["history"], "step": done.step, "total": done.total}
        return finish(self.repo, run, {**record, **kept}, version, data.watermark)

    def _phase(self, phase: str, beat: Heartbeat) -> None:
        # Readers elsewhere follow the phase through the run's row: beat now rather than at the next period.
        self.progress.phase, self.progress.updated = phase, time.time()
        beat.nudge()

    def _on_step(self, beat: Heartbeat) -> Callable[[int, int, dict[str, float]], None]:
        """The training progress callback: records the step, stops the run if the lease is lost or on stop."""

        def on_step(step: int, total: int, metrics: dict[str, float]) -> None:
            if self.progress.phase != "training":
                self._phase("training", beat)
            self.progress.step, self.progress.total = step, total
            self.progress.history.append({"step": step, **metrics})
            self.progress.updated = time.time()
            beat.check()
            if self._stop.is_set():
                raise RuntimeError("trainer stopped")

        return on_step

    # ----- the schedule ---------------------------------------------------------------------------------------

    def pair_counts(self) -> PairCounts:
        """The crowd pairs since the newest run that produced a version, and the threshold they must reach
        (:func:`poclip.app.pair_counts.count_pairs`; its ``labels`` keep the gold answers in, unread here)."""
        return count_pairs(self.repo, self.settings.retrain_every_pairs)

    def maybe_schedule(self) -> RunInfo | None:
        """Queue a run when the crowd pairs grew by the threshold since the newest run that produced a version
        (:mod:`poclip.app.retrain.schedule`), or when the timer is due and at least ``MIN_PAIRS`` new crowd pairs
        exist. Never while a run is queued or running, never during a failure backoff."""
        now = self.clock()
        if not self.schedule.enabled or self.schedule.waiting(now):
            return None
        if any(r.status in ("queued", "running") for r in self.repo.list_runs(limit=2)):
            return None
        counts = self.pair_counts()
        if self.schedule.due(now, counts.new_crowd_pairs, counts.threshold):
            return self.request(reason=f"scheduled: {counts.new_crowd_pairs} new crowd pairs since the last run")
        return None

    def maybe_backup(self) -> None:
        every = self.settings.backup_every_minutes
        if every and self.clock() - self._last_backup >= every * 60 and self.repo.db.dialect == "sqlite" \
                and self.settings.storage == "snapshots":
            from annotation_db import take_snapshot

            self._last_backup = self.clock()
            take_snapshot(self.settings, keep=self.settings.backup_keep)

    # ----- the loop -------------------------------------------------------------------------------------------

    def tick(self, train: bool = True) -> RunInfo | None:
        """One pass of the loop: follow promotions elsewhere, schedule, train, back up. Returns a finished run."""
        self.sync_live()
        run = None
        if train:
            self.repo.reap_stale_runs()  # a crashed worker's run must not hold up the schedule
            self.maybe_schedule()
            run = self.run_pending()
        self.maybe_backup()
        return run

    def loop(self, train: bool = True, interval_s: float = 2.0, once: bool = False,
             on_run: Callable[[RunInfo], None] | None = None) -> None:
        """The trainer loop, for the app's thread and for ``python -m poclip worker`` alike: :meth:`tick`
        every ``interval_s`` seconds until :meth:`stop` (or after one pass with ``once``)."""
        while not self._stop.is_set():
            try:
                run = self.tick(train)
                if run is not None and on_run is not None:
                    on_run(run)
            except Exception:  # the loop must outlive one bad tick (a DB hiccup, a bad file)
                log.exception("trainer tick failed")
            if once:
                return
            self._stop.wait(interval_s)

    def start(self, train: bool = True, interval_s: float = 2.0) -> None:
        """Run :meth:`loop` in a daemon thread until :meth:`stop`."""
        if self._thread and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self.loop, args=(train, interval_s), name="poclip-trainer",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)
