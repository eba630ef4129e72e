"""One interface for every defense a user could pick to make a CLIP robust to written text.

A :class:`Defense` is built once per backbone (trained or mined: :meth:`Defense.fit`, timed as
``seconds_to_build``) and then scores pictures against any label set, returning ``log pi(y|x)`` ``[n, labels]``
like a policy (:meth:`Defense.log_probs`, timed as ``ms_per_picture``). A build is cached on disk as one
safetensors file per backbone and recipe::

    CACHE_DIR/<defense name>/<backbone fingerprint>-<recipe hash>.safetensors

holding the defense's tensors (:meth:`Defense.state`) and, as string metadata, its recipe, what the build
chose (:attr:`Defense.info`) and how long the build took, so a second build on the same backbone with the same
recipe is a load that gives identical log-probs.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save

from poclip.engine.embed_cache import backbone_fingerprint
from poclip.engine.models import ClipEncoder
from poclip.world.synth import DEFAULT_TEMPLATE

DEFENSE_FORMAT = "poclip-defense/1"
SCORE_BATCH = 128  # pictures per forward pass when scoring: bounds memory however many are asked for


class Defense(ABC):
    """A way to make ``encoder`` robust to written text, scored like a policy.

    Subclasses set :attr:`name`, keep what defines their build in :attr:`recipe` (a JSON-able dict), and
    implement :meth:`fit` (train or mine; may fill :attr:`info`), :meth:`state` / :meth:`load_state` (the
    tensors a build produced) and :meth:`_log_probs`. A training-free defense returns an empty state.
    """

    name: str = "defense"

    def __init__(self, encoder: ClipEncoder, **recipe: object) -> None:
        self.encoder = encoder
        self.recipe: dict[str, object] = dict(recipe)
        self.info: dict[str, object] = {}
        self.seconds_to_build: float | None = None
        self.loaded = False
        self.built = False
        self._score_seconds = 0.0
        self._scored = 0

    # ----- what a subclass provides -----------------------------------------------------------------------

    @abstractmethod
    def fit(self) -> None:
        """Train or mine the defense on this backbone (may set :attr:`info`)."""

    def state(self) -> dict[str, torch.Tensor]:
        """The tensors a build produced (stored in the cache file)."""
        return {}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore a build from :meth:`state`'s tensors (and :attr:`info`, already loaded); a defense with no
        tensors has nothing to restore."""
        del tensors

    @abstractmethod
    def _log_probs(self, images: list[Image.Image], labels: Sequence[str], template: str) -> torch.Tensor:
        """``log pi(y|x)`` ``[len(images), len(labels)]`` for at most :data:`SCORE_BATCH` pictures."""

    # ----- building and caching -----------------------------------------------------------------------------

    @property
    def recipe_hash(self) -> str:
        """A short hash of the defense's name and recipe: a changed recipe never loads an old build."""
        text = json.dumps({"defense": self.name, **self.recipe}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def cache_path(self, cache_dir: str | Path) -> Path:
        return Path(cache_dir) / self.name / f"{backbone_fingerprint(self.encoder)}-{self.recipe_hash}.safetensors"

    def build(self, cache_dir: str | Path | None = None) -> Defense:
        """Load this defense's build from ``cache_dir`` if there is one, else :meth:`fit` it (timed) and store it.

        Returns ``self``. ``seconds_to_build`` is the time the build took when it was made (a load keeps the
        stored figure; :attr:`loaded` says which happened). ``cache_dir=None`` always fits and stores nothing.
        """
        path = self.cache_path(cache_dir) if cache_dir is not None else None
        if path is not None and path.is_file():
            self._load(path)
        else:
            started = time.perf_counter()
            self.fit()
            self.seconds_to_build = round(time.perf_counter() - started, 2)
            if path is not None:
                self._save(path)
        self.built = True
        return self

    def _save(self, path: Path) -> None:
        meta = {"format": DEFENSE_FORMAT, "defense": self.name, "backbone": self.encoder.model_spec.name,
                "backbone_fingerprint": backbone_fingerprint(self.encoder),
                "recipe": json.dumps(self.recipe, sort_keys=True, default=str),
                "info": json.dumps(self.info, sort_keys=True), "seconds_to_build": str(self.seconds_to_build)}
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state().items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:  # temp file, then rename: a crash never leaves a half-written build that a later run would load
            tmp.write_bytes(save(tensors, metadata=meta))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def _load(self, path: Path) -> None:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a mapping
        self.info = json.loads(meta.get("info", "{}"))
        seconds = meta.get("seconds_to_build", "None")
        self.seconds_to_build = None if seconds == "None" else float(seconds)
        self.load_state(tensors)
        self.loaded = True

    # ----- scoring --------------------------------------------------------------------------------------------

    @torch.no_grad()
    def log_probs(self, images: Sequence[Image.Image], labels: Sequence[str],
                  template: str = DEFAULT_TEMPLATE) -> torch.Tensor:
        """``log pi(y|x)`` over ``labels`` for each picture, ``[len(images), len(labels)]`` (float32, CPU).

        Pictures go through in batches of :data:`SCORE_BATCH`; the time spent is added to :attr:`ms_per_picture`.
        """
        if not self.built:
            raise RuntimeError(f"build the {self.name} defense before scoring with it")
        images, labels = list(images), list(labels)
        started = time.perf_counter()
        out = torch.cat([self._log_probs(images[i : i + SCORE_BATCH], labels, template).float().cpu()
                         for i in range(0, len(images), SCORE_BATCH)])
        self._score_seconds += time.perf_counter() - started
        self._scored += len(images)
        return out

    def predict(self, images: Sequence[Image.Image], labels: Sequence[str], template: str = DEFAULT_TEMPLATE
                ) -> list[str]:
        """The label each picture is read as."""
        labels = list(labels)
        return [labels[int(k)] for k in self.log_probs(images, labels, template).argmax(1)]

    @property
    def ms_per_picture(self) -> float | None:
        """Mean milliseconds :meth:`log_probs` spent per picture so far (``None`` before any)."""
        return round(1000 * self._score_seconds / self._scored, 3) if self._scored else None


def base_log_probs(encoder: ClipEncoder, images: list[Image.Image], labels: Sequence[str],
                   templates: Sequence[str]) -> torch.Tensor:
    """The bare backbone's ``log pi(y|x)`` with the prompt ensemble ``templates``."""
    return encoder.log_probs(encoder.encode_images(images), encoder.classifier(list(labels), tuple(templates)))


class BaseModel(Defense):
    """No defense: the backbone as it is, with one prompt template (the table's reference column)."""

    name = "base"

    def fit(self) -> None:
        pass

    def _log_probs(self, images, labels, template):
        return base_log_probs(self.encoder, images, labels, (template,))
