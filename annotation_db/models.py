"""The schema: typed SQLAlchemy 2.x ORM classes for every table of the preference store.

Timestamps are written by the repository from its clock (not by the server), so SQLite and PostgreSQL
store the same values and tests can drive time; they are stored as naive UTC and read back aware.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Bounds on identifiers people type or the app sends; free text (errors, reasons) is unbounded.
HANDLE_MAX = 64
HF_USERNAME_MAX = 96
DISPLAY_KEY_MAX = 256  # a skeleton can be longer than its name (casefold turns ß into ss)
LABEL_MAX = 100
LABEL_SET_NAME_MAX = 64
TEMPLATE_MAX = 200
PATH_MAX = 500
SPEC_MAX = 200
MODEL_NAME_MAX = 32  # a model a Compare side shows: base, aligned or a peer defense

# Named constraints are required for Alembic's batch mode on SQLite, which rebuilds tables by name.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in Python, naive UTC in the database (same on SQLite and PostgreSQL)."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use an aware UTC datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class ImageSource(enum.StrEnum):
    UPLOAD = "upload"
    SYNTHETIC = "synthetic"
    EXAMPLE = "example"


class JudgmentKind(enum.StrEnum):
    HUMAN = "human"  # a person in the browser
    GOLD = "gold"  # the reference answer for a gold item, written by the maintainer
    SYNTHETIC = "synthetic"  # generated from the synthetic world, where the truth is known


class ArenaModel(enum.StrEnum):
    BASE = "base"
    ALIGNED = "aligned"


class ArenaVerdict(enum.StrEnum):
    LEFT = "left"
    RIGHT = "right"
    BOTH = "both"
    NEITHER = "neither"


class VersionStatus(enum.StrEnum):
    CANDIDATE = "candidate"
    ACTIVE = "active"
    REJECTED = "rejected"
    ARCHIVED = "archived"


class VersionKind(enum.StrEnum):
    """What a version serves: a trained head file, or one of the two named versions an admin can roll back to."""

    TRAINED = "trained"
    STARTER = "starter"  # the shipped starter head (no head file of its own)
    BASE = "base"  # the base model, no head at all


class RunStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


def _only_one(name: str, status: str) -> Index:
    """A partial unique index on ``status``: at most one row may have this status (SQLite and PostgreSQL)."""
    where = text(f"status = '{status}'")
    return Index(name, "status", unique=True, sqlite_where=where, postgresql_where=where)


def _enum(cls: type[enum.StrEnum], name: str) -> Enum:
    # Stored as checked VARCHAR rather than a native PostgreSQL enum, so adding a value is a plain migration.
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        validate_strings=True,
        values_callable=lambda members: [m.value for m in members],
    )


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Annotator(Base):
    """A person (or the synthetic generator, or the maintainer writing gold answers) who judges samples."""

    __tablename__ = "annotators"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    handle: Mapped[str] = mapped_column(String(HANDLE_MAX), unique=True)
    hf_username: Mapped[str | None] = mapped_column(String(HF_USERNAME_MAX))
    # Exported instead of the handle, so a published dataset does not name people.
    pseudonym: Mapped[str] = mapped_column(String(32), unique=True)
    trust: Mapped[float] = mapped_column(Float, default=1.0)
    gold_seen: Mapped[int] = mapped_column(Integer, default=0)
    gold_correct: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # What the person typed, shown only (migration 0004); the key is its confusable skeleton, unique so that
    # no two people show the same or a look-alike name.
    display_name: Mapped[str | None] = mapped_column(String(HANDLE_MAX))
    display_key: Mapped[str | None] = mapped_column(String(DISPLAY_KEY_MAX), unique=True)


class Image(Base):
    """An image stored once on disk under ``data_dir/images``, identified by the sha256 of its PNG bytes."""

    __tablename__ = "images"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    path: Mapped[str] = mapped_column(String(PATH_MAX))  # relative to the data dir
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    n_bytes: Mapped[int] = mapped_column(Integer)
    source: Mapped[ImageSource] = mapped_column(_enum(ImageSource, "image_source"))
    uploader_id: Mapped[int | None] = mapped_column(ForeignKey("annotators.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class LabelSet(Base):
    """The finite label set a sample is judged over, with the prompt template that embeds each label."""

    __tablename__ = "label_sets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(LABEL_SET_NAME_MAX), unique=True)
    labels: Mapped[list[str]] = mapped_column(JSON)
    prompt_template: Mapped[str] = mapped_column(String(TEMPLATE_MAX))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Sample(Base):
    """An image, the typographic attack drawn on it (None when clean) and the label set to judge it over."""

    __tablename__ = "samples"
    __table_args__ = (
        UniqueConstraint(
            "image_sha256", "label_set_id", "attack_key", name="uq_samples_image_label_set_attack"
        ),
        # The annotation queue: next_sample walks one vote count at a time, ids ascending from a random point
        # (migration 0006), with or without a label set.
        Index("ix_samples_votes_id", "votes", "id"),
        Index("ix_samples_label_set_votes_id", "label_set_id", "votes", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_sha256: Mapped[str] = mapped_column(ForeignKey("images.sha256"), index=True)
    label_set_id: Mapped[int] = mapped_column(ForeignKey("label_sets.id"))
    attack: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    # sha256 of the canonical attack JSON: JSON columns cannot be compared for the uniqueness above.
    attack_key: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Counted votes (human and synthetic, not undone), kept by the judgment writes: next_sample reads this.
    votes: Mapped[int] = mapped_column(Integer, server_default=text("0"), default=0)

    image: Mapped[Image] = relationship(lazy="raise")
    label_set: Mapped[LabelSet] = relationship(lazy="raise")


class Judgment(Base):
    """One preference: on this sample, this annotator prefers ``chosen`` over ``rejected``."""

    __tablename__ = "judgments"
    __table_args__ = (
        UniqueConstraint("sample_id", "annotator_id", name="uq_judgments_sample_annotator"),
        # Rate limit and undo look at one annotator's latest judgments.
        Index("ix_judgments_annotator_created", "annotator_id", "created_at"),
        # Gold items and per-kind counts.
        Index("ix_judgments_kind_sample", "kind", "sample_id"),
        # Ids are watermarks ("pairs since a version"): SQLite must never reuse the id of a deleted row.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"))
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"))
    chosen: Mapped[str] = mapped_column(String(LABEL_MAX))
    rejected: Mapped[str] = mapped_column(String(LABEL_MAX))
    kind: Mapped[JudgmentKind] = mapped_column(_enum(JudgmentKind, "judgment_kind"))
    shown_left: Mapped[ArenaModel | None] = mapped_column(_enum(ArenaModel, "arena_model"))
    said_right: Mapped[ArenaVerdict | None] = mapped_column(_enum(ArenaVerdict, "arena_verdict"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    undone_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Battle(Base):
    """Which two models a Compare vote saw, one per side, and whether they were named before it (migration 0007).

    A model is ``base``, ``aligned`` (PO-CLIP's live head) or a peer defense's name. The vote's verdict is the
    judgment's ``said_right``; blind battles (arena mode) feed the defense leaderboard.
    """

    __tablename__ = "battles"
    __table_args__ = (
        # The leaderboard counts blind battles.
        Index("ix_battles_blind", "blind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    judgment_id: Mapped[int] = mapped_column(ForeignKey("judgments.id", ondelete="CASCADE"), unique=True)
    left_model: Mapped[str] = mapped_column(String(MODEL_NAME_MAX))
    right_model: Mapped[str] = mapped_column(String(MODEL_NAME_MAX))
    blind: Mapped[bool] = mapped_column(Boolean)


class ModelVersion(Base):
    """A trained alignment head on a backbone. At most one row is ``active`` (enforced by a partial index)."""

    __tablename__ = "model_versions"
    __table_args__ = (
        _only_one("uq_model_versions_one_active", "active"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    backbone: Mapped[str] = mapped_column(String(SPEC_MAX))
    head_path: Mapped[str] = mapped_column(String(PATH_MAX))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[VersionStatus] = mapped_column(_enum(VersionStatus, "version_status"))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    # Highest judgment id the version was trained on: "pairs since this version" starts after it.
    judgment_watermark: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    promoted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The version that was live when this one was promoted: what a rollback returns to (migration 0002; a
    # plain id, as versions are never deleted).
    previous_id: Mapped[int | None] = mapped_column(Integer)
    # Migration 0005. ``kind``: a trained head, or the named "starter head" / "base model" rows a rollback makes
    # live (one row per kind and backbone, reused; their head_path is empty). ``promoted_by`` and
    # ``promotion_reason``: the admin who last made this version live by hand (their Hugging Face name, or
    # "admin" for the token) and the reason they typed; NULL when the gate promoted it. The time is promoted_at.
    kind: Mapped[VersionKind] = mapped_column(_enum(VersionKind, "version_kind"), server_default=text("'trained'"),
                                              default=VersionKind.TRAINED)
    promoted_by: Mapped[str | None] = mapped_column(String(HF_USERNAME_MAX))
    promotion_reason: Mapped[str | None] = mapped_column(Text)


class TrainingRun(Base):
    """One training job. At most one row is ``running`` at a time: the single-runner lock (partial index)."""

    __tablename__ = "training_runs"
    __table_args__ = (
        _only_one("uq_training_runs_one_running", "running"),
        _only_one("uq_training_runs_one_queued", "queued"),
        Index("ix_training_runs_status_created", "status", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[RunStatus] = mapped_column(_enum(RunStatus, "run_status"))
    worker: Mapped[str | None] = mapped_column(String(SPEC_MAX))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    error: Mapped[str | None] = mapped_column(Text)
    version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Fencing token drawn when the run is claimed: only its holder may heartbeat, register or promote.
    lease: Mapped[str | None] = mapped_column(String(64))
    judgment_watermark: Mapped[int | None] = mapped_column(Integer)
    # 1 for a run as queued; a run whose worker died is queued again once, as attempt 2 (migration 0006).
    attempt: Mapped[int] = mapped_column(Integer, server_default=text("1"), default=1)


class Counter(Base):
    """A maintained total (judgments, undone, annotators, images, samples), changed by the write that changes
    it, so status reads one row per figure whatever the size of the database."""

    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(Integer)


class ServedItem(Base):
    """A sample shown to an annotator by :meth:`next_sample`; human answers are accepted only for these."""

    __tablename__ = "served_items"
    __table_args__ = (
        # The annotator's items served but not answered, least recently served first (migration 0006).
        Index("ix_served_items_annotator_served_at", "annotator_id", "served_at"),
    )

    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), primary_key=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"), primary_key=True)
    served_at: Mapped[datetime] = mapped_column(UTCDateTime())

