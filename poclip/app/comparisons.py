"""Comparisons kept on the server: what one Predict showed, so that a vote stores exactly that.

A comparison record is made when the models answer and is looked up by its id when the person votes. The
browser holds only the id; the picture, the attack, the label set, which model was on which side and both
answers stay here, so a vote cannot be stored against predictions that were never on screen.

Records live in memory, bounded by a count, a byte budget and an age limit (least recently used first);
put, get and eviction are O(1) amortised, independent of how many comparisons were ever made.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

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

    model: str  # "base" or "aligned"
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
        seen: the picture with the text, exactly what both models saw.
        source: ``upload``, ``synthetic`` or ``example``.
        shared: an upload's owner agreed that it may be stored and shown to other annotators.
    """

    id: str
    picture: Image.Image
    seen: Image.Image
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

    @property
    def left(self) -> Answer:
        return self.base if self.shown_left == "base" else self.aligned

    @property
    def right(self) -> Answer:
        return self.aligned if self.shown_left == "base" else self.base

    @property
    def n_bytes(self) -> int:
        """Memory the record holds, approximately (both pictures, 3 bytes a pixel)."""
        return 3 * (self.picture.width * self.picture.height + self.seen.width * self.seen.height)


def new_id() -> str:
    return secrets.token_urlsafe(12)


class ComparisonStore:
    """A bounded, thread-safe map id -> :class:`Comparison` (least recently used evicted first).

    Args:
        max_records: at most this many records.
        max_bytes: at most this much picture memory in all (a 1024 px upload is about 6 MB with its
            attacked copy); the oldest records go first when a new one would not fit.
        ttl_s: a record older than this is gone (the person must predict again).
        clock: seconds, monotonic; tests pass their own.
    """

    def __init__(self, max_records: int = 512, max_bytes: int = 512 * 2**20, ttl_s: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_records, self.max_bytes, self.ttl_s, self._clock = max_records, max_bytes, ttl_s, clock
        self._records: OrderedDict[str, Comparison] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._records)

    @property
    def n_bytes(self) -> int:
        return self._bytes

    def now(self) -> float:
        return self._clock()

    def put(self, record: Comparison) -> Comparison:
        """Keep ``record`` (its ``created`` stamped now); evicts expired, then least recently used records."""
        from dataclasses import replace

        record = replace(record, created=self._clock())
        with self._lock:
            self._records[record.id] = record
            self._bytes += record.n_bytes
            self._evict(record.created)
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
            return record

    def _drop(self, key: str) -> None:
        self._bytes -= self._records.pop(key).n_bytes

    def _evict(self, now: float) -> None:
        # Oldest first in the OrderedDict (gets move records to the end), so each loop stops at the first
        # record that may stay: O(number evicted).
        while self._records:
            key, oldest = next(iter(self._records.items()))
            too_old = now - oldest.created > self.ttl_s
            too_many = len(self._records) > self.max_records or self._bytes > self.max_bytes
            if not (too_old or too_many) or len(self._records) == 1 and not too_old:
                break
            self._drop(key)
