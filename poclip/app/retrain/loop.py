"""The trainer's loop, whatever executes a run: follow the live head, queue runs on schedule, execute the queued
run, take backups.

:class:`TrainerLoop` is the loop without the training. :class:`poclip.app.worker.Trainer` executes runs in its
own process (``python -m poclip worker``, and the app's child processes);
:class:`poclip.app.child_trainer.ChildTrainer`, the app's trainer thread, executes each run in a child process,
so the serving process only loads the head file a run promotes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from annotation_db import Repository, RunInfo
from poclip.app.live import LiveHead, LiveModel
from poclip.app.pair_counts import PairCounts, count_pairs
from poclip.app.retrain.schedule import Schedule
from poclip.settings import Settings

log = logging.getLogger(__name__)

STOPPED = "trainer stopped"  # why a run ends when its trainer is asked to stop without a reason


class TrainerLoop:
    """Schedules, executes (:meth:`run_pending`, the subclass's) and backs up, one pass per :meth:`tick`.

    Args:
        settings: the schedule (``POCLIP_RETRAIN_EVERY_*``) and backups (``POCLIP_BACKUP_*``).
        repo: the store: the run queue and the active version.
        live_head: the head this process serves or trains from; every pass syncs it with the active version.
        clock: the time in seconds (the schedule's and the backups'); default ``time.time``.
    """

    def __init__(self, settings: Settings, repo: Repository, live_head: LiveHead,
                 clock: Callable[[], float] | None = None) -> None:
        self.settings = settings
        self.repo = repo
        self.live_head = live_head
        self.clock = clock or time.time
        self.schedule = Schedule(settings.retrain_every_pairs, settings.retrain_every_minutes, self.clock())
        self.stop_reason = STOPPED
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

    # ----- runs ------------------------------------------------------------------------------------------------

    def request(self, config: dict[str, Any] | None = None, reason: str = "manual") -> RunInfo:
        """Queue a run, unless one is already queued (the database keeps at most one); returns the queued run.

        Dead runs (stale heartbeat, or a worker process on this host that is gone) are failed first, so a crash
        does not leave "run N is running" behind.
        """
        self.repo.reap_stale_runs()
        return self.repo.enqueue_run({"loss": "dpo", **(config or {}), "reason": reason})

    def run_pending(self) -> RunInfo | None:
        """Execute the oldest queued run, if no other process is running one; returns it once it is over."""
        raise NotImplementedError

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
        """:meth:`tick` every ``interval_s`` seconds until :meth:`stop` (or after one pass with ``once``)."""
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

    def request_stop(self, reason: str = STOPPED) -> None:
        """Ask the loop to end, and a running run to stop at its next step with ``reason``; returns at once."""
        self.stop_reason = reason
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        """Stop the loop (a running run stops at its next step) and wait for its thread."""
        self.request_stop(self.stop_reason)
        if self._thread:
            self._thread.join(timeout=30)
