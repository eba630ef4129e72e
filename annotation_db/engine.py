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

import secrets
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from annotation_db.errors import StorageError
from annotation_db.identity import FileWatch, as_pragma


class StoreLocation(Protocol):
    """Where the store lives; any object with these attributes will do (the app passes its settings).

    annotation_db reads no environment and imports nothing from the app: callers describe the location.
    """

    @property
    def database_url(self) -> str: ...
    @property
    def database_dir(self) -> Path: ...
    @property
    def sqlite_journal_mode(self) -> str: ...
    @property
    def data_dir(self) -> Path: ...
    @property
    def storage(self) -> str: ...


@dataclass(frozen=True)
class Location:
    """A plain :class:`StoreLocation`: a data folder and a database URL (default: SQLite in the folder)."""

    data_dir: Path
    database_url: str = ""
    sqlite_journal_mode: str = "WAL"
    storage: str = "snapshots"

    @property
    def database_dir(self) -> Path:
        return Path(self.data_dir)


DATABASE_FILE = "poclip.db"


def resolved_database_url(location: StoreLocation) -> str:
    """The database a location names: its ``database_url``, else the SQLite file :data:`DATABASE_FILE` in its
    ``database_dir``. The one place the default URL is derived; everything else asks here."""
    return location.database_url or f"sqlite:///{Path(location.database_dir) / DATABASE_FILE}"


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
        sqlite_exclusive: one process owns the file: ``locking_mode=EXCLUSIVE`` and a single pooled connection
            that every unit of work waits for in turn. For a database on a storage bucket mounted as a volume,
            which has no working file locks across machines and supports no second writer.
    """

    url: str
    sqlite_journal_mode: str = "WAL"
    sqlite_synchronous: str = "NORMAL"
    busy_timeout_ms: int = 15_000
    pool_size: int = 10
    sqlite_exclusive: bool = False

    @classmethod
    def from_settings(cls, location: StoreLocation) -> DatabaseConfig:
        """The config a :class:`StoreLocation` describes (its URL and SQLite journal mode; storage ``bucket``
        means a DELETE journal, FULL sync and one exclusive connection, for SQLite on a mounted bucket)."""
        url = resolved_database_url(location)
        if location.storage == "bucket" and url.startswith("sqlite"):
            return cls(url=url, sqlite_journal_mode="DELETE", sqlite_synchronous="FULL", pool_size=1,
                       sqlite_exclusive=True)
        return cls(url=url, sqlite_journal_mode=location.sqlite_journal_mode)

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
    if config.sqlite_exclusive and journal == "WAL":
        raise ValueError("an exclusive SQLite database on a bucket needs a rollback journal (DELETE), not WAL")
    path = config.sqlite_path
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    # Exclusive: one connection, no overflow, so the pool's queue is the lock every unit of work waits on.
    overflow = 0 if config.sqlite_exclusive else 2 * config.pool_size
    pool_size = 1 if config.sqlite_exclusive else config.pool_size
    engine = create_engine(config.url, pool_size=pool_size, max_overflow=overflow, pool_timeout=60)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy emit BEGIN itself (below); the sqlite3 module's implicit BEGIN is always deferred.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(config.busy_timeout_ms)}")
        _set_journal_mode(cursor, journal, config.busy_timeout_ms / 1000)
        cursor.execute(f"PRAGMA synchronous = {synchronous}")
        if config.sqlite_exclusive:
            cursor.execute("PRAGMA locking_mode = EXCLUSIVE")
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


# What the database says when the disk is full or the store cannot be written, and what we tell people.
_FULL = ("database or disk is full", "no space left", "disk full", "diskfull")
_READ_ONLY = ("readonly database", "read-only", "read only", "readonlysqltransaction", "permission denied")


def _storage_error(exc: DBAPIError) -> StorageError | None:
    text = f"{type(exc.orig).__name__} {exc.orig}".lower()
    code = getattr(exc.orig, "sqlstate", None)
    if code == "53100" or any(k in text for k in _FULL):
        return StorageError(StorageError.FULL)
    if code == "25006" or any(k in text for k in _READ_ONLY):
        return StorageError(StorageError.READ_ONLY.format(what="database"))
    return None


class Database:
    """An engine plus the two kinds of unit of work: :meth:`reading` and :meth:`writing`.

    Each call opens its own session and closes it at the end of the ``with`` block, so sessions are never
    shared across threads; the engine (and its pool) is.

    For a SQLite file, every unit of work first checks that the file is still the database that was opened
    (:class:`~annotation_db.identity.FileWatch`: one ``fstat`` and a 100-byte read of its header, which holds the
    database's random id and a write counter that every write transaction moves on). When the
    file was deleted, moved or replaced (in place too, e.g. by an older copy of itself), open connections would
    keep writing into the unlinked file, new ones would create an empty database or read the old rows; instead
    every unit of work raises :class:`DatabaseGoneError` until the app restarts.
    A full disk or a read-only database raises :class:`StorageError` with a message for people.
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
        url = engine.url
        self.path: Path | None = None
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            self.path = Path(url.database)
        self._watch: FileWatch | None = None if self.path is None else FileWatch(self.path)
        self.remember_file()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def remember_file(self) -> None:
        """Take the SQLite file as it is now as the database (at open, after migrating, after a restore).

        The first process to open a file without a database id draws one (under the write lock, so processes
        starting together agree on it)."""
        if self._watch is None:
            return
        try:
            with self._write_engine.begin() as conn:  # creates the file and sets its journal mode, as any would
                database_id = conn.exec_driver_sql("PRAGMA application_id").scalar()
                if database_id == 0:
                    database_id = as_pragma(secrets.randbits(32) or 1)
                    conn.exec_driver_sql(f"PRAGMA application_id = {database_id}")
                    self._count_write(conn)
        except DBAPIError as exc:
            if _storage_error(exc) is None:  # a read-only database keeps no id; anything else is a bug
                raise
            database_id = 0
        self._watch.remember(database_id)

    def check_file(self) -> None:
        """Raise :class:`DatabaseGoneError` when the SQLite file was deleted or replaced since it was opened."""
        if self._watch is not None:
            self._watch.check()

    def _observe(self) -> None:
        # After the commit, whose checkpoint may have moved the count on disk: keep it, so a copy of the file older
        # than this is told apart even when nothing else looks before it is put in place. The write is done; a lost
        # file is refused from the next unit of work on.
        if self._watch is not None:
            self._watch.observe()

    def _count_write(self, conn: Connection) -> None:
        """Last in a SQLite write transaction: move the file's write counter on (see :mod:`annotation_db.identity`)."""
        if self._watch is not None:
            cursor = conn.connection.dbapi_connection.cursor()  # the driver's own: two statements on the hot path
            try:
                writes = cursor.execute("PRAGMA user_version").fetchone()[0]
                cursor.execute(f"PRAGMA user_version = {as_pragma(writes + 1)}")
            finally:
                cursor.close()

    @contextmanager
    def _mapped(self) -> Iterator[None]:
        try:
            yield
        except DBAPIError as exc:
            mapped = _storage_error(exc)
            if mapped is None:
                raise
            raise mapped from exc

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A read-only unit of work (rolled back at the end)."""
        self.check_file()
        # Closing the session rolls back the transaction it began on first use.
        with self._mapped(), self._read() as session:
            yield session

    @contextmanager
    def writing(self) -> Iterator[Session]:
        """A unit of work committed at the end of the block, or rolled back whole if it raises."""
        if self._write_lock is None:
            with self._mapped(), self._write() as session, session.begin():
                yield session
            return
        with self._write_lock:
            self.check_file()  # this writer's turn: before a connection, which would create a deleted file anew
            with self._mapped(), self._write() as session, session.begin():
                yield session
                self._count_write(session.connection())
            self._observe()

    @contextmanager
    def write_connection(self) -> Iterator[Connection]:
        """Like :meth:`writing`, for Core statements on a connection without an ORM session (hot paths)."""
        if self._write_lock is None:
            with self._mapped(), self._write_engine.begin() as conn:
                yield conn
            return
        with self._write_lock:
            self.check_file()  # as in writing()
            with self._mapped(), self._write_engine.begin() as conn:
                yield conn
                self._count_write(conn)
            self._observe()

    def dispose(self) -> None:
        """Close pooled connections (tests, shutdown, before restoring a backup)."""
        self.engine.dispose()
