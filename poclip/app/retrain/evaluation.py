"""Step 3 of a retrain: the gate's held-out pictures and the metrics of a policy on them.

The held-out set is :data:`GATE_SEED`'s synthetic pictures (``POCLIP_GATE_N`` of them, clean and attacked),
embedded once per process through the on-disk cache; the base model's metrics on it are computed with it and
kept, since the backbone does not change.
"""

from __future__ import annotations

import threading
from pathlib import Path

from poclip.engine.embed_cache import EmbeddingCache
from poclip.engine.evaluate import EvalEmbeddings, embed_synth_eval, evaluate_policy
from poclip.engine.models import ClipEncoder
from poclip.engine.policy import Policy

GATE_SEED = 7_000  # held-out synthetic pictures, a seed used by no training stream


class GateEvaluation:
    """The gate's data and metrics for one backbone; safe to share between threads."""

    def __init__(self, encoder: ClipEncoder, n: int, cache_dir: Path) -> None:
        self.encoder, self.n, self.cache_dir = encoder, n, cache_dir
        self._data: EvalEmbeddings | None = None
        self._base: dict | None = None
        self._lock = threading.Lock()

    def data(self) -> EvalEmbeddings:
        """The held-out pictures' embeddings, computed on first use (with the base model's metrics)."""
        with self._lock:
            if self._data is None:
                cache = EmbeddingCache(self.encoder, self.cache_dir)
                self._data = embed_synth_eval(self.encoder, self.n, GATE_SEED, cache)
                self._base = evaluate_policy(None, self._data, encoder=self.encoder)
            return self._data

    def base_metrics(self) -> dict:
        """The base model's gate metrics (computed once)."""
        self.data()
        assert self._base is not None
        return self._base

    def evaluate(self, policy: Policy | None) -> dict:
        """Gate metrics (clean / typographic accuracy, attack success, KL drift, per class) of ``policy``;
        ``None`` is the base model."""
        if policy is None:
            return self.base_metrics()
        return evaluate_policy(policy, self.data(), encoder=self.encoder)
