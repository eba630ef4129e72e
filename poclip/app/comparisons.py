"""Comparisons kept on the server: what one Predict showed, so that a vote stores exactly that.

A comparison record is made when the models answer and is looked up by its id when the person votes. The
browser holds only the id; the picture, the attack, the label set, which model was on which side and both
answers stay here, so a vote cannot be stored against predictions that were never on screen.

Records live in memory, bounded by a count, a byte budget and an age limit. The pool is shared by every visitor,
so each record is kept under the client (network address) whose Predict made it, and one client may hold at most
``client_share`` of the pool (its count and its bytes): past that its own least recently used records go. When
the pool is full, the requesting client's own least recently used records go first, and only when it holds no
other the heaviest client's. A flood of predictions from one address therefore never evicts another visitor's
comparison. put and get are O(1) amortised, independent of how many comparisons were ever made; when a client
under its share meets a full pool, finding the heaviest client is O(clients holding records), at most
``max_records``.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from PIL import Image

from poclip.errors import UserError
from poclip.world.attacks import TextAttack

SIDES = ("base", "aligned")
SOURCES = ("upload", "synthetic", "example")
EXPIRED_MESSAGE = "This comparison has expired (or the server restarted): press Predict again, then vote."


class ComparisonExpired(UserError):
    """The id names no comparison this server still holds; the person should predict again."""


@dataclass(frozen=True)
class Answer:
    """One model's answer on one picture."""

    model: str  # "base", "aligned" or a peer defense's name
    probs: dict[str, float]  # label -> probability, all labels

    @property
    def label(self) -> str:
        return max(self.probs, key=self.probs.get)

    def top(self, k: int = 5) -> dict[str, float]:
        return dict(sorted(self.probs.items(), key=lambda kv: -kv[1])[:k])


@dataclass(frozen=True)
class Comparison:
    """One comparison as shown: the picture (normalised, before the text), the text written on it, the label
    set, both answers, which model was on the left, and the aligned head and strength that answered.

    Attributes:
        id: the key a vote names (random, unguessable).
        picture: the normalised picture without the text; this is what a vote stores.
        seen: the picture with the text, exactly what both models saw (None in the record kept for the vote).
        source: ``upload``, ``synthetic`` or ``example``.
        shared: an upload's owner agreed that it may be stored and shown to other annotators.
        peers: the answers of the peer defenses shown (none when base and aligned are compared).
        shown_left, shown_right: the models on each side (``base``, ``aligned`` or a peer's name).
        blind: arena mode: the models were not named until the vote.
    """

    id: str
    picture: Image.Image
    seen: Image.Image | None
    attack: TextAttack | None
    labels: tuple[str, ...]
    template: str
    base: Answer
    aligned: Answer
    shown_left: str
    version: str
    t: float
    source: str = "upload"
    shared: bool = False
    created: float = 0.0
    peers: tuple[Answer, ...] = ()
    shown_right: str = ""
    blind: bool = False

    @property
    def right_model(self) -> str:
        """The model shown on the right: ``shown_right``, or (when empty) the one of base and aligned not left."""
        return self.shown_right or ("aligned" if self.shown_left == "base" else "base")

    def answer(self, model: str) -> Answer:
        """What ``model`` (base, aligned or a peer this comparison ran) answered."""
        for answer in (self.base, self.aligned, *self.peers):
            if answer.model == model:
                return answer
        raise KeyError(model)

    @property
    def left(self) -> Answer:
        return self.answer(self.shown_left)

    @property
    def right(self) -> Answer:
        return self.answer(self.right_model)

    @property
    def n_bytes(self) -> int:
        """Memory the record holds, approximately (its pictures; Pillow keeps an RGB pixel in 4 bytes)."""
        seen = 0 if self.seen is None else self.seen.width * self.seen.height
        return 4 * (self.picture.width * self.picture.height + seen)


def new_id() -> str:
    return secrets.token_urlsafe(12)


@dataclass
class _Holding:
    """One client's records in the pool: ids least recently used first, and their bytes."""

    ids: OrderedDict[str, None] = field(default_factory=OrderedDict)
    n_bytes: int = 0


class ComparisonStore:
    """A bounded, thread-safe map id -> :class:`Comparison`, shared by clients (see the module's docstring).

    Args:
        max_records: at most this many records.
        max_bytes: at most this much picture memory in all (a 1024 px upload is about 8 MB with its
            attacked copy).
        ttl_s: a record older than this is gone (the person must predict again).
        client_share: the share of ``max_records`` and of ``max_bytes`` one client may hold (records put with no
            client, by calls from Python itself, have no share limit).
        clock: seconds, monotonic; tests pass their own.
    """

    def __init__(self, max_records: int = 512, max_bytes: int = 512 * 2**20, ttl_s: float = 3600.0,
                 client_share: float = 0.125, clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < client_share <= 1:
            raise ValueError(f"a client's share of the comparison records must be in (0, 1], got {client_share!r}")
        self.max_records, self.max_bytes, self.ttl_s, self._clock = max_records, max_bytes, ttl_s, clock
        self.client_records = max(1, int(max_records * client_share))
        self.client_bytes = int(max_bytes * client_share)
        self._records: OrderedDict[str, Comparison] = OrderedDict()  # least recently used first
        self._owner: dict[str, str | None] = {}  # id -> the client that made it
        self._clients: dict[str | None, _Holding] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._records)

    @property
    def n_bytes(self) -> int:
        return self._bytes

    def now(self) -> float:
        return self._clock()

    def held_by(self, client: str | None) -> int:
        """How many records ``client`` holds."""
        holding = self._clients.get(client)
        return len(holding.ids) if holding else 0

    def put(self, record: Comparison, client: str | None = None) -> Comparison:
        """Keep ``record`` (its ``created`` stamped now) for ``client``; evicts expired records, then the client's
        own beyond its share, then (pool full) the client's own or the heaviest client's, least recently used
        first."""
        record = replace(record, created=self._clock())
        with self._lock:
            self._records[record.id] = record
            self._owner[record.id] = client
            holding = self._clients.setdefault(client, _Holding())
            holding.ids[record.id] = None
            holding.n_bytes += record.n_bytes
            self._bytes += record.n_bytes
            self._evict(record.created, client)
        return record

    def get(self, comparison_id: str | None) -> Comparison:
        """The record with this id; :class:`ComparisonExpired` when it is unknown, evicted or too old."""
        if not comparison_id or not isinstance(comparison_id, str):
            raise ComparisonExpired("There is no comparison to vote on: press Predict first.")
        with self._lock:
            record = self._records.get(comparison_id)
            if record is None:
                raise ComparisonExpired(EXPIRED_MESSAGE)
            if self._clock() - record.created > self.ttl_s:
                self._drop(comparison_id)
                raise ComparisonExpired(EXPIRED_MESSAGE)
            self._records.move_to_end(comparison_id)
            self._clients[self._owner[comparison_id]].ids.move_to_end(comparison_id)
            return record

    def _drop(self, key: str) -> None:
        record = self._records.pop(key)
        client = self._owner.pop(key)
        holding = self._clients[client]
        del holding.ids[key]
        holding.n_bytes -= record.n_bytes
        if not holding.ids:
            del self._clients[client]
        self._bytes -= record.n_bytes

    def _drop_oldest_of(self, client: str | None) -> None:
        self._drop(next(iter(self._clients[client].ids)))

    def _evict(self, now: float, client: str | None) -> None:
        # Expired records, oldest first in the OrderedDict (gets move records to the end), so the loop stops at
        # the first record that may stay: O(number evicted).
        while self._records:
            key, oldest = next(iter(self._records.items()))
            if now - oldest.created <= self.ttl_s:
                break
            self._drop(key)
        mine = self._clients[client]
        if client is not None:  # the client's share: its own least recently used go
            while len(mine.ids) > 1 and (len(mine.ids) > self.client_records or mine.n_bytes > self.client_bytes):
                self._drop_oldest_of(client)
        while (len(self._records) > self.max_records or self._bytes > self.max_bytes) and len(self._records) > 1:
            if len(mine.ids) > 1:
                self._drop_oldest_of(client)
            else:  # the newcomer holds only this record: the heaviest client gives one up
                heaviest = max((c for c in self._clients if c != client),
                               key=lambda c: (self._clients[c].n_bytes, len(self._clients[c].ids)))
                self._drop_oldest_of(heaviest)
