"""Initial schema: annotators, images, label sets, samples, judgments, model versions, training runs.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _utc(nullable: bool) -> dict[str, object]:
    # annotation_db.models.UTCDateTime stores naive UTC in a plain timestamp column.
    return {"type_": sa.DateTime(timezone=False), "nullable": nullable}


def _enum(name: str, *values: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=16)


def upgrade() -> None:
    op.create_table(
        "annotators",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("handle", sa.String(length=64), nullable=False),
        sa.Column("hf_username", sa.String(length=96), nullable=True),
        sa.Column("pseudonym", sa.String(length=32), nullable=False),
        sa.Column("trust", sa.Float(), nullable=False),
        sa.Column("gold_seen", sa.Integer(), nullable=False),
        sa.Column("gold_correct", sa.Integer(), nullable=False),
        sa.Column("created_at", **_utc(False)),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_annotators")),
        sa.UniqueConstraint("handle", name=op.f("uq_annotators_handle")),
        sa.UniqueConstraint("pseudonym", name=op.f("uq_annotators_pseudonym")),
    )
    op.create_table(
        "label_sets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("prompt_template", sa.String(length=200), nullable=False),
        sa.Column("created_at", **_utc(False)),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_label_sets")),
        sa.UniqueConstraint("name", name=op.f("uq_label_sets_name")),
    )
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("backbone", sa.String(length=200), nullable=False),
        sa.Column("head_path", sa.String(length=500), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column(
            "status", _enum("version_status", "candidate", "active", "rejected", "archived"), nullable=False
        ),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("judgment_watermark", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", **_utc(False)),
        sa.Column("promoted_at", **_utc(True)),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["model_versions.id"], name=op.f("fk_model_versions_parent_id_model_versions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
    )
    op.create_index(
        "uq_model_versions_one_active",
        "model_versions",
        ["status"],
        unique=True,
        sqlite_where=sa.text("status = 'active'"),
        postgresql_where=sa.text("status = 'active'"),
    )
    op.create_table(
        "images",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("path", sa.String(length=500), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("n_bytes", sa.Integer(), nullable=False),
        sa.Column("source", _enum("image_source", "upload", "synthetic", "example"), nullable=False),
        sa.Column("uploader_id", sa.Integer(), nullable=True),
        sa.Column("created_at", **_utc(False)),
        sa.ForeignKeyConstraint(
            ["uploader_id"], ["annotators.id"], name=op.f("fk_images_uploader_id_annotators")
        ),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_images")),
    )
    op.create_index(op.f("ix_images_uploader_id"), "images", ["uploader_id"], unique=False)
    op.create_table(
        "training_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("status", _enum("run_status", "queued", "running", "succeeded", "failed"), nullable=False),
        sa.Column("worker", sa.String(length=200), nullable=True),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("version_id", sa.Integer(), nullable=True),
        sa.Column("created_at", **_utc(False)),
        sa.Column("started_at", **_utc(True)),
        sa.Column("heartbeat_at", **_utc(True)),
        sa.Column("finished_at", **_utc(True)),
        sa.ForeignKeyConstraint(
            ["version_id"], ["model_versions.id"], name=op.f("fk_training_runs_version_id_model_versions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_runs")),
    )
    op.create_index(
        "ix_training_runs_status_created", "training_runs", ["status", "created_at"], unique=False
    )
    op.create_index(
        "uq_training_runs_one_running",
        "training_runs",
        ["status"],
        unique=True,
        sqlite_where=sa.text("status = 'running'"),
        postgresql_where=sa.text("status = 'running'"),
    )
    op.create_table(
        "samples",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_sha256", sa.String(length=64), nullable=False),
        sa.Column("label_set_id", sa.Integer(), nullable=False),
        sa.Column("attack", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("attack_key", sa.String(length=64), nullable=False),
        sa.Column("created_at", **_utc(False)),
        sa.ForeignKeyConstraint(
            ["image_sha256"], ["images.sha256"], name=op.f("fk_samples_image_sha256_images")
        ),
        sa.ForeignKeyConstraint(
            ["label_set_id"], ["label_sets.id"], name=op.f("fk_samples_label_set_id_label_sets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_samples")),
        sa.UniqueConstraint(
            "image_sha256", "label_set_id", "attack_key", name="uq_samples_image_label_set_attack"
        ),
    )
    op.create_index(op.f("ix_samples_image_sha256"), "samples", ["image_sha256"], unique=False)
    op.create_index(op.f("ix_samples_label_set_id"), "samples", ["label_set_id"], unique=False)
    op.create_table(
        "judgments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sample_id", sa.Integer(), nullable=False),
        sa.Column("annotator_id", sa.Integer(), nullable=False),
        sa.Column("chosen", sa.String(length=100), nullable=False),
        sa.Column("rejected", sa.String(length=100), nullable=False),
        sa.Column("kind", _enum("judgment_kind", "human", "gold", "synthetic"), nullable=False),
        sa.Column("shown_left", _enum("arena_model", "base", "aligned"), nullable=True),
        sa.Column("said_right", _enum("arena_verdict", "left", "right", "both", "neither"), nullable=True),
        sa.Column("created_at", **_utc(False)),
        sa.Column("undone_at", **_utc(True)),
        sa.ForeignKeyConstraint(
            ["annotator_id"], ["annotators.id"], name=op.f("fk_judgments_annotator_id_annotators")
        ),
        sa.ForeignKeyConstraint(["sample_id"], ["samples.id"], name=op.f("fk_judgments_sample_id_samples")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_judgments")),
        sa.UniqueConstraint("sample_id", "annotator_id", name="uq_judgments_sample_annotator"),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_judgments_annotator_created", "judgments", ["annotator_id", "created_at"], unique=False
    )
    op.create_index("ix_judgments_kind_sample", "judgments", ["kind", "sample_id"], unique=False)


def downgrade() -> None:
    # Dropping a table drops its indexes with it, on SQLite and PostgreSQL alike.
    for table in (
        "judgments",
        "samples",
        "training_runs",
        "images",
        "model_versions",
        "label_sets",
        "annotators",
    ):
        op.drop_table(table)
