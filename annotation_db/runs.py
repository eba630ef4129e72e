"""Training-run lifecycle, the single-runner lock and the lease.

The lock is the database itself: a partial unique index allows at most one row with status ``running``,
so two processes (app replicas, a standalone worker) can never both run, whatever the timing; a second one
allows at most one ``queued`` row, so any number of clicks and schedulers queue a single run. Claiming
fails cleanly, with :class:`RunnerBusyError`, while the running run is alive. A run is dead when its
heartbeat is older than ``stale_heartbeat_s``, or at once when its worker ran on this host and that process
no longer exists; either way it is marked failed, which frees the lock, and queued again once (the next attempt,
unless a run is queued already: that one trains on the same data and more). A run that fails by itself (its
trainer caught an error) is not retried, nor is a retry whose worker died too.

Claiming draws a lease (a fencing token). Heartbeats, finishing, registering a version and promoting it
are conditional on the run still running under that lease, checked in the same transaction as the write:
a worker that was frozen past its heartbeat timeout and then resumes is refused (:class:`RunLostError`)
instead of overwriting what the next worker did.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from annotation_db.errors import InvalidTransitionError, NotFoundError, RunLostError, RunnerBusyError
from annotation_db.models import SPEC_MAX, ModelVersion, RunStatus, TrainingRun, VersionStatus
from annotation_db.store import StoreBase
from annotation_db.validation import check_id, check_json_object, check_text, free_text


@dataclass(frozen=True)
class RunInfo:
    id: int
    status: str
    worker: str | None
    config: dict[str, Any]
    metrics: dict[str, Any] | None
    error: str | None
    version_id: int | None
    created_at: datetime
    started_at: datetime | None
    heartbeat_at: datetime | None
    finished_at: datetime | None
    lease: str | None = None  # the fencing token; only the claimer uses it
    judgment_watermark: int | None = None  # newest judgment the run trained on
    attempt: int = 1  # 2 for the retry of a run whose worker died

    @classmethod
    def of(cls, row: TrainingRun) -> RunInfo:
        return cls(
            row.id,
            row.status.value,
            row.worker,
            row.config,
            row.metrics,
            row.error,
            row.version_id,
            row.created_at,
            row.started_at,
            row.heartbeat_at,
            row.finished_at,
            row.lease,
            row.judgment_watermark,
            row.attempt,
        )


@dataclass(frozen=True)
class TrainedRun:
    """A run that finished with a version, and whether that version was rejected (by the gate, or an admin)."""

    run: RunInfo
    rejected: bool


ATTEMPTS = 2  # a run whose worker died is queued again once


def worker_name(tag: str = "") -> str:
    """``host:pid[:tag]``: who runs a claimed run; the host and pid let the reaper check liveness."""
    return f"{socket.gethostname()}:{os.getpid()}" + (f":{tag}" if tag else "")


def _process_gone(worker: str | None) -> bool:
    """True when ``worker`` names a process on this host that no longer exists (it crashed or was killed)."""
    if not worker:
        return False
    host, _, rest = worker.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False  # another machine: only the heartbeat timeout can tell
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # exists, owned by someone else
    return False


def check_lease(s: Session, run_id: int, lease: str) -> None:
    """Inside a write transaction: the run is running under ``lease``, and stays so until commit.

    The row is locked (``FOR UPDATE`` on PostgreSQL; SQLite's write lock is already held), so the reaper
    cannot fail the run between this check and the caller's write.
    """
    row = s.scalar(select(TrainingRun).where(TrainingRun.id == run_id).with_for_update())
    if row is None:
        raise NotFoundError(f"unknown training run {run_id}")
    if row.status is not RunStatus.RUNNING or row.lease != lease:
        raise RunLostError(
            f"training run {run_id} is {row.status.value}"
            + (" under another lease" if row.status is RunStatus.RUNNING else "")
            + "; this worker lost it and may not register or promote"
            + (f" ({row.error})" if row.error else "")
        )


class RunsMixin(StoreBase):
    """Queue, claim, heartbeat, finish or fail training runs."""

    def enqueue_run(self, config: dict[str, Any]) -> RunInfo:
        """Queue a training run with its config (loss, beta, epochs, ...; a JSON dict).

        At most one run is queued at a time (a partial unique index): when one is already queued, that run is
        returned unchanged, so concurrent requests from any number of processes queue a single run.
        """
        config = check_json_object(config, "run config")
        for _ in range(3):
            try:
                with self.db.writing() as s:
                    queued = s.scalar(select(TrainingRun).where(TrainingRun.status == RunStatus.QUEUED))
                    if queued is not None:
                        return RunInfo.of(queued)
                    row = TrainingRun(status=RunStatus.QUEUED, config=config, created_at=self.now())
                    s.add(row)
                    s.flush()
                    return RunInfo.of(row)
            except IntegrityError:
                continue  # another process queued one between our check and insert: read theirs
        raise RunnerBusyError("could not queue a run: the queue changed repeatedly; retry")

    def claim_run(self, worker: str, run_id: int | None = None) -> RunInfo | None:
        """Take the single-runner lock and start a queued run (``run_id``, or the oldest queued).

        Stale running runs are marked failed first. Safe across processes: of two workers claiming at the same
        time, exactly one gets the run.

        Args:
            worker: who runs it (host, pid), shown in the admin view.
            run_id: a specific queued run; None for the oldest.
        Returns:
            The run, now ``running``; None when nothing is queued.
        Raises:
            RunnerBusyError: another run is running with a fresh heartbeat.
            InvalidTransitionError: ``run_id`` is not queued.
        """
        worker = check_text(worker, "worker", SPEC_MAX)
        if run_id is not None:
            run_id = check_id(run_id, "run id")
        now = self.now()
        try:
            with self.db.writing() as s:
                self._reap(s, now)
                running = s.scalar(select(TrainingRun).where(TrainingRun.status == RunStatus.RUNNING))
                if running is not None:
                    raise self._busy(running, now)
                if run_id is None:
                    run_id = s.scalar(
                        select(TrainingRun.id)
                        .where(TrainingRun.status == RunStatus.QUEUED)
                        .order_by(TrainingRun.created_at, TrainingRun.id)
                        .limit(1)
                    )
                    if run_id is None:
                        # Another claimer may have taken the only queued run since the check above.
                        running = s.scalar(select(TrainingRun).where(TrainingRun.status == RunStatus.RUNNING))
                        if running is not None:
                            raise self._busy(running, now)
                        return None
                claimed = s.execute(
                    update(TrainingRun)
                    .where(TrainingRun.id == run_id, TrainingRun.status == RunStatus.QUEUED)
                    .values(
                        status=RunStatus.RUNNING,
                        worker=worker,
                        started_at=now,
                        heartbeat_at=now,
                        lease=secrets.token_hex(16),
                    )
                    .execution_options(synchronize_session=False)
                )
                if claimed.rowcount != 1:
                    # On PostgreSQL a concurrent claimer may have taken this very run while we waited for
                    # its row lock: that is the lock being busy, not a bad request.
                    running = s.scalar(select(TrainingRun).where(TrainingRun.status == RunStatus.RUNNING))
                    if running is not None:
                        raise self._busy(running, now)
                    row = s.get(TrainingRun, run_id)
                    if row is None:
                        raise NotFoundError(f"unknown training run {run_id}")
                    raise InvalidTransitionError(f"training run {run_id} is {row.status.value}, not queued")
                s.flush()
                return RunInfo.of(s.get_one(TrainingRun, run_id, populate_existing=True))
        except IntegrityError as exc:
            # The partial unique index caught a concurrent claim that committed first.
            raise RunnerBusyError("another training run started at the same moment") from exc

    def heartbeat(
        self,
        run_id: int,
        metrics: dict[str, Any] | None = None,
        *,
        lease: str | None = None,
        judgment_watermark: int | None = None,
    ) -> None:
        """Say the run is alive (call at least every ``stale_heartbeat_s`` / 3), optionally with progress.

        Args:
            lease: the run's lease from :meth:`claim_run`; when given, a run claimed again since is refused.
            judgment_watermark: the newest judgment the run is training on, recorded as soon as it is known,
                so a run that fails later still counts as having seen those judgments.
        Raises:
            RunLostError: the run is no longer running (marked failed as stale, or finished) or no longer
                ours; stop training.
        """
        run_id = check_id(run_id, "run id")
        values: dict[str, Any] = {"heartbeat_at": self.now()}
        if metrics is not None:
            values["metrics"] = check_json_object(metrics, "run metrics")
        if judgment_watermark is not None:
            values["judgment_watermark"] = check_id(judgment_watermark, "judgment watermark")
        with self.db.writing() as s:
            self._transition(s, run_id, values, lease)

    def finish_run(
        self,
        run_id: int,
        *,
        metrics: dict[str, Any] | None = None,
        version_id: int | None = None,
        lease: str | None = None,
        judgment_watermark: int | None = None,
    ) -> RunInfo:
        """Mark a running run succeeded, with its final metrics, the version it produced and its watermark."""
        run_id = check_id(run_id, "run id")
        now = self.now()
        values: dict[str, Any] = {"status": RunStatus.SUCCEEDED, "finished_at": now, "heartbeat_at": now}
        if metrics is not None:
            values["metrics"] = check_json_object(metrics, "run metrics")
        if judgment_watermark is not None:
            values["judgment_watermark"] = check_id(judgment_watermark, "judgment watermark")
        with self.db.writing() as s:
            if version_id is not None:
                version_id = check_id(version_id, "model version id")
                if s.get(ModelVersion, version_id) is None:
                    raise NotFoundError(f"unknown model version {version_id}")
                values["version_id"] = version_id
            self._transition(s, run_id, values, lease)
            return RunInfo.of(s.get_one(TrainingRun, run_id, populate_existing=True))

    def trained_runs(self, limit: int = 4) -> list[TrainedRun]:
        """The newest ``limit`` runs that finished with a version, newest first, each with whether that version
        was rejected (a scheduler reads the crowd pairs each used and the rejections in a row).

        One indexed read of ``limit`` rows, whatever the number of runs.
        """
        with self.db.reading() as s:
            rows = s.execute(
                select(TrainingRun, ModelVersion.status)
                .join(ModelVersion, ModelVersion.id == TrainingRun.version_id)
                .where(TrainingRun.status == RunStatus.SUCCEEDED)
                .order_by(TrainingRun.id.desc())
                .limit(max(0, int(limit)))
            )
            return [TrainedRun(RunInfo.of(row), status is VersionStatus.REJECTED) for row, status in rows]

    def fail_run(self, run_id: int, error: str) -> RunInfo:
        """Mark a queued or running run failed, keeping the error text (stored verbatim, any length)."""
        run_id = check_id(run_id, "run id")
        error = free_text(error, "error")
        now = self.now()
        with self.db.writing() as s:
            done = s.execute(
                update(TrainingRun)
                .where(
                    TrainingRun.id == run_id, TrainingRun.status.in_([RunStatus.QUEUED, RunStatus.RUNNING])
                )
                .values(status=RunStatus.FAILED, error=error, finished_at=now)
                .execution_options(synchronize_session=False)
            )
            row = s.get(TrainingRun, run_id, populate_existing=True)
            if row is None:
                raise NotFoundError(f"unknown training run {run_id}")
            if done.rowcount != 1:
                raise InvalidTransitionError(f"training run {run_id} is already {row.status.value}")
            return RunInfo.of(row)

    def reap_stale_runs(self) -> list[int]:
        """Mark running runs whose heartbeat is older than ``stale_heartbeat_s`` failed; returns their ids."""
        with self.db.writing() as s:
            return self._reap(s, self.now())

    def get_run(self, run_id: int) -> RunInfo:
        """One training run; :class:`NotFoundError` if unknown."""
        run_id = check_id(run_id, "run id")
        with self.db.reading() as s:
            row = s.get(TrainingRun, run_id)
            if row is None:
                raise NotFoundError(f"unknown training run {run_id}")
            return RunInfo.of(row)

    def list_runs(self, limit: int = 50) -> list[RunInfo]:
        """The latest training runs, newest first."""
        with self.db.reading() as s:
            rows = s.scalars(select(TrainingRun).order_by(TrainingRun.id.desc()).limit(limit))
            return [RunInfo.of(row) for row in rows]

    def _transition(self, s: Session, run_id: int, values: dict[str, Any], lease: str | None = None) -> None:
        condition = [TrainingRun.id == run_id, TrainingRun.status == RunStatus.RUNNING]
        if lease is not None:
            condition.append(TrainingRun.lease == lease)
        done = s.execute(
            update(TrainingRun)
            .where(*condition)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if done.rowcount != 1:
            row = s.get(TrainingRun, run_id)
            if row is None:
                raise NotFoundError(f"unknown training run {run_id}")
            if row.status is RunStatus.RUNNING:
                raise RunLostError(f"training run {run_id} was claimed again under another lease")
            raise RunLostError(
                f"training run {run_id} is {row.status.value}, no longer running"
                + (f": {row.error}" if row.error else "")
            )

    def _reap(self, s: Session, now: datetime) -> list[int]:
        """Fail running runs that are dead: stale heartbeat, or a worker process on this host that is gone."""
        cutoff = now - timedelta(seconds=self.config.stale_heartbeat_s)
        dead: dict[int, str] = {}
        for run_id, worker, beat in s.execute(
            select(TrainingRun.id, TrainingRun.worker, TrainingRun.heartbeat_at).where(
                TrainingRun.status == RunStatus.RUNNING
            )
        ):
            if beat is not None and beat < cutoff:
                dead[run_id] = f"no heartbeat for over {self.config.stale_heartbeat_s:g} s; marked failed"
            elif _process_gone(worker):
                dead[run_id] = f"its worker process ({worker}) is gone; marked failed"
        for run_id, error in dead.items():
            reaped = s.execute(
                update(TrainingRun)
                .where(TrainingRun.id == run_id, TrainingRun.status == RunStatus.RUNNING)
                .values(status=RunStatus.FAILED, finished_at=now, error=error)
                .execution_options(synchronize_session=False)
            )
            if reaped.rowcount == 1:  # not failed by another reaper in the meantime (PostgreSQL)
                self._retry(s, run_id, error, now)
        return list(dead)

    def _retry(self, s: Session, run_id: int, error: str, now: datetime) -> None:
        """Queue dead run ``run_id`` again as its next attempt: not after its last attempt, nor when a run is
        queued already (that one trains on the same data and more). The dead run's error says which run retries."""
        dead = s.get_one(TrainingRun, run_id, populate_existing=True)
        if dead.attempt >= ATTEMPTS or s.scalar(select(TrainingRun.id).where(TrainingRun.status == RunStatus.QUEUED)):
            return
        retry = TrainingRun(status=RunStatus.QUEUED, config={**dead.config, "reason": f"retry of run {run_id}"},
                            created_at=now, attempt=dead.attempt + 1)
        try:
            with s.begin_nested():  # a concurrent enqueue_run may take the one queued place first: then it is the retry
                s.add(retry)
        except IntegrityError:
            return
        dead.error = f"{error}; queued again as run {retry.id} (attempt {retry.attempt} of {ATTEMPTS})"

    def _busy(self, running: TrainingRun, now: datetime) -> RunnerBusyError:
        age = (now - running.heartbeat_at).total_seconds() if running.heartbeat_at else float("nan")
        return RunnerBusyError(
            f"training run {running.id} is running on {running.worker or 'an unknown worker'} "
            f"(last heartbeat {age:.0f} s ago)"
        )
