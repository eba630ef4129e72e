"""The picture the page shows back: encoded once, small, and written so concurrent requests cannot clash.

The models see the full picture; the page shows it at most :data:`DISPLAY_SIDE` pixels wide (twice the
320 px display height, for sharp screens), as JPEG. Handing Gradio a PIL image instead would make it encode
WebP at full size on every request (tens of milliseconds at 1024 px) and write it to its cache by truncating
and rewriting the file in place: two visitors who send the same example get the same bytes, the same cache
path, and one of them can download the file while the other is rewriting it ("peer closed connection
without sending complete message body"). Here the file is content-addressed and written under a temporary
name, then renamed; an identical picture reuses the finished file. Gradio's own copy of a file path
(``save_file_to_cache``) is atomic in the same way.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path

from PIL import Image

DISPLAY_SIDE = 640
JPEG_QUALITY = 88
KEEP_S = 3600.0  # files older than this are removed (the page fetches them within seconds)
SWEEP_EVERY_S = 600.0

_sweep_lock = threading.Lock()
_last_sweep = [0.0]


def display_dir() -> Path:
    path = Path(tempfile.gettempdir()) / "poclip-display"
    path.mkdir(parents=True, exist_ok=True)
    return path


def encode_for_display(picture: Image.Image, max_side: int = DISPLAY_SIDE) -> bytes:
    """JPEG bytes of ``picture`` scaled down (never up) to at most ``max_side`` pixels on its longer side."""
    shown = picture.convert("RGB")
    if max(shown.size) > max_side:
        shown = shown.copy()
        shown.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    shown.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def display_file(picture: Image.Image, max_side: int = DISPLAY_SIDE, folder: Path | None = None) -> str:
    """Write ``picture`` for display (see the module docstring) and return the file's path."""
    data = encode_for_display(picture, max_side)
    folder = folder or display_dir()
    path = folder / f"{hashlib.sha256(data).hexdigest()[:32]}.jpg"
    if not path.exists():
        tmp = folder / f".{path.name}.{uuid.uuid4().hex}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, path)
    else:
        os.utime(path)  # in use again: keep it out of the sweep
    _maybe_sweep(folder)
    return str(path)


def _maybe_sweep(folder: Path) -> None:
    # At most every SWEEP_EVERY_S, by one thread: O(files written in the last hour), not per request.
    now = time.time()
    if now - _last_sweep[0] < SWEEP_EVERY_S or not _sweep_lock.acquire(blocking=False):
        return
    try:
        _last_sweep[0] = now
        for old in folder.iterdir():
            try:
                if now - old.stat().st_mtime > KEEP_S:
                    old.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
    finally:
        _sweep_lock.release()
