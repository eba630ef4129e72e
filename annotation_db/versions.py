"""Model versions: register candidates, promote, reject, roll back. Exactly one version is active once any is.

A partial unique index allows at most one ``active`` row; promote and rollback archive the old active
version and activate the new one in the same transaction, so readers never see zero or two.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from annotation_db.errors import InvalidTransitionError, NotFoundError
from annotation_db.models import PATH_MAX, SPEC_MAX, ModelVersion, VersionStatus
from annotation_db.runs import check_lease
from annotation_db.store import StoreBase
from annotation_db.validation import check_id, check_json_object, check_text, free_text


@dataclass(frozen=True)
class VersionInfo:
    id: int
    backbone: str
    head_path: str
    metrics: dict[str, Any]
    status: str
    parent_id: int | None
    judgment_watermark: int | None
    reason: str | None
    created_at: datetime
    promoted_at: datetime | None
    previous_id: int | None = None  # the version live before this one was promoted

    @classmethod
    def of(cls, row: ModelVersion) -> VersionInfo:
        return cls(
            row.id,
            row.backbone,
            row.head_path,
            row.metrics,
            row.status.value,
            row.parent_id,
            row.judgment_watermark,
            row.reason,
            row.created_at,
            row.promoted_at,
            row.previous_id,
        )


_CONCURRENT = "another promotion or rollback happened at the same moment; reload and retry"


class VersionsMixin(StoreBase):
    """The model registry."""

    def register_version(
        self,
        backbone: str,
        head_path: str,
        metrics: dict[str, Any],
        *,
        parent_id: int | None = None,
        judgment_watermark: int | None = None,
        run_id: int | None = None,
        lease: str | None = None,
    ) -> VersionInfo:
        """Record a trained head as a ``candidate``.

        Args:
            backbone: the model spec it was trained on (``bundled``, ``ViT-B-32:openai``, ...).
            head_path: the head's file (relative to the data dir, or absolute).
            metrics: evaluation numbers (JSON dict), shown in the admin view and used by the promotion gate.
            parent_id: the version it was trained from; None: the version active now (if any).
            judgment_watermark: :attr:`PairBatch.watermark` of the pairs it was trained on.
            run_id, lease: the training run that produced it and the lease from :meth:`claim_run`; when
                given, the version is recorded only while that run still runs under that lease
                (:class:`RunLostError` otherwise), in the same transaction.
        """
        backbone = check_text(backbone, "backbone spec", SPEC_MAX)
        head_path = check_text(head_path, "head path", PATH_MAX)
        metrics = check_json_object(metrics, "metrics")
        if parent_id is not None:
            parent_id = check_id(parent_id, "parent version id")
        if judgment_watermark is not None:
            judgment_watermark = check_id(judgment_watermark, "judgment watermark")
        with self.db.writing() as s:
            if run_id is not None:
                check_lease(s, check_id(run_id, "run id"), check_text(lease or "", "lease", 64))
            if parent_id is None:
                parent_id = s.scalar(
                    select(ModelVersion.id).where(ModelVersion.status == VersionStatus.ACTIVE)
                )
            elif s.get(ModelVersion, parent_id) is None:
                raise NotFoundError(f"unknown parent model version {parent_id}")
            row = ModelVersion(
                backbone=backbone,
                head_path=head_path,
                metrics=metrics,
                status=VersionStatus.CANDIDATE,
                parent_id=parent_id,
                judgment_watermark=judgment_watermark,
                created_at=self.now(),
            )
            s.add(row)
            s.flush()
            return VersionInfo.of(row)

    def reject_version(
        self, version_id: int, reason: str, *, run_id: int | None = None, lease: str | None = None
    ) -> VersionInfo:
        """Mark a candidate rejected (e.g. it failed the promotion gate), with the reason to show."""
        version_id = check_id(version_id, "model version id")
        reason = free_text(reason, "reason")
        with self.db.writing() as s:
            if run_id is not None:
                check_lease(s, check_id(run_id, "run id"), check_text(lease or "", "lease", 64))
            row = self._version(s, version_id)
            if row.status is not VersionStatus.CANDIDATE:
                raise InvalidTransitionError(
                    f"version {version_id} is {row.status.value}; only candidates can be "
                    "rejected (roll back an active version instead)"
                )
            row.status, row.reason = VersionStatus.REJECTED, reason
            return VersionInfo.of(row)

    def promote_version(
        self, version_id: int, *, run_id: int | None = None, lease: str | None = None
    ) -> VersionInfo:
        """Make ``version_id`` the active version; the previously active one becomes ``archived``.

        Candidates and archived versions can be promoted; rejected ones cannot.

        Args:
            run_id, lease: a trainer promoting its own candidate passes its run and lease: the promotion then
                happens only while that run still runs under that lease (:class:`RunLostError` otherwise), and
                only if the version the candidate was gated against (its parent) is still the active one
                (:class:`InvalidTransitionError` otherwise), both checked in the promoting transaction.
        """
        version_id = check_id(version_id, "model version id")
        try:
            with self.db.writing() as s:
                if run_id is not None:
                    check_lease(s, check_id(run_id, "run id"), check_text(lease or "", "lease", 64))
                row = self._version(s, version_id)
                if run_id is not None:
                    active = s.scalar(select(ModelVersion.id).where(ModelVersion.status == VersionStatus.ACTIVE))
                    if active != row.parent_id:
                        raise InvalidTransitionError(
                            f"version {version_id} was gated against version {row.parent_id}, but version "
                            f"{active} is active now; it must be evaluated again"
                        )
                if row.status is VersionStatus.ACTIVE:
                    return VersionInfo.of(row)
                if row.status is VersionStatus.REJECTED:
                    raise InvalidTransitionError(
                        f"version {version_id} was rejected ({row.reason}); it cannot be promoted"
                    )
                self._activate(s, row, reason=None)
                return VersionInfo.of(row)
        except IntegrityError as exc:
            raise InvalidTransitionError(_CONCURRENT) from exc

    def rollback_version(self, to_version_id: int | None = None, reason: str = "rolled back") -> VersionInfo:
        """Re-activate an earlier version: ``to_version_id``, or the version that was live before the active one.

        "Live before" is recorded at each promotion (not the training parent: a manually promoted version
        may have been trained from another one). A rollback does not overwrite the target's own record, so
        repeated rollbacks walk back through the history. The version that was active becomes ``archived``
        with ``reason`` recorded; it can be promoted again.

        Returns:
            The version that is now active.
        """
        if to_version_id is not None:
            to_version_id = check_id(to_version_id, "model version id")
        reason = free_text(reason, "reason")
        try:
            with self.db.writing() as s:
                current = s.scalar(select(ModelVersion).where(ModelVersion.status == VersionStatus.ACTIVE))
                if current is None:
                    raise InvalidTransitionError("no version is active; nothing to roll back")
                target_id = to_version_id if to_version_id is not None else current.previous_id
                if target_id is None:
                    raise InvalidTransitionError(
                        f"version {current.id} was the first live version; there is nothing earlier to roll back to"
                    )
                if target_id == current.id:
                    raise InvalidTransitionError(f"version {target_id} is already active")
                target = self._version(s, target_id)
                if target.status is VersionStatus.REJECTED:
                    raise InvalidTransitionError(f"version {target_id} was rejected; pick another version")
                self._activate(s, target, reason=f"{reason} (to version {target_id})", rollback=True)
                return VersionInfo.of(target)
        except IntegrityError as exc:
            raise InvalidTransitionError(_CONCURRENT) from exc

    def active_version(self) -> VersionInfo | None:
        """The version serving now, or None before the first promotion."""
        with self.db.reading() as s:
            row = s.scalar(select(ModelVersion).where(ModelVersion.status == VersionStatus.ACTIVE))
            return None if row is None else VersionInfo.of(row)

    def get_version(self, version_id: int) -> VersionInfo:
        """One model version; :class:`NotFoundError` if unknown."""
        version_id = check_id(version_id, "model version id")
        with self.db.reading() as s:
            return VersionInfo.of(self._version(s, version_id))

    def list_versions(self, limit: int = 100) -> list[VersionInfo]:
        """The latest model versions, newest first."""
        with self.db.reading() as s:
            rows = s.scalars(select(ModelVersion).order_by(ModelVersion.id.desc()).limit(limit))
            return [VersionInfo.of(row) for row in rows]

    @staticmethod
    def _version(s: Session, version_id: int) -> ModelVersion:
        row = s.get(ModelVersion, version_id)
        if row is None:
            raise NotFoundError(f"unknown model version {version_id}")
        return row

    def _activate(self, s: Session, row: ModelVersion, reason: str | None, rollback: bool = False) -> None:
        if not rollback:
            row.previous_id = s.scalar(
                select(ModelVersion.id).where(ModelVersion.status == VersionStatus.ACTIVE, ModelVersion.id != row.id)
            )
        values: dict[str, Any] = {"status": VersionStatus.ARCHIVED}
        if reason is not None:
            values["reason"] = reason
        # Archive first and flush: the partial unique index would refuse two active rows in between.
        s.execute(
            update(ModelVersion)
            .where(ModelVersion.status == VersionStatus.ACTIVE, ModelVersion.id != row.id)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        row.status, row.promoted_at = VersionStatus.ACTIVE, self.now()
        s.flush()
