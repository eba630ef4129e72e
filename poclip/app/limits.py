"""Per-client limits: how fast one network address may predict, record labels and create annotators.

The per-annotator rate limit lives in the database (:mod:`annotation_db`), but handles and anonymous ids cost
nothing to rotate: ten rotating handles from one machine each stayed under it. The address a request comes
from is what such a client cannot rotate cheaply, so the app also limits, per address:

- judgments (votes and answers) per window, beside the per-annotator limit;
- new annotator rows per window (the first request of a handle or anonymous id nobody used before);
- predictions per window: each costs an image-tower pass and a kept comparison record.

The address is also the key of each client's share of the pools visitors share (comparison records in
:mod:`poclip.app.comparisons`, the decode budget in :mod:`poclip.world.decode_budget`).

The client's address is ``request.client.host``, or, behind ``proxy_hops`` trusted reverse proxies (a Space has
one), the address the outermost of them saw: the ``proxy_hops``-th ``X-Forwarded-For`` entry from the right,
since each proxy appends the address it received the request from and anything to the left of that is
whatever the client chose to send. IPv6 clients are keyed by their /64 network, which one subscriber holds
entirely. The Gradio session hash is not used: a client picks it itself and can change it on every call.

The state is in memory, per process (with several replicas each enforces its own share): one timestamp per
active address and limit (GCRA, the "generic cell rate algorithm"), kept in least-recently-used order and
dropped once it no longer constrains anything, and never more than ``max_clients`` per limit. Every check is
O(1) in the number of clients and independent of the database.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from poclip.errors import UserError

MAX_CLIENTS = 100_000  # per limit: about 10 MB of state at most


class ClientLimited(UserError):
    """One address sent more than its share; the message says what and for how long to wait."""


@dataclass(frozen=True)
class Rate:
    """``count`` events per ``window_s`` seconds (a burst of ``count``, then one every ``window_s / count``)."""

    count: int
    window_s: float

    @classmethod
    def parse(cls, text: str, name: str) -> Rate | None:
        """``"300/60"`` -> Rate(300, 60.0); ``"off"`` (or ``0``, ``none``, empty) -> None (no limit)."""
        if text.strip().lower() in ("off", "none", "0", ""):
            return None
        count, _, window = text.partition("/")
        try:
            rate = cls(int(count), float(window or 60))
        except ValueError:
            rate = None
        if rate is None or rate.count < 1 or not rate.window_s > 0:
            raise ValueError(f"{name} must look like 300/60 (count/seconds) or off, got {text!r}")
        return rate

    def __str__(self) -> str:
        return f"{self.count} per {self.window_s:g} s"


class RateLimiter:
    """GCRA per key: each key holds one "theoretical arrival time" (TAT); an event at ``now`` is allowed when
    ``TAT - now <= window - interval`` and then moves TAT on by ``interval = window / count``.

    Keys are kept in least-recently-used order. A key whose TAT has passed constrains nothing and is dropped;
    the oldest keys are checked on every call, so state is held only for keys active within the last window
    (and never for more than ``max_keys``, the oldest going first).
    """

    def __init__(self, rate: Rate, *, max_keys: int = MAX_CLIENTS, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self._interval = rate.window_s / rate.count
        self._burst = rate.window_s - self._interval
        self._tat: OrderedDict[str, float] = OrderedDict()
        self._max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._tat)

    def hit(self, key: str, *, count: bool = True) -> float:
        """Count one event for ``key``; 0.0 when allowed, else the seconds until one would be (not counted).
        With ``count=False`` only the answer is given (a look before costly work the event would start)."""
        with self._lock:
            now = self._clock()
            while self._tat and next(iter(self._tat.values())) <= now:  # amortised O(1)
                self._tat.popitem(last=False)
            tat = max(self._tat.get(key, now), now)
            if tat - now > self._burst:
                return tat - now - self._burst
            if not count:
                return 0.0
            self._tat[key] = tat + self._interval
            self._tat.move_to_end(key)
            if len(self._tat) > self._max_keys:
                self._tat.popitem(last=False)
            return 0.0

    def refund(self, key: str) -> None:
        """Give back one event counted for ``key`` (the request it admitted failed and made nothing)."""
        with self._lock:
            if key in self._tat:
                self._tat[key] -= self._interval


@dataclass(frozen=True)
class RequestOrigin:
    """Where a request came from, as the web server saw it: the peer address and ``X-Forwarded-For``."""

    host: str | None
    forwarded_for: str | None = None


_ORIGIN: ContextVar[RequestOrigin | None] = ContextVar("poclip_request_origin", default=None)


@contextmanager
def request_origin(origin: RequestOrigin | None) -> Iterator[None]:
    """Within the block, the service's writes are counted against ``origin`` (the UI's error boundary sets it
    for every event; direct calls from Python have none and are not limited per client)."""
    token = _ORIGIN.set(origin)
    try:
        yield
    finally:
        _ORIGIN.reset(token)


def current_origin() -> RequestOrigin | None:
    return _ORIGIN.get()


def client_address(origin: RequestOrigin, proxy_hops: int = 0) -> str | None:
    """The key of the client behind ``origin``: its IP address (IPv6: its /64 network), or None if unknown.

    With ``proxy_hops`` > 0 the ``proxy_hops``-th ``X-Forwarded-For`` entry from the right (the first entry
    when there are fewer); without the header, or with no trusted proxy, the peer address.
    """
    address = origin.host
    if proxy_hops > 0 and origin.forwarded_for:
        hops = [h.strip() for h in origin.forwarded_for.split(",") if h.strip()]
        if hops:
            address = hops[max(len(hops) - proxy_hops, 0)]
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return address[:64]  # not an IP (a test client, a socket path): still one client
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class ClientLimits:
    """The app's per-address limits on judgments, new annotators and predictions (any may be None: off)."""

    def __init__(self, judgments: Rate | None, new_annotators: Rate | None, proxy_hops: int = 0, *,
                 predictions: Rate | None = None, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = MAX_CLIENTS) -> None:
        if proxy_hops < 0:
            raise ValueError(f"proxy_hops must be 0 or more, got {proxy_hops}")
        self.proxy_hops = proxy_hops

        def limiter(rate: Rate | None) -> RateLimiter | None:
            return RateLimiter(rate, clock=clock, max_keys=max_clients) if rate else None

        self.judgments = limiter(judgments)
        self.new_annotators = limiter(new_annotators)
        self.predictions = limiter(predictions)

    def client(self, origin: RequestOrigin | None) -> str | None:
        """The key of the client behind ``origin`` (:func:`client_address`); None outside a request."""
        return client_address(origin, self.proxy_hops) if origin is not None else None

    def admit_judgment(self, origin: RequestOrigin | None) -> None:
        """Count one judgment from ``origin``; ClientLimited when its address is over the limit."""
        self._admit(self.judgments, origin, "labels")

    def refund_new_annotator(self, origin: RequestOrigin | None) -> None:
        """Give back a new annotator counted for ``origin`` whose request failed before creating it."""
        key = None if origin is None else client_address(origin, self.proxy_hops)
        if self.new_annotators is not None and key is not None:
            self.new_annotators.refund(key)

    def admit_new_annotator(self, origin: RequestOrigin | None) -> None:
        """Count one new annotator (handle or anonymous id) from ``origin``; ClientLimited when over."""
        self._admit(self.new_annotators, origin, "new annotator names or anonymous ids")

    def admit_prediction(self, origin: RequestOrigin | None, *, count: bool = True) -> None:
        """Count one prediction from ``origin`` (``count=False``: only check); ClientLimited when over."""
        self._admit(self.predictions, origin, "predictions", count=count)

    def _admit(self, limiter: RateLimiter | None, origin: RequestOrigin | None, what: str,
               count: bool = True) -> None:
        if limiter is None or (key := self.client(origin)) is None:
            return
        wait = limiter.hit(key, count=count)
        if wait > 0:
            raise ClientLimited(f"Too many {what} from your network address (at most {limiter.rate}); "
                                f"try again in {max(1, round(wait))} s.")
