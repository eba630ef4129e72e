"""Fixtures for the annotation_db suite: every DB test runs on a real SQLite file and on a real PostgreSQL.

PostgreSQL comes from ``POCLIP_TEST_POSTGRES_URL`` (``eval "$(bash .ci/start_postgres.sh)"`` sets it).
Without it the PostgreSQL variants are skipped locally, with the reason printed, and fail in CI (CI=true).
Each test gets a fresh database: a copy of a migrated SQLite file, or the session's migrated PostgreSQL
database with every table truncated.
"""

from __future__ import annotations

import io
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import PIL.Image
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

from annotation_db import (
    Database,
    DatabaseConfig,
    Repository,
    RepositoryConfig,
    create_db_engine,
    upgrade_schema,
)
from annotation_db.models import Base

PG_ENV = "POCLIP_TEST_POSTGRES_URL"
IN_CI = os.environ.get("CI", "").lower() == "true"
PG_URL = os.environ.get(PG_ENV, "")
PG_MISSING = f'{PG_ENV} is not set: start a server with  eval "$(bash .ci/start_postgres.sh)"'
BACKENDS = ["sqlite", "postgresql"]


def pytest_report_header(config: pytest.Config) -> str:
    if PG_URL:
        return f"annotation_db: PostgreSQL tests on {make_url(PG_URL).render_as_string(hide_password=True)}"
    action = "FAIL (CI=true)" if IN_CI else "are skipped"
    return f"annotation_db: PostgreSQL variants {action}: {PG_MISSING}"


def _need_postgres() -> None:
    if not PG_URL:
        if IN_CI:
            pytest.fail(f"CI must test PostgreSQL too. {PG_MISSING}")
        pytest.skip(PG_MISSING)


def _pg_admin() -> Engine:
    return create_engine(PG_URL, isolation_level="AUTOCOMMIT", pool_size=1)


def _pg_url_for(database: str) -> str:
    return make_url(PG_URL).set(database=database).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A migrated PostgreSQL database for this test session, emptied before each test."""
    _need_postgres()
    name = f"poclip_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = _pg_admin()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = create_db_engine(DatabaseConfig(_pg_url_for(name)))
    upgrade_schema(engine)
    engine.dispose()
    yield _pg_url_for(name)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _empty_pg(url: str) -> None:
    # TRUNCATE ... RESTART IDENTITY gives each test an empty database with ids from 1, in milliseconds
    # (cloning a database per test took about a second).
    engine = create_engine(url, pool_size=1)
    with engine.begin() as conn:
        tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    engine = create_db_engine(DatabaseConfig(f"sqlite:///{path}"))
    upgrade_schema(engine)
    engine.dispose()
    return path


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database: a SQLite file in tmp_path, or a new PostgreSQL database."""
    if request.param == "sqlite":
        path = tmp_path / "poclip.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    url = request.getfixturevalue("pg_database")
    _empty_pg(url)
    yield url


@pytest.fixture
def new_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[bool], str]]:
    """Make more databases on the test's backend: ``new_database(migrated)`` returns a URL."""
    backend = request.node.callspec.params.get("db_url") or request.node.callspec.params.get("empty_db_url")
    created: list[str] = []

    def make(migrated: bool = True) -> str:
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path / f'extra-{uuid.uuid4().hex[:8]}.db'}"
        else:
            _need_postgres()
            name = f"poclip_e_{uuid.uuid4().hex[:12]}"
            with _pg_admin().connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            created.append(name)
            url = _pg_url_for(name)
        if migrated:
            engine = create_db_engine(DatabaseConfig(url))
            upgrade_schema(engine)
            engine.dispose()
        return url

    yield make
    if created:
        admin = _pg_admin()
        with admin.connect() as conn:
            for name in created:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=BACKENDS)
def empty_db_url(request: pytest.FixtureRequest, new_database: Callable[[bool], str]) -> str:
    """A database with no tables at all (for migration tests)."""
    return new_database(False)


class ManualClock:
    """A clock that moves only when told: time-window behaviour is tested without sleeping."""

    def __init__(self, start: datetime | None = None) -> None:
        self.t = start or datetime(2025, 6, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def make_repo(db_url: str, tmp_path: Path, clock: ManualClock) -> Iterator[Callable[..., Repository]]:
    """Build repositories on the test's database (several may share it, like several processes)."""
    made: list[Repository] = []

    def make(
        config: RepositoryConfig | None = None, *, real_clock: bool = False, **kwargs: object
    ) -> Repository:
        engine = create_db_engine(DatabaseConfig(db_url))
        extra = {} if real_clock else {"clock": clock}
        repo = Repository(Database(engine), tmp_path / "data", config, **extra, **kwargs)  # type: ignore[arg-type]
        made.append(repo)
        return repo

    yield make
    for repo in made:
        repo.close()


# The store's defaults count a person's votes only after 3 gold items and cap one annotator's share of a
# training set (see test_db_pairs.py for those defaults). Most tests here check one mechanism with a handful of
# votes, so the plain repository turns those two policies off, explicitly.
PLAIN = RepositoryConfig(min_gold_seen=0, max_annotator_share=1.0)


@pytest.fixture
def repo(make_repo: Callable[..., Repository]) -> Repository:
    return make_repo(PLAIN)


def png_bytes(seed: int, size: tuple[int, int] = (8, 6)) -> bytes:
    """A small distinct PNG per seed."""
    image = PIL.Image.new("RGB", size, ((seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


LABELS = ["cat", "dog", "bird", "fish"]


@dataclass
class World:
    """A label set, images and samples; annotators a..h."""

    label_set: str
    samples: list[int]
    annotators: list[str]


def build_world(
    repo: Repository, n_samples: int = 6, n_annotators: int = 8, label_set: str = "animals"
) -> World:
    repo.ensure_label_set(label_set, LABELS)
    samples = []
    for i in range(n_samples):
        image = repo.store_image(png_bytes(i), source="synthetic")
        attack = None if i % 2 == 0 else {"text": LABELS[i % 4], "size": 12, "xy": [0.1, 0.2]}
        samples.append(repo.add_sample(image.sha256, label_set, attack).id)
    annotators = [repo.ensure_annotator(f"annotator-{chr(97 + i)}").handle for i in range(n_annotators)]
    return World(label_set, samples, annotators)


@pytest.fixture
def world(repo: Repository) -> World:
    return build_world(repo)


@pytest.fixture
def png() -> Callable[..., bytes]:
    """The PNG maker, for tests (test modules do not import conftest: names could clash across folders)."""
    return png_bytes


@pytest.fixture
def world_factory() -> Callable[..., World]:
    return build_world
