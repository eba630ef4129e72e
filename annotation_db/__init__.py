"""annotation_db: the preference store (SQLAlchemy 2.x; SQLite by default, PostgreSQL to scale out).

Start-up (app and standalone trainer)::

    from annotation_db import open_repository
    repo = open_repository(Location(data_dir))   # restore a snapshot if the DB is gone, migrate, connect

Any object with ``data_dir``, ``database_url``, ``database_dir``, ``storage`` and ``sqlite_journal_mode``
describes the location (:class:`StoreLocation`); the package reads no environment and imports nothing from the app.

Everything else goes through the returned :class:`Repository`; Hugging Face dataset export and import
are in :mod:`annotation_db.export` (not imported here: ``datasets`` takes a second to load).
"""

from annotation_db.agreement import krippendorff_alpha_nominal
from annotation_db.annotators import AnnotatorInfo
from annotation_db.backup import (
    list_snapshots,
    restore_if_missing,
    restore_snapshot,
    snapshot_sqlite,
    take_snapshot,
)
from annotation_db.battles import BattleCount
from annotation_db.catalog import DEFAULT_TEMPLATE, LabelSetInfo, SampleInfo
from annotation_db.engine import Database, DatabaseConfig, Location, StoreLocation, create_db_engine
from annotation_db.errors import (
    AnnotationDBError,
    BackupError,
    DatabaseGoneError,
    DuplicateJudgmentError,
    HubError,
    InvalidTransitionError,
    NotFoundError,
    RateLimitedError,
    RunLostError,
    RunnerBusyError,
    StorageError,
    ValidationError,
)
from annotation_db.images import ImageInfo
from annotation_db.judgments import JudgmentInfo
from annotation_db.migrations import upgrade_schema
from annotation_db.models import VersionKind
from annotation_db.pairs import CrowdGrowth, PairBatch, TrainingPair
from annotation_db.repository import Repository, open_repository
from annotation_db.runs import RunInfo, TrainedRun, worker_name
from annotation_db.stats import AnnotatorStats, Stats
from annotation_db.store import RepositoryConfig
from annotation_db.versions import NAMED_VERSIONS, VersionInfo

__all__ = [
    "DEFAULT_TEMPLATE",
    "NAMED_VERSIONS",
    "AnnotationDBError",
    "AnnotatorInfo",
    "AnnotatorStats",
    "BackupError",
    "BattleCount",
    "CrowdGrowth",
    "DatabaseGoneError",
    "Location",
    "Database",
    "DatabaseConfig",
    "DuplicateJudgmentError",
    "HubError",
    "ImageInfo",
    "InvalidTransitionError",
    "JudgmentInfo",
    "LabelSetInfo",
    "NotFoundError",
    "PairBatch",
    "RateLimitedError",
    "Repository",
    "RepositoryConfig",
    "RunInfo",
    "RunLostError",
    "RunnerBusyError",
    "SampleInfo",
    "Stats",
    "StorageError",
    "StoreLocation",
    "TrainedRun",
    "TrainingPair",
    "ValidationError",
    "VersionInfo",
    "VersionKind",
    "create_db_engine",
    "krippendorff_alpha_nominal",
    "list_snapshots",
    "open_repository",
    "restore_if_missing",
    "restore_snapshot",
    "snapshot_sqlite",
    "take_snapshot",
    "upgrade_schema",
    "worker_name",
]
