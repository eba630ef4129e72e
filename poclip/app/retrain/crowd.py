"""The held-out crowd: which items are never trained on, and how often a model agrees with people on them.

A keyed hash of the item (HMAC-SHA256 under the deployment secret, of the picture's sha256 and its attack) puts
about ``POCLIP_HELD_OUT_SHARE`` of the items in the held-out split. The key is the item's content, not its row id,
so every replica and every restart draws the same split from the same secret, and nobody without the secret can
tell which items those are. Gold items are never held out (the store sees to that: they score the annotators).

Crowd agreement of a model = k / n, where n counts the held-out items' consensus pairs and k those where
``log pi(chosen|x) > log pi(rejected|x)`` on the picture as it was judged (attack re-rendered), over the item's
label set; it is reported with a Wilson 95% interval (:func:`wilson`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from annotation_db import TrainingPair
from poclip.engine.embed_cache import EmbeddingCache, StoredPicture
from poclip.engine.models import ClipEncoder
from poclip.engine.policy import Policy
from poclip.world.attacks import TextAttack

Z95 = 1.959964  # the standard normal's 97.5% quantile: a two-sided 95% interval


class HeldOutSplit:
    """Which items are held out of training: a keyed hash of the item below ``share`` of the hash range.

    Args:
        secret: the deployment secret (:func:`poclip.app.identity.server_secret`).
        share: the held-out share, 0 to 0.5 (``POCLIP_HELD_OUT_SHARE``).
    """

    def __init__(self, secret: bytes, share: float) -> None:
        self._secret = secret
        self.share = share

    def is_held_out(self, image_sha256: str, attack: dict[str, Any] | None) -> bool:
        """Whether the item (picture ``image_sha256`` with ``attack``, None: clean) is held out.

        Held out when the first 8 bytes of HMAC-SHA256(secret, "held-out:" + sha256 + ":" + attack JSON with
        sorted keys), read as an integer, are below ``share * 2**64``.
        """
        item = f"held-out:{image_sha256}:{json.dumps(attack, sort_keys=True, separators=(',', ':'))}"
        digest = hmac.new(self._secret, item.encode(), hashlib.sha256).digest()
        return int.from_bytes(digest[:8], "big") < self.share * 2**64

    def __call__(self, pair: TrainingPair) -> bool:
        """The predicate :meth:`annotation_db.Repository.training_pairs` takes."""
        return self.is_held_out(pair.image_sha256, pair.attack)


@dataclass(frozen=True)
class Agreement:
    """Crowd agreement of one model: ``k`` of ``n`` held-out pairs ranked as people did, the share and its
    Wilson 95% interval ``[low, high]`` (all 0 when ``n`` is 0)."""

    k: int
    n: int
    share: float
    low: float
    high: float

    @classmethod
    def of(cls, k: int, n: int) -> Agreement:
        """The agreement of ``k`` successes in ``n`` pairs, rounded to 4 decimals."""
        low, high = wilson(k, n)
        return cls(k, n, round(k / n, 4) if n else 0.0, round(low, 4), round(high, 4))

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``k / n``.

    With p = k / n: centre = (p + z^2 / 2n) / (1 + z^2 / n),
    half-width = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2). Returns ``(0, 0)`` when ``n`` is 0.
    """
    if n <= 0:
        return 0.0, 0.0
    p = k / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@torch.no_grad()
def crowd_agreement(policy: Policy | None, encoder: ClipEncoder, pairs: list[TrainingPair],
                    cache_dir: Path) -> Agreement:
    """How often ``policy`` (None: the base model) ranks the crowd's chosen label above the rejected one.

    Args:
        policy: the model; its head's inputs come from its cache under ``cache_dir`` (embeddings or activations
            at the cut, the ones training filled), so a picture runs through the image tower once per cache.
        encoder: the backbone (scores the base model and the prompts).
        pairs: the held-out consensus pairs.
    Returns:
        k = #{pairs with log pi(chosen|x) > log pi(rejected|x)}, n = len(pairs), with the Wilson interval.
    """
    if not pairs:
        return Agreement.of(0, 0)
    cache = policy.make_cache(cache_dir) if policy is not None else EmbeddingCache(encoder, cache_dir)
    x = cache.embed([StoredPicture(p.image_sha256, Path(p.image_path)) for p in pairs],
                    [TextAttack.from_dict(p.attack) if p.attack else None for p in pairs])
    # Pairs grouped by label set: one prompt classifier per set.
    groups: dict[tuple[tuple[str, ...], str], list[int]] = defaultdict(list)
    for i, pair in enumerate(pairs):
        groups[(tuple(pair.labels), pair.prompt_template)].append(i)
    k = 0
    for (labels, template), rows in groups.items():
        if policy is None:
            log_probs = encoder.log_probs(x[rows], encoder.classifier(list(labels), (template,)))
        else:
            log_probs = policy.compare_inputs(x[rows], labels, template)[1]
        for row, i in enumerate(rows):
            chosen, rejected = labels.index(pairs[i].chosen), labels.index(pairs[i].rejected)
            k += int(log_probs[row, chosen] > log_probs[row, rejected])
    return Agreement.of(k, len(pairs))
