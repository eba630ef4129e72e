"""Model versions: register candidates, promote, reject, roll back. Exactly one version is active once any is.

A partial unique index allows at most one ``active`` row; promote and rollback archive the old active
version and activate the new one in the same transaction, so readers never see zero or two.

Besides trained heads, two *named* versions can be made live by a rollback: the shipped starter head and the base
model (:class:`~annotation_db.models.VersionKind`). Each is a row of its own (one per kind and backbone, reused, no
head file), so "what serves" is always the one active row, whichever it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from annotation_db.errors import InvalidTransitionError, NotFoundError, ValidationError
from annotation_db.models import HF_USERNAME_MAX, PATH_MAX, SPEC_MAX, ModelVersion, VersionKind, VersionStatus
from annotation_db.runs import check_lease
from annotation_db.store import StoreBase
from annotation_db.validation import check_id, check_json_object, check_optional_text, check_text, free_text

# What the named versions are called wherever a version is named (the versions table, the live model's label).
NAMED_VERSIONS = {VersionKind.STARTER.value: "starter head", VersionKind.BASE.value: "base model"}


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
    kind: str = VersionKind.TRAINED.value  # "trained", or a named version: "starter" or "base"
    promoted_by: str | None = None  # the admin who last made it live by hand (None: the gate)
    promotion_reason: str | None = None  # ... and the reason they gave

    @property
    def name(self) -> str:
        """``version 4``, or the named version's name (``starter head``, ``base model``)."""
        return NAMED_VERSIONS.get(self.kind, f"version {self.id}")

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
            row.kind.value,
            row.promoted_by,
            row.promotion_reason,
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
        self,
        version_id: int,
        *,
        run_id: int | None = None,
        lease: str | None = None,
        by: str | None = None,
        reason: str | None = None,
    ) -> VersionInfo:
        """Make ``version_id`` the active version; the previously active one becomes ``archived``.

        Candidates, archived versions and (by an admin, with a reason) rejected ones can be promoted.

        Args:
            run_id, lease: a trainer promoting its own candidate passes its run and lease: the promotion then
                happens only while that run still runs under that lease (:class:`RunLostError` otherwise), and
                only if the version the candidate was gated against (its parent) is still the active one
                (:class:`InvalidTransitionError` otherwise), both checked in the promoting transaction.
            by, reason: an admin promoting by hand: their name ("admin" when the app knows none) and why,
                recorded on the version with the time (``promoted_at``). Promoting a version the gate rejected
                needs both, with a reason that is not blank (:class:`InvalidTransitionError` otherwise, and
                nothing changes).
        """
        version_id = check_id(version_id, "model version id")
        by, reason = self._admin_note(by, reason)
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
                if row.status is VersionStatus.REJECTED and (by is None or reason is None or run_id is not None):
                    raise InvalidTransitionError(
                        f"version {version_id} was rejected by the promotion gate; to promote it anyway, give "
                        "the reason (it is recorded with your name and shown in the versions table)"
                    )
                self._activate(s, row, archive_reason=None, by=by, note=reason)
                return VersionInfo.of(row)
        except IntegrityError as exc:
            raise InvalidTransitionError(_CONCURRENT) from exc

    def discard_head(self, path: Path) -> bool:
        """Delete the head file a training run wrote before it lost its run (its lease), unless a version names it
        (a candidate it registered in time keeps its file). Returns whether a file was deleted.

        The check and the delete happen under SQLite's write lock, so no version naming the file can be registered
        in between (only the run's own worker would: it is the one discarding).
        """
        path = Path(path)
        names = {str(path)}
        if path.is_relative_to(self.data_dir):
            names.add(path.relative_to(self.data_dir).as_posix())
        with self.db.writing() as s:
            if s.scalar(select(ModelVersion.id).where(ModelVersion.head_path.in_(names)).limit(1)) is not None:
                return False
            deleted = path.is_file()
            path.unlink(missing_ok=True)
            return deleted

    def rollback_version(
        self, to_version_id: int | None = None, reason: str = "rolled back", *, by: str | None = None
    ) -> VersionInfo:
        """Re-activate an earlier version: ``to_version_id``, or the version that was live before the active one.

        "Live before" is recorded at each promotion (not the training parent: a manually promoted version
        may have been trained from another one). A rollback does not overwrite the target's own record, so
        repeated rollbacks walk back through the history. The version that was active becomes ``archived``
        with ``reason`` recorded; it can be promoted again. ``by``: the admin who rolled back (recorded on the
        target with ``reason``, as for :meth:`promote_version`).

        Returns:
            The version that is now active.
        """
        if to_version_id is not None:
            to_version_id = check_id(to_version_id, "model version id")
        reason = free_text(reason, "reason")
        by, note = self._admin_note(by, reason)
        try:
            with self.db.writing() as s:
                current = s.scalar(select(ModelVersion).where(ModelVersion.status == VersionStatus.ACTIVE))
                if current is None:
                    raise InvalidTransitionError("no version is active; nothing to roll back")
                target_id = to_version_id if to_version_id is not None else current.previous_id
                if target_id is None:
                    raise InvalidTransitionError(
                        f"{VersionInfo.of(current).name} was the first live version; there is nothing earlier to "
                        "roll back to"
                    )
                if target_id == current.id:
                    raise InvalidTransitionError(f"version {target_id} is already active")
                target = self._version(s, target_id)
                if target.status is VersionStatus.REJECTED:
                    raise InvalidTransitionError(f"version {target_id} was rejected; pick another version")
                self._activate(s, target, archive_reason=f"{reason} (to version {target_id})", rollback=True,
                               by=by, note=note)
                return VersionInfo.of(target)
        except IntegrityError as exc:
            raise InvalidTransitionError(_CONCURRENT) from exc

    def rollback_to_named(
        self, kind: str, backbone: str, reason: str = "rolled back", *, by: str | None = None
    ) -> VersionInfo:
        """Make a named version live: the starter head (``kind="starter"``) or the base model (``"base"``).

        The named version is a row like any other (created on first use, one per kind and backbone, no head
        file), so it is persistent and every process that follows the active version serves it; the gate's next
        promotion replaces it as usual. It works when nothing is active yet too (the app then served its
        default). The version that was active becomes ``archived`` with ``reason``; ``by`` and ``reason`` are
        recorded on the named row, as for :meth:`rollback_version`. A named version has no earlier version to
        roll back to (its ``previous_id`` stays empty): name a version to leave it.

        Returns:
            The named version, now active.
        """
        if kind not in NAMED_VERSIONS:
            raise ValidationError(f"a named version is one of {', '.join(NAMED_VERSIONS)}, got {kind!r}")
        backbone = check_text(backbone, "backbone spec", SPEC_MAX)
        reason = free_text(reason, "reason")
        by, note = self._admin_note(by, reason)
        name = NAMED_VERSIONS[kind]
        try:
            with self.db.writing() as s:
                row = s.scalar(
                    select(ModelVersion)
                    .where(ModelVersion.kind == VersionKind(kind), ModelVersion.backbone == backbone)
                    .order_by(ModelVersion.id)
                    .limit(1)
                )
                if row is not None and row.status is VersionStatus.ACTIVE:
                    raise InvalidTransitionError(f"the {name} is already live (version {row.id})")
                if row is None:
                    row = ModelVersion(backbone=backbone, head_path="", metrics={}, status=VersionStatus.CANDIDATE,
                                       kind=VersionKind(kind), created_at=self.now())
                    s.add(row)
                    s.flush()
                self._activate(s, row, archive_reason=f"{reason} (to the {name})", rollback=True, by=by, note=note)
                return VersionInfo.of(row)
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

    @staticmethod
    def _admin_note(by: str | None, reason: str | None) -> tuple[str | None, str | None]:
        """The admin's name and reason as recorded: the reason trimmed, None when blank or when no admin acts."""
        by = check_optional_text(by, "admin name", HF_USERNAME_MAX)
        reason = None if reason is None else free_text(reason, "reason").strip() or None
        return by, reason if by is not None else None

    def _activate(self, s: Session, row: ModelVersion, archive_reason: str | None, rollback: bool = False,
                  by: str | None = None, note: str | None = None) -> None:
        if not rollback:
            row.previous_id = s.scalar(
                select(ModelVersion.id).where(ModelVersion.status == VersionStatus.ACTIVE, ModelVersion.id != row.id)
            )
        values: dict[str, Any] = {"status": VersionStatus.ARCHIVED}
        if archive_reason is not None:
            values["reason"] = archive_reason
        # Archive first and flush: the partial unique index would refuse two active rows in between.
        s.execute(
            update(ModelVersion)
            .where(ModelVersion.status == VersionStatus.ACTIVE, ModelVersion.id != row.id)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        row.status, row.promoted_at = VersionStatus.ACTIVE, self.now()
        row.promoted_by, row.promotion_reason = by, note  # this activation's record (None: the gate's)
        s.flush()
