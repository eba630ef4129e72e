"""Giving freed memory back to the operating system after large pictures were decoded.

glibc's allocator keeps what a program frees for its next allocations instead of returning it, serves each thread
from its own arena (up to eight per core), and after freeing a large mapped block it raises the size below which
blocks come from those arenas (up to 32 MB). A decoded 40-megapixel picture (160 MB, in Pillow's 16 MB blocks) is
freed as soon as it is downscaled, but after a burst of uploads decoded in many request threads at once, the freed
blocks stayed resident in the arenas: the process did not shrink back to its idle size (measured: 580 MB over idle
after 36 large PNGs in 32 threads, and still 325 MB after ``malloc_trim``; 3 MB with the fixed threshold below).

- :func:`map_large_blocks` fixes that size: every block of :data:`LARGE_BLOCK` or more is mapped on its own and
  unmapped when freed. A ViT-B-32 batch of 8 allocates nothing that large; a batch of 32 maps its MLP activations.
- :func:`give_back` returns the arenas' free pages (``malloc_trim(0)``, which also releases free pages inside an
  arena, not only at its top); the decode budget calls it whenever its last decode ends (about 0.2 ms when little
  is free), and a :class:`Burst` whenever the last of its work in flight ends (the app's predictions: resizing,
  writing the text and the model's pass on full-size pictures free their buffers in many request threads too).

Elsewhere (another C library, or none to load) both do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

LARGE_BLOCK = 8 * 2**20
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        return libc
    except (OSError, AttributeError):  # musl and others have no malloc_trim or mallopt
        return None


_LIBC = _glibc()


def map_large_blocks(min_bytes: int = LARGE_BLOCK) -> bool:
    """Map every allocation of ``min_bytes`` or more on its own, returned to the system when freed (for the
    whole process, from now on); True when the allocator took it."""
    return bool(_LIBC.mallopt(M_MMAP_THRESHOLD, min_bytes)) if _LIBC is not None else False


def give_back() -> bool:
    """Return the allocator's free memory to the operating system; True when some was returned."""
    return bool(_LIBC.malloc_trim(0)) if _LIBC is not None else False


class Burst:
    """Work that runs in many threads at once: when the last piece in flight ends, :func:`give_back`."""

    def __init__(self) -> None:
        self._in_flight = 0
        self._lock = threading.Lock()

    @contextmanager
    def running(self) -> Iterator[None]:
        with self._lock:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1
                last = self._in_flight == 0
            if last:
                give_back()
