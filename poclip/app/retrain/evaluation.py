"""Step 3 of a retrain: the gate's held-out pictures and the metrics of a policy on them.

The held-out set is :data:`GATE_SEED`'s synthetic pictures (``POCLIP_GATE_N`` of them, clean and attacked),
embedded once per process through the on-disk cache; the base model's metrics on it are computed with it and
kept, since the backbone does not change. The same pictures carry the writing of each attack family of
``POCLIP_GATE_FAMILIES`` (the paper's style always), so the gate sees a crowd teaching one family (several
words, label patches...) and any family a candidate loses. The held-out font is never one of them: no choice
the project makes looks at it, so it stays a clean test of generalization.

A head's figures are a function of its tensors and of these pictures, so they are kept on disk beside the
pictures' cache (``gate-metrics/``), keyed by both: the live head, measured once (while idle, by
:func:`poclip.app.worker.prepare_retrain`, or as the candidate it was), is not measured again by every retrain.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from pathlib import Path

import torch

from poclip.engine.embed_cache import EmbeddingCache, backbone_dir
from poclip.engine.evaluate import EvalEmbeddings, embed_synth_families, evaluate_policy, typographic_accuracy
from poclip.engine.models import ClipEncoder
from poclip.engine.policy import Policy
from poclip.world.styles import check_families

log = logging.getLogger(__name__)

GATE_SEED = 7_000  # held-out synthetic pictures, a seed used by no training stream
# Part of the key of the figures kept on disk: raise it when what the gate measures changes, so none is read again.
METRICS_VERSION = 1


class GateEvaluation:
    """The gate's data and metrics for one backbone; safe to share between threads."""

    def __init__(self, encoder: ClipEncoder, n: int, cache_dir: Path | None,
                 families: tuple[str, ...] = ("paper",)) -> None:
        families = check_families(families, "POCLIP_GATE_FAMILIES")
        self.encoder, self.n, self.cache_dir = encoder, n, cache_dir
        self.family_names = ("paper", *(f for f in families if f != "paper"))
        self._data: dict[str, EvalEmbeddings] = {}
        self._base: dict | None = None
        self._lock = threading.Lock()

    def data(self) -> EvalEmbeddings:
        """The held-out pictures' embeddings with paper-style writing, computed on first use with every other
        family's (and the base model's metrics)."""
        return self.families()["paper"]

    def families(self) -> dict[str, EvalEmbeddings]:
        """The held-out pictures' embeddings for each of the gate's families (computed on first use)."""
        with self._lock:
            if not self._data:
                self._data = embed_synth_families(self.encoder, self.n, GATE_SEED, self.family_names,
                                                  EmbeddingCache(self.encoder, self.cache_dir))
                self._base = self._metrics(None)
            return self._data

    def _metrics(self, policy: Policy | None) -> dict:
        # The paper-style metrics, plus typographic accuracy per family and their mean. Every family writes on the
        # same pictures, so their clean pass is made once.
        metrics = evaluate_policy(policy, self._data["paper"], encoder=self.encoder)
        per_family = {family: metrics["typographic_accuracy"] if family == "paper" else
                      typographic_accuracy(policy, data, encoder=self.encoder)
                      for family, data in self._data.items()}
        return {**metrics, "family_accuracy": per_family,
                "family_mean": round(sum(per_family.values()) / len(per_family), 4)}

    def base_metrics(self) -> dict:
        """The base model's gate metrics (computed once)."""
        self.families()
        assert self._base is not None
        return self._base

    def evaluate(self, policy: Policy | None) -> dict:
        """Gate metrics of ``policy`` (``None`` is the base model): clean and paper-style typographic accuracy,
        attack success, KL drift and per class (:func:`~poclip.engine.evaluate.evaluate_policy`), with
        ``family_accuracy`` (family -> typographic accuracy) and ``family_mean``."""
        if policy is None:
            return self.base_metrics()
        self.families()
        if self.cache_dir is None:
            return self._metrics(policy)
        path = self._memo_path(policy)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:  # a damaged file costs a measurement, never a run
            log.warning("measuring again: unreadable gate figures %s: %s", path, exc)
        metrics = self._metrics(policy)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(metrics))
            os.replace(tmp, path)  # whole or absent: a reader never sees half of it
        except OSError as exc:  # a full or read-only disk costs the next run a measurement, not this run
            log.warning("could not keep the gate figures in %s: %s", path, exc)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        return metrics

    def _memo_path(self, policy: Policy) -> Path:
        """Where ``policy``'s figures are kept: named by a hash of its head's tensors and of what the gate measures
        (the pictures' number, seed and families, and the device its tail runs on)."""
        digest = hashlib.sha256(json.dumps([METRICS_VERSION, policy.head, self.n, GATE_SEED, self.family_names,
                                            self.encoder.device.type]).encode())
        for name, value in sorted(policy.head_state().items()):
            digest.update(f"{name}{tuple(value.shape)}{value.dtype}".encode())
            digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
        return backbone_dir(self.encoder, self.cache_dir) / "gate-metrics" / f"{digest.hexdigest()[:32]}.json"
