"""The SQLite file's identity: whether the file on disk is still the database this process opened.

A running app can lose its database file three ways, and each would otherwise be served silently:

- deleted or moved away: open connections keep writing into the unlinked file, new ones create an empty one;
- replaced by another file (a rename over it): a different inode;
- replaced *in place* (``cp old.db poclip.db`` truncates and rewrites the same inode), e.g. by an older copy of
  itself: the same inode, older content. New connections read the old rows, pooled ones still hold newer pages
  in their caches, and in WAL mode the write-ahead log lays newer pages over the old file: a mix of both.

So the file's 100-byte header carries two numbers of ours: a random database id, drawn by the first process that
opens the file (``PRAGMA application_id``, byte 68), and a write counter that every write transaction of
:class:`~annotation_db.engine.Database` moves on (``PRAGMA user_version``, byte 60). :class:`FileWatch` reads the
header straight from the file, past SQLite's caches: a ``stat`` and a 100-byte read before every unit of work and
after every commit (through one descriptor per file that stays open: see :func:`_descriptor`). SQLite writes the
file only at a commit (rollback journal) or a checkpoint (WAL: the newest pages, after a commit), so the count on
disk never goes back; an older copy put in place shows an older count than this process last saw there. Another
database shows another id; a different inode, a missing or emptied file, or a changed journal format (bytes
18-19) are other files. Counts compare modulo 2**32 (serial number arithmetic): a copy up to 2**31 writes behind
is told apart.

Not covered: a copy put in place that is no older than the file as this process last saw it (e.g. another
process's checkpoint moved the file on, and the copy was taken after this process looked). Writes by another
SQLite client do not move the count, and are no replacement.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from annotation_db.errors import DatabaseGoneError

log = logging.getLogger(__name__)

_MAGIC = b"SQLite format 3\x00"
_WRAP = 2**32


@dataclass(frozen=True)
class FileIdentity:
    """What the inode and the header say about a SQLite file.

    Attributes:
        device, inode: where the file is (a file renamed over it has another inode).
        journal: header bytes 18-19, ``b"\\x02\\x02"`` in WAL mode, ``b"\\x01\\x01"`` with a rollback journal;
            empty for a file without a header yet (a new, empty database).
        database_id: the random id in the header's application id (unsigned; 0 before one was drawn).
        writes: the write counter in the header's user version (unsigned).
    """

    device: int
    inode: int
    journal: bytes
    database_id: int
    writes: int


def read_identity(path: Path) -> FileIdentity:
    """The identity of the file at ``path`` as it is on disk now (FileNotFoundError when there is none)."""
    st = os.stat(path)
    key = (st.st_dev, st.st_ino)
    fd = _descriptor(key, path)
    if key not in _DESCRIPTORS or _DESCRIPTORS[key] != fd:  # another file took the path while it was opened
        st = os.fstat(fd)
    header = os.pread(fd, 100, 0)
    if len(header) < 100 or not header.startswith(_MAGIC):
        return FileIdentity(st.st_dev, st.st_ino, b"", 0, 0)
    return FileIdentity(st.st_dev, st.st_ino, header[18:20], int.from_bytes(header[68:72], "big"),
                        int.from_bytes(header[60:64], "big"))


# One read-only descriptor per database file (device, inode), opened on first use and never closed while the
# process runs. POSIX drops every lock a process holds on a file when it closes *any* descriptor of that file:
# closing ours would drop the locks SQLite's connections hold, and another process closing its last connection
# would then take the file as unused and checkpoint and delete the write-ahead log under them. SQLite defers
# closing its own descriptors for the same reason.
_DESCRIPTORS: dict[tuple[int, int], int] = {}
_DESCRIPTORS_LOCK = threading.Lock()


def _descriptor(key: tuple[int, int], path: Path) -> int:
    """The kept descriptor of the file ``key``, opened at ``path`` if there is none yet (if another file took
    ``path``'s place meanwhile, the descriptor is that file's, which the caller then reads as another file)."""
    with _DESCRIPTORS_LOCK:
        if key not in _DESCRIPTORS:
            fd = os.open(path, os.O_RDONLY)
            st = os.fstat(fd)
            opened = (st.st_dev, st.st_ino)
            _DESCRIPTORS.setdefault(opened, fd)  # a second descriptor of a file already kept stays open too
            return fd
        return _DESCRIPTORS[key]


def behind(count: int, known: int) -> bool:
    """Whether write count ``count`` is older than ``known``, modulo 2**32 (RFC 1982 serial arithmetic)."""
    return 0 < (known - count) % _WRAP < _WRAP // 2


def as_pragma(value: int) -> int:
    """``value`` (unsigned, modulo 2**32) as the signed 32-bit integer ``PRAGMA user_version`` and
    ``PRAGMA application_id`` take."""
    value %= _WRAP
    return value - _WRAP if value >= _WRAP // 2 else value


class FileWatch:
    """Follows one SQLite file; :meth:`check` raises :class:`DatabaseGoneError` once it is no longer the database
    that was opened, and keeps raising until :meth:`remember` (a restart, or a restore) takes the file again.

    Args:
        path: the database file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._known: FileIdentity | None = None
        self._database_id = 0
        self._gone: str | None = None
        self._lock = threading.Lock()  # read, compare and keep the newest count as one step

    def remember(self, database_id: int) -> None:
        """Take the file as it is now as the database whose id (as SQLite reads it) is ``database_id``.

        In WAL mode the id reaches the file's header at the first checkpoint after it was drawn; until then the
        header may still say 0."""
        with self._lock:
            self._known, self._database_id, self._gone = read_identity(self.path), database_id % _WRAP, None

    def check(self) -> None:
        """Raise :class:`DatabaseGoneError` when the file was deleted, moved, or replaced since :meth:`remember`."""
        gone = self.observe()
        if gone is not None:
            raise DatabaseGoneError(_MESSAGES[gone])

    def observe(self) -> str | None:
        """Look at the file now (after a commit: its checkpoint may have moved the count on disk) and keep its
        count; returns how the database was lost (``deleted``, ``replaced``), or None while it is the same."""
        with self._lock:
            if self._gone is None:
                self._gone = self._compare()
            return self._gone

    def _compare(self) -> str | None:
        known = self._known
        if known is None:
            return None
        try:
            now = read_identity(self.path)
        except FileNotFoundError:
            return self._lost("deleted", "the file is gone")
        if (now.device, now.inode) != (known.device, known.inode):
            return self._lost("replaced", "another file (inode) is in its place")
        if not known.journal:  # remembered before it had a header: nothing was in it, so take it as it is now
            self._known = now
            return None
        ids = {known.database_id, self._database_id}  # 0 until the id is checkpointed, then the id alone
        if now.journal != known.journal or now.database_id not in ids:
            return self._lost("replaced", f"its header names another database (journal {known.journal!r} -> "
                                          f"{now.journal!r}, id {known.database_id} -> {now.database_id})")
        if behind(now.writes, known.writes):
            return self._lost("replaced", f"it went back from write {known.writes} to write {now.writes}")
        self._known = now
        return None

    def _lost(self, how: str, detail: str) -> str:
        # The path and the details go to the server's log only; people see the message without either.
        log.error("the database file %s was %s while the app was running (%s); every request is refused until a "
                  "restart. %s", self.path, how, detail, _WHAT_TO_DO[how].format(path=self.path))
        return how


_MESSAGES = {
    "deleted": "the database file was deleted while the app was running. Nothing more is accepted, so nothing more "
               "is lost; tell the maintainer: restarting the app restores the newest snapshot.",
    "replaced": "the database file was replaced while the app was running. Nothing more is accepted, so the two are "
                "not mixed; tell the maintainer (the server's log says what to do).",
}
# For the maintainer, in the server's log. A write-ahead log left beside a replaced file holds the replaced
# database's pages: SQLite would lay them over the new file when it next opens it.
_WHAT_TO_DO = {
    "deleted": "Restart the app: it restores the newest snapshot.",
    "replaced": "Stop the app, put the database you want at {path}, delete {path}-wal and {path}-shm if they are "
                "there (they belong to the file that was replaced), then start the app again.",
}
