"""Training-run lifecycle and the single-runner lock.

The lock is the database itself: a partial unique index allows at most one row with status ``running``,
so two processes (app replicas, a standalone worker) can never both run, whatever the timing. Claiming
also fails cleanly, with :class:`RunnerBusyError`, while the running run's heartbeat is fresh; a run whose
heartbeat is older than ``stale_heartbeat_s`` is marked failed, which frees the lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from annotation_db.errors import InvalidTransitionError, NotFoundError, RunLostError, RunnerBusyError
from annotation_db.models import SPEC_MAX, ModelVersion, RunStatus, TrainingRun
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
        )


class RunsMixin(StoreBase):
    """Queue, claim, heartbeat, finish or fail training runs."""

    def enqueue_run(self, config: dict[str, Any]) -> RunInfo:
        """Queue a training run with its config (loss, beta, epochs, ...; a JSON dict)."""
        config = check_json_object(config, "run config")
        with self.db.writing() as s:
            row = TrainingRun(status=RunStatus.QUEUED, config=config, created_at=self.now())
            s.add(row)
            s.flush()
            return RunInfo.of(row)

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
                        return None
                claimed = s.execute(
                    update(TrainingRun)
                    .where(TrainingRun.id == run_id, TrainingRun.status == RunStatus.QUEUED)
                    .values(status=RunStatus.RUNNING, worker=worker, started_at=now, heartbeat_at=now)
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

    def heartbeat(self, run_id: int, metrics: dict[str, Any] | None = None) -> None:
        """Say the run is alive (call at least every ``stale_heartbeat_s`` / 3), optionally with progress.

        Raises:
            RunLostError: the run is no longer running (marked failed as stale, or finished); stop training.
        """
        run_id = check_id(run_id, "run id")
        values: dict[str, Any] = {"heartbeat_at": self.now()}
        if metrics is not None:
            values["metrics"] = check_json_object(metrics, "run metrics")
        with self.db.writing() as s:
            self._transition(s, run_id, values)

    def finish_run(
        self, run_id: int, *, metrics: dict[str, Any] | None = None, version_id: int | None = None
    ) -> RunInfo:
        """Mark a running run succeeded, with its final metrics and the model version it produced."""
        run_id = check_id(run_id, "run id")
        now = self.now()
        values: dict[str, Any] = {"status": RunStatus.SUCCEEDED, "finished_at": now, "heartbeat_at": now}
        if metrics is not None:
            values["metrics"] = check_json_object(metrics, "run metrics")
        with self.db.writing() as s:
            if version_id is not None:
                version_id = check_id(version_id, "model version id")
                if s.get(ModelVersion, version_id) is None:
                    raise NotFoundError(f"unknown model version {version_id}")
                values["version_id"] = version_id
            self._transition(s, run_id, values)
            return RunInfo.of(s.get_one(TrainingRun, run_id, populate_existing=True))

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

    def _transition(self, s: Session, run_id: int, values: dict[str, Any]) -> None:
        done = s.execute(
            update(TrainingRun)
            .where(TrainingRun.id == run_id, TrainingRun.status == RunStatus.RUNNING)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if done.rowcount != 1:
            row = s.get(TrainingRun, run_id)
            if row is None:
                raise NotFoundError(f"unknown training run {run_id}")
            raise RunLostError(
                f"training run {run_id} is {row.status.value}, no longer running"
                + (f": {row.error}" if row.error else "")
            )

    def _reap(self, s: Session, now: datetime) -> list[int]:
        cutoff = now - timedelta(seconds=self.config.stale_heartbeat_s)
        stale = list(
            s.scalars(
                select(TrainingRun.id).where(
                    TrainingRun.status == RunStatus.RUNNING, TrainingRun.heartbeat_at < cutoff
                )
            )
        )
        if stale:
            s.execute(
                update(TrainingRun)
                .where(TrainingRun.id.in_(stale), TrainingRun.status == RunStatus.RUNNING)
                .values(
                    status=RunStatus.FAILED,
                    finished_at=now,
                    error=f"no heartbeat for over {self.config.stale_heartbeat_s:g} s; marked failed",
                )
                .execution_options(synchronize_session=False)
            )
        return stale

    def _busy(self, running: TrainingRun, now: datetime) -> RunnerBusyError:
        age = (now - running.heartbeat_at).total_seconds() if running.heartbeat_at else float("nan")
        return RunnerBusyError(
            f"training run {running.id} is running on {running.worker or 'an unknown worker'} "
            f"(last heartbeat {age:.0f} s ago)"
        )
