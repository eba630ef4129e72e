"""How many decoded pixels this process holds at once, across all requests.

Each upload is checked alone (at most :data:`poclip.world.images.MAX_PIXELS`), but a small file can hold a big
picture: eight concurrent 50 KB PNGs of 6320x6320 pixels would decode to about 2.5 GB together. Every full
decode therefore reserves its pixel count (read from the header, before decoding) from one process-wide
:class:`DecodeBudget` and returns it when the normalised picture (at most 1024 px a side) is ready. A request
that does not fit waits up to ``wait_s`` for others to finish, then is refused with :class:`ServerBusy`.

Cost: a decode peaks at about 8 bytes per pixel (the decoded buffer plus the RGB copy :func:`normalize_image`
makes; measured 320 MB for one 40-megapixel PNG), so the default budget of 100 megapixels bounds decoding
memory to about 0.8 GB whatever the number of concurrent requests. Reserving and releasing are O(1).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from poclip.errors import UserError

DEFAULT_MEGAPIXELS = 100.0
DEFAULT_WAIT_S = 10.0


class ServerBusy(UserError):
    """The server is decoding as many pictures as it may hold right now; the message asks to retry."""


class DecodeBudget:
    """A counting semaphore of pixels: :meth:`reserve` blocks until ``pixels`` fit, or raises ServerBusy."""

    def __init__(self, megapixels: float = DEFAULT_MEGAPIXELS, wait_s: float = DEFAULT_WAIT_S) -> None:
        self._cond = threading.Condition()
        self._in_flight = 0
        self.peak = 0  # the most pixels reserved at once so far
        self.configure(megapixels, wait_s)

    def configure(self, megapixels: float, wait_s: float) -> None:
        """Set the capacity (megapixels decoded at once) and how long a request may wait for room."""
        if not megapixels > 0:
            raise ValueError(f"the decode budget must be a positive number of megapixels, got {megapixels!r}")
        if not wait_s >= 0:
            raise ValueError(f"the decode wait must be zero or more seconds, got {wait_s!r}")
        with self._cond:
            self.capacity = int(megapixels * 1_000_000)
            self.wait_s = float(wait_s)
            self._cond.notify_all()

    @property
    def in_flight(self) -> int:
        """Pixels reserved right now (0 when nothing is being decoded)."""
        return self._in_flight

    @contextmanager
    def reserve(self, pixels: int) -> Iterator[None]:
        """Hold ``pixels`` of the budget for the ``with`` block; returned on exit, exceptions included.

        A picture larger than the whole budget waits until nothing else is decoded, then runs alone.
        Raises:
            ServerBusy: no room within ``wait_s`` seconds.
        """
        with self._cond:
            need = min(max(int(pixels), 1), self.capacity)
            if not self._cond.wait_for(lambda: self._in_flight + need <= self.capacity, timeout=self.wait_s):
                raise ServerBusy(
                    f"The server is busy opening other large pictures (at most {self.capacity / 1e6:.0f} "
                    f"megapixels at once); try again in a few seconds, or upload a smaller picture.")
            self._in_flight += need
            self.peak = max(self.peak, self._in_flight)
        try:
            yield
        finally:
            with self._cond:
                self._in_flight -= need
                self._cond.notify_all()


# The process's budget: every open_image() reserves from it; the app sets its size from Settings at start.
DECODE_BUDGET = DecodeBudget()
