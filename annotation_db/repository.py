"""The repository: the one way the app and the trainer read and write the preference store."""

from __future__ import annotations

from annotation_db.backup import restore_if_missing
from annotation_db.battles import BattlesMixin
from annotation_db.engine import Database, DatabaseConfig, StoreLocation, create_db_engine
from annotation_db.migrations import upgrade_schema
from annotation_db.orphans import sweep_orphan_files
from annotation_db.runs import RunsMixin
from annotation_db.serving import ServingMixin
from annotation_db.stats import StatsMixin
from annotation_db.store import RepositoryConfig
from annotation_db.versions import VersionsMixin


class Repository(StatsMixin, ServingMixin, RunsMixin, VersionsMixin, BattlesMixin):
    """Annotators, images, label sets, samples, judgments, pairs, stats, training runs and model versions.

    Every method is one short unit of work with its own session, so one instance is shared by all of
    Gradio's worker threads. Methods return plain frozen dataclasses, never ORM objects, and raise
    :class:`annotation_db.ValidationError` (with a message for people) for input a user can get wrong.
    Method groups live in :mod:`~annotation_db.annotators`, :mod:`~annotation_db.images`, :mod:`~annotation_db.catalog`,
    :mod:`~annotation_db.judgments`, :mod:`~annotation_db.serving`,
    :mod:`~annotation_db.pairs`, :mod:`~annotation_db.stats`, :mod:`~annotation_db.runs`,
    :mod:`~annotation_db.versions` and :mod:`~annotation_db.battles`.
    """

    @classmethod
    def from_settings(cls, settings: StoreLocation, config: RepositoryConfig | None = None) -> Repository:
        """A repository on the settings' database (does not touch the schema; see :func:`open_repository`)."""
        engine = create_db_engine(DatabaseConfig.from_settings(settings))
        return cls(Database(engine), settings.data_dir, config)

    def close(self) -> None:
        """Release pooled connections."""
        self.db.dispose()


def open_repository(settings: StoreLocation, config: RepositoryConfig | None = None) -> Repository:
    """What the app and the standalone trainer call at start.

    1. restore the newest snapshot if the SQLite file is missing or empty (a restarted Space),
    2. upgrade the schema to the latest migration (safe when several processes start at once),
    3. remove files an interrupted write left without their row (older than an hour),
    4. return the repository.
    """
    restore_if_missing(settings)
    repo = Repository.from_settings(settings, config)
    upgrade_schema(repo.db.engine)
    repo.db.remember_file()
    sweep_orphan_files(repo)
    return repo
