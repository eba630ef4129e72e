"""Engine and sessions: one engine per process, one short session per unit of work.

SQLite needs care to be safe from Gradio's worker threads and from several processes:
- WAL journal (readers never block the writer), configurable for network file systems where WAL is unsafe;
- foreign keys on (SQLite leaves them off per connection);
- a busy timeout, so a writer waits for the lock instead of failing at once;
- write units start with ``BEGIN IMMEDIATE``. A deferred transaction that reads and then writes can hit
  SQLITE_BUSY without waiting (its snapshot is stale when it asks for the write lock), which would surface
  as "database is locked" under concurrent annotators. Taking the write lock up front makes writers queue.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from poclip.settings import Settings

SQLITE_JOURNAL_MODES = ("WAL", "DELETE", "TRUNCATE", "PERSIST")
SQLITE_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
_WRITE_OPTION = "annotation_db_write"


@dataclass(frozen=True)
class DatabaseConfig:
    """How to reach the database.

    Attributes:
        url: SQLAlchemy URL, ``sqlite:///path.db`` or ``postgresql+psycopg://user:pw@host/db``.
        sqlite_journal_mode: ``WAL`` normally; ``DELETE`` on network file systems, where WAL's shared
            memory does not work.
        sqlite_synchronous: ``NORMAL`` is crash-safe in WAL mode (a power cut may lose the last commits,
            never corrupt the file); ``FULL`` also survives power cuts at the price of an fsync per commit.
        busy_timeout_ms: how long a SQLite writer waits for the write lock before giving up.
        pool_size: connections kept per process (Gradio's worker threads share them).
    """

    url: str
    sqlite_journal_mode: str = "WAL"
    sqlite_synchronous: str = "NORMAL"
    busy_timeout_ms: int = 15_000
    pool_size: int = 10

    @classmethod
    def from_settings(cls, settings: Settings) -> DatabaseConfig:
        """The config :class:`poclip.settings.Settings` describes (DATABASE_URL, POCLIP_SQLITE_JOURNAL)."""
        return cls(url=settings.resolved_database_url, sqlite_journal_mode=settings.sqlite_journal_mode)

    @property
    def is_sqlite(self) -> bool:
        return make_url(self.url).get_backend_name() == "sqlite"

    @property
    def sqlite_path(self) -> Path | None:
        """The database file for a file-backed SQLite URL, else None (PostgreSQL, ``:memory:``)."""
        url = make_url(self.url)
        if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
            return None
        return Path(url.database)


def create_db_engine(config: DatabaseConfig) -> Engine:
    """Create the process-wide engine, with SQLite pragmas applied to every new connection.

    Args:
        config: where the database is and how SQLite should behave.
    Returns:
        A thread-safe :class:`~sqlalchemy.Engine`; sessions are made per unit of work by :class:`Database`.
    """
    if not config.is_sqlite:
        # pre_ping: a replica that sat idle must not hand a dead connection to the first request.
        return create_engine(
            config.url, pool_size=config.pool_size, max_overflow=2 * config.pool_size, pool_pre_ping=True
        )

    journal = config.sqlite_journal_mode.upper()
    synchronous = config.sqlite_synchronous.upper()
    if journal not in SQLITE_JOURNAL_MODES:
        raise ValueError(f"sqlite journal mode must be one of {SQLITE_JOURNAL_MODES}, got {journal!r}")
    if synchronous not in SQLITE_SYNCHRONOUS:
        raise ValueError(f"sqlite synchronous must be one of {SQLITE_SYNCHRONOUS}, got {synchronous!r}")
    path = config.sqlite_path
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(config.url, pool_size=config.pool_size, max_overflow=2 * config.pool_size)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy emit BEGIN itself (below); the sqlite3 module's implicit BEGIN is always deferred.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(config.busy_timeout_ms)}")
        _set_journal_mode(cursor, journal, config.busy_timeout_ms / 1000)
        cursor.execute(f"PRAGMA synchronous = {synchronous}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get(_WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _set_journal_mode(cursor: Any, journal: str, timeout_s: float) -> None:
    # Switching a file to WAL needs an exclusive lock and SQLite answers "database is locked" at once,
    # without the busy handler, when another connection opens the fresh file at the same moment (several
    # processes starting together). The mode is stored in the file, so usually there is nothing to do.
    deadline = time.monotonic() + timeout_s
    while True:
        if cursor.execute("PRAGMA journal_mode").fetchone()[0].upper() == journal:
            return
        try:
            cursor.execute(f"PRAGMA journal_mode = {journal}")
            return
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class FifoLock:
    """A lock granted in arrival order. ``threading.Lock`` lets the releasing thread take it straight back,
    which starves the other writers and stretches the tail latency; first come, first served bounds the
    wait to the writers queued ahead."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._waiters: deque[threading.Lock] = deque()
        self._held = False

    def __enter__(self) -> None:
        with self._mutex:
            if not self._held and not self._waiters:
                self._held = True
                return
            ticket = threading.Lock()
            ticket.acquire()
            self._waiters.append(ticket)
        ticket.acquire()  # released by __exit__ of the holder ahead of us, which hands over ownership

    def __exit__(self, *exc: object) -> None:
        with self._mutex:
            if self._waiters:
                self._waiters.popleft().release()  # ownership passes on; _held stays True
            else:
                self._held = False


class Database:
    """An engine plus the two kinds of unit of work: :meth:`reading` and :meth:`writing`.

    Each call opens its own session and closes it at the end of the ``with`` block, so sessions are never
    shared across threads; the engine (and its pool) is.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._read = sessionmaker(engine, expire_on_commit=False)
        self._write_engine = engine.execution_options(**{_WRITE_OPTION: True})
        self._write = sessionmaker(self._write_engine, expire_on_commit=False)
        # SQLite has one writer at a time anyway. Queueing this process's writers on a lock hands the write
        # lock over as soon as it is free; left to SQLite, waiting writers sleep in its busy handler for up
        # to 100 ms per try, which is what made the tail latency with 8 writers. Other processes still
        # wait through the busy timeout. PostgreSQL writers run concurrently, so no lock there.
        self._write_lock: FifoLock | None = FifoLock() if engine.dialect.name == "sqlite" else None

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A read-only unit of work (rolled back at the end)."""
        # Closing the session rolls back the transaction it began on first use.
        with self._read() as session:
            yield session

    @contextmanager
    def writing(self) -> Iterator[Session]:
        """A unit of work committed at the end of the block, or rolled back whole if it raises."""
        if self._write_lock is None:
            with self._write() as session, session.begin():
                yield session
            return
        with self._write_lock, self._write() as session, session.begin():
            yield session

    @contextmanager
    def write_connection(self) -> Iterator[Connection]:
        """Like :meth:`writing`, for Core statements on a connection without an ORM session (hot paths)."""
        if self._write_lock is None:
            with self._write_engine.begin() as conn:
                yield conn
            return
        with self._write_lock, self._write_engine.begin() as conn:
            yield conn

    def dispose(self) -> None:
        """Close pooled connections (tests, shutdown, before restoring a backup)."""
        self.engine.dispose()
