"""Files in the data dir that no row names: what a crash between writing a file and its row leaves behind.

Images and heads are written (temporary name, fsync, rename) *before* the row that names them, so a crash
can leave a file without a row, never a row without its file. Such orphans are harmless (an image is
content-addressed and is simply reused when the same picture comes again); :func:`sweep_orphan_files`
removes the ones old enough that no writer can still be about to insert their row.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from sqlalchemy import select

from annotation_db.models import Image, ModelVersion
from annotation_db.store import StoreBase

log = logging.getLogger(__name__)

DEFAULT_MIN_AGE_S = 3600.0  # far longer than any write takes, so a replica mid-write is never swept


def orphan_files(repo: StoreBase, min_age_s: float = DEFAULT_MIN_AGE_S, now: float | None = None) -> list[Path]:
    """Image and head files (and leftover temporary files) under the data dir that no row names.

    Only files last modified at least ``min_age_s`` seconds ago are listed. A maintenance pass, not a request:
    it reads every image path and head path once, O(files + rows).
    """
    now = time.time() if now is None else now
    root = repo.data_dir
    with repo.db.reading() as s:
        named = {(root / p).resolve() for p in s.scalars(select(Image.path))}
        named |= {(root / p).resolve() for p in s.scalars(select(ModelVersion.head_path))}
    candidates = [*(root / "images").glob("*/*"), *(root / "heads").glob("*")]
    out = []
    for path in candidates:
        try:
            if not path.is_file() or now - path.stat().st_mtime < min_age_s:
                continue
        except FileNotFoundError:
            continue
        if path.resolve() not in named:
            out.append(path)
    return sorted(out)


def sweep_orphan_files(repo: StoreBase, min_age_s: float = DEFAULT_MIN_AGE_S, now: float | None = None
                       ) -> list[Path]:
    """Delete :func:`orphan_files`; returns what was deleted."""
    removed = []
    for path in orphan_files(repo, min_age_s, now):
        path.unlink(missing_ok=True)
        removed.append(path)
    if removed:
        log.info("removed %d file(s) that no row names (left by an interrupted write)", len(removed))
    return removed
