"""How many decoded pixels this process holds at once, across all requests, and how much of that one client may.

Each upload is checked alone (at most :data:`poclip.world.images.MAX_PIXELS`), but a small file can hold a big
picture: eight concurrent 50 KB PNGs of 6320x6320 pixels would decode to about 2.5 GB together. Every full
decode therefore reserves its pixel count (read from the header, before decoding) from one process-wide
:class:`DecodeBudget` and returns it when the normalised picture (at most 1024 px a side) is ready. A request
that does not fit waits up to ``wait_s`` for others to finish, then is refused with :class:`ServerBusy`.

The budget is shared by visitors, so one client (a network address) may hold at most ``client_share`` of it,
counting its decodes in progress and its requests waiting: past that, its next upload is refused at once with
:class:`ClientBusy` (it waits for nothing, so a flood of them holds no request slot either). A client holding
nothing may always open one picture. Requests that wait are served lightest client first (the one with the fewest
pixels decoding), then in arrival order: someone opening their first picture goes before a client that already
has one open. Requests that name no client (calls from Python itself) have no share limit.

Cost: a decode peaks at about 4.5 bytes per reserved pixel (measured 182 MB for one 40-megapixel PNG), as Pillow
keeps an RGB pixel in 4 bytes and normalising downscales before converting, so no second full-size copy of an
upright RGB picture is made; a picture with transparency takes about 8 (resampling premultiplies it in a copy).
JPEGs are decoded at a reduced scale, and only that scale is reserved. The default budget of 100 megapixels thus
bounds decoding memory to about 0.45 GB (0.8 GB with transparency) whatever the number of concurrent requests, and
what was decoded is returned to the system once no decode is left (:mod:`poclip.world.heap`). Reserving and
releasing are O(1); choosing the next waiter is O(waiters), at most the app's concurrent requests.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from poclip.errors import UserError
from poclip.world import heap

DEFAULT_MEGAPIXELS = 100.0
DEFAULT_WAIT_S = 10.0
DEFAULT_CLIENT_SHARE = 0.5  # 50 of the 100 megapixels: any one picture (at most 40) and a few phone photos at once


class ServerBusy(UserError):
    """The server is decoding as many pictures as it may hold right now; the message asks to retry."""


class ClientBusy(ServerBusy):
    """This client already holds its share of the budget; the message asks it to wait for its own uploads."""


@dataclass(frozen=True)
class _Waiter:
    client: str | None
    need: int
    arrival: int


class DecodeBudget:
    """A counting semaphore of pixels with a per-client share: :meth:`reserve` blocks until ``pixels`` fit and
    it is the request's turn, or raises :class:`ServerBusy` (:class:`ClientBusy` when the client is over its
    share)."""

    def __init__(self, megapixels: float = DEFAULT_MEGAPIXELS, wait_s: float = DEFAULT_WAIT_S,
                 client_share: float = DEFAULT_CLIENT_SHARE) -> None:
        self._cond = threading.Condition()
        self._in_flight = 0
        self._decoding: Counter[str | None] = Counter()  # pixels decoding now, per client
        self._claimed: Counter[str | None] = Counter()  # pixels decoding or waiting, per client
        self._waiters: list[_Waiter] = []
        self._arrivals = itertools.count()
        self.peak = 0  # the most pixels reserved at once so far
        self.configure(megapixels, wait_s, client_share)

    def configure(self, megapixels: float, wait_s: float, client_share: float | None = None) -> None:
        """Set the capacity (megapixels decoded at once), how long a request may wait for room, and the share of
        the capacity one client may hold (unchanged when None)."""
        if not megapixels > 0:
            raise ValueError(f"the decode budget must be a positive number of megapixels, got {megapixels!r}")
        if not wait_s >= 0:
            raise ValueError(f"the decode wait must be zero or more seconds, got {wait_s!r}")
        if client_share is not None and not 0 < client_share <= 1:
            raise ValueError(f"a client's share of the decode budget must be in (0, 1], got {client_share!r}")
        with self._cond:
            self.capacity = int(megapixels * 1_000_000)
            self.wait_s = float(wait_s)
            if client_share is not None:
                self.client_share = float(client_share)
            self._cond.notify_all()

    @property
    def client_capacity(self) -> int:
        """The most pixels one client may hold decoding or waiting at once."""
        return int(self.capacity * self.client_share)

    @property
    def in_flight(self) -> int:
        """Pixels reserved right now (0 when nothing is being decoded)."""
        return self._in_flight

    @property
    def waiting(self) -> int:
        """Requests waiting for room or for their turn right now."""
        return len(self._waiters)

    def held_by(self, client: str | None) -> int:
        """Pixels ``client`` holds decoding right now."""
        return self._decoding[client]

    @contextmanager
    def reserve(self, pixels: int, client: str | None = None) -> Iterator[None]:
        """Hold ``pixels`` of the budget for the ``with`` block, for ``client`` (a network address; None: no
        share limit); returned on exit, exceptions included.

        A picture larger than the whole budget waits until nothing else is decoded, then runs alone; one larger
        than a client's share may run when that client holds nothing else.
        Raises:
            ClientBusy: ``client`` already holds (or waits for) its share; nothing is waited for.
            ServerBusy: no room, or not this request's turn, within ``wait_s`` seconds.
        """
        with self._cond:
            need = min(max(int(pixels), 1), self.capacity)
            claimed = self._claimed[client]
            if client is not None and claimed and claimed + need > self.client_capacity:
                raise ClientBusy(
                    f"Your network address is already opening {claimed / 1e6:.0f} megapixels of pictures (at most "
                    f"{self.client_capacity / 1e6:.0f} at once per address, so that other visitors' uploads are not "
                    "held up); wait until they are open, then try again.")
            me = _Waiter(client, need, next(self._arrivals))
            self._waiters.append(me)
            self._claimed[client] += need
            try:
                if not self._cond.wait_for(lambda: self._turn(me), timeout=self.wait_s):
                    raise ServerBusy(
                        f"The server is busy opening other large pictures (at most {self.capacity / 1e6:.0f} "
                        f"megapixels at once); try again in a few seconds, or upload a smaller picture.")
            except BaseException:
                self._claimed[client] -= need
                self._forget(client)
                raise
            finally:
                self._waiters.remove(me)
                self._cond.notify_all()  # the next waiter may be first now
            self._in_flight += need
            self._decoding[client] += need
            self.peak = max(self.peak, self._in_flight)
        try:
            yield
        finally:
            with self._cond:
                self._in_flight -= need
                self._decoding[client] -= need
                self._claimed[client] -= need
                self._forget(client)
                self._cond.notify_all()
                idle = self._in_flight == 0
            if idle:  # the last decode of a burst: its freed buffers go back to the system
                heap.give_back()

    def _turn(self, me: _Waiter) -> bool:
        # Only the first waiter in line (lightest client now, then arrival) may start, and only when it fits:
        # a big picture is not overtaken for ever by small ones.
        first = min(self._waiters, key=lambda w: (self._decoding[w.client], w.arrival))
        return first is me and self._in_flight + me.need <= self.capacity

    def _forget(self, client: str | None) -> None:
        # Hold state only for clients with something in flight: O(active clients).
        if not self._claimed[client]:
            del self._claimed[client]
        if not self._decoding[client]:
            del self._decoding[client]


# The process's budget: every open_image() reserves from it; the app sets its size from Settings at start.
DECODE_BUDGET = DecodeBudget()
heap.map_large_blocks()  # decoded pictures' blocks are returned to the system when freed (see poclip.world.heap)
