"""The aligned model: a frozen CLIP backbone plus a trainable alignment head, read as a policy over labels.

    pi(y|x) = softmax_y( s * <f(x), g(txt(y))> )       (Afzali et al., ICLR 2025, arXiv 2411.08923)

The reference policy pi_ref is the base model (f = unit-norm image embedding, g = identity). Heads:

``linear`` (CPU-fast)
    A square W (d x d, identity at init) shared by both modalities: f(x) = W img(x), g(t) = W t, so
    logits are ``s * img^T W^T W txt``. Only W trains, on cached embeddings. Strength knob: with the SVD
    ``W = U S V^T``, ``W_t = U S^t V^T`` and ``W_t^T W_t = V S^(2t) V^T``: t = 0 is the base model (W_0 is
    taken as the identity, so exactly), t = 1 the trained head, t > 1 extrapolates, t < 0 reverses the
    learned emphasis.
``projection``
    The image tower's projection (ViT ``proj``, ResNet attention pool) trains; text features are unchanged.
``last_blocks:K``
    The image tower's last K residual blocks plus its projection train.

Tower heads train only the tail above their cut (:mod:`poclip.engine.tower`), on the frozen trunk's
activations, which are computed once per picture and cached; batch-norm statistics stay frozen. Their
strength knob interpolates weights, ``theta_t = theta_ref + t (theta - theta_ref)``, so again t = 0 is the
base model exactly and t < 0 moves away from the trained one.
"""

from __future__ import annotations

import copy
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save

from poclip.engine import tower
from poclip.engine.heads import HeadError, HeadSpec, check_head
from poclip.engine.models import ClipEncoder
from poclip.world.synth import DEFAULT_TEMPLATE

HEAD_FORMAT = "poclip-head/1"
_MIN_SINGULAR = 1e-6  # S^t with t < 0 needs S > 0; a collapsed direction is treated as tiny, not zero
STRENGTH_CACHE = 8  # strength copies a policy keeps (see Policy._strength_cached)


def strength_matrix(weight: torch.Tensor, t: float) -> torch.Tensor:
    """``W_t = U S^t V^T`` for the SVD ``W = U S V^T`` (computed in float64, returned in W's dtype).

    ``t = 0`` returns the identity: ``W_0 = U V^T`` is orthogonal, so its logits are the base model's, and the
    identity gives them without rounding.
    """
    if t == 1.0:
        return weight.detach().clone()
    if t == 0.0:
        return torch.eye(weight.shape[0], dtype=weight.dtype, device=weight.device)
    u, s, vh = torch.linalg.svd(weight.detach().double())
    return ((u * s.clamp(min=_MIN_SINGULAR).pow(t)) @ vh).to(weight.dtype)


def _copy_tail(visual: torch.nn.Module, blocks: int) -> torch.nn.Module:
    """A copy of an image tower whose tail (:func:`poclip.engine.tower.split`) has its own tensors and whose frozen
    trunk shares the original's parameters and buffers (they are never written)."""
    tail_tensors = {id(t) for part in tower.split(visual, blocks).trainable
                    for t in ((part,) if isinstance(part, torch.nn.Parameter) else (*part.parameters(),
                                                                                      *part.buffers()))}
    shared = {id(t): t for t in (*visual.parameters(), *visual.buffers()) if id(t) not in tail_tensors}
    return copy.deepcopy(visual, memo=shared)


class LinearHead(torch.nn.Module):
    """f(x) = W x on both modalities; W starts at the identity so the head starts as the base model."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.eye(dim))

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return emb @ self.weight.T


class Policy(torch.nn.Module):
    """A backbone (:class:`~poclip.engine.models.ClipEncoder`, frozen) plus an alignment head.

    A head maps *head inputs* ``x`` to image features: unit-norm embeddings for the linear head, the trunk's
    activations at the cut for tower heads (:meth:`inputs`, or cached by :meth:`make_cache`). Use
    :meth:`compare` for the app's base-and-aligned predictions and :meth:`with_strength` for the strength knob.
    The reference policy is ``with_strength(0)``, the base model.
    """

    def __init__(self, encoder: ClipEncoder, head: HeadSpec | str = "linear") -> None:
        super().__init__()
        self.encoder = encoder
        self.spec = check_head(encoder, head)
        self.linear: LinearHead | None = None
        self.visual: torch.nn.Module | None = None
        self.split: tower.TowerSplit | None = None
        if self.spec.is_linear:
            self.linear = LinearHead(encoder.embed_dim)
            return
        # A private copy of the tower's tail, so the base model (the reference) stays untouched; the frozen
        # trunk's tensors are shared with the backbone, not copied (a ViT-B/32 tower is 350 MB).
        self.visual = _copy_tail(encoder.model.visual, self.spec.blocks).to(encoder.device)
        self.visual.requires_grad_(False)
        self.split = tower.split(self.visual, self.spec.blocks)
        for part in self.split.trainable:
            part.requires_grad_(True)
        self.visual.eval()  # batch-norm statistics stay the base model's, in training too

    # ----- the policy -----------------------------------------------------------------------------------

    @property
    def head(self) -> str:
        """The head spec's canonical text (``last_blocks:2``), as checkpoints store it and messages name it."""
        return str(self.spec)

    @property
    def cut(self) -> str:
        """What the head's inputs are: ``embedding``, or the tower cut's name (a cache namespace)."""
        return "embedding" if self.split is None else self.split.cut

    @property
    def logit_scale(self) -> float:
        return self.encoder.logit_scale

    def make_cache(self, root: str | Path | None = None):
        """The cache of this head's inputs: an embedding cache, or an activation cache at the cut."""
        from poclip.engine.embed_cache import ActivationCache, EmbeddingCache

        if self.split is None:
            return EmbeddingCache(self.encoder, root)
        return ActivationCache(self.encoder, root, self.spec.blocks)

    @torch.no_grad()
    def inputs(self, images: list[Image.Image]) -> torch.Tensor:
        """Head inputs for pictures (no cache): embeddings, or the trunk's activations at the cut."""
        if self.split is None:
            return self.encoder.encode_images(images)
        return self.encoder.trunk_activations(self.encoder.pixels(images), self.spec.blocks)

    def image_features(self, x: torch.Tensor, training: bool = False) -> torch.Tensor:
        """Aligned unit-norm image features from head inputs ``x`` (see :meth:`inputs`); ``training`` lets a tower
        tail take its faster training path (:func:`poclip.engine.tower.tail`, equal up to rounding)."""
        if self.linear is not None:
            return self.linear(x)
        out = tower.tail(self.visual, x.to(self.encoder.device), self.spec.blocks, query_only=training)
        return F.normalize(out.float(), dim=-1).cpu()

    def text_features(self, text_emb: torch.Tensor) -> torch.Tensor:
        """Aligned text features: ``W txt`` for a linear head, ``txt`` unchanged for tower heads."""
        return self.linear(text_emb) if self.linear is not None else text_emb

    def logits(self, x: torch.Tensor, text_emb: torch.Tensor, training: bool = False) -> torch.Tensor:
        """``s * <f(x), g(txt)>``, shape ``[N, L]``."""
        return self.logit_scale * self.image_features(x, training) @ self.text_features(text_emb).T

    def trainable_module(self) -> torch.nn.Module:
        return self.linear if self.linear is not None else self.visual

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.trainable_module().parameters() if p.requires_grad]

    def head_state(self) -> dict[str, torch.Tensor]:
        """The tensors that define the head (what a checkpoint stores)."""
        if self.linear is not None:
            return {"W": self.linear.weight.detach().cpu().contiguous()}
        return {f"visual.{n}": p.detach().cpu().contiguous() for n, p in self.visual.named_parameters()
                if p.requires_grad}

    def load_head_state(self, tensors: dict[str, torch.Tensor]) -> None:
        expected = self.head_state()
        if set(tensors) != set(expected):
            raise HeadError(f"checkpoint tensors {sorted(tensors)[:4]}... do not match head {self.head!r}")
        for name, value in tensors.items():
            if value.shape != expected[name].shape:
                raise HeadError(f"{name} has shape {tuple(value.shape)}, the backbone needs "
                                f"{tuple(expected[name].shape)}: the head was trained on another backbone")
        with torch.no_grad():
            if self.linear is not None:
                self.linear.weight.copy_(tensors["W"])
            else:
                params = dict(self.visual.named_parameters())
                for name, value in tensors.items():
                    params[name.removeprefix("visual.")].copy_(value)

    # ----- the strength knob ------------------------------------------------------------------------------

    def with_strength(self, t: float) -> Policy:
        """A copy of this policy at strength ``t`` (linear: ``W_t = U S^t V^T``; tower: ``theta_ref + t (theta -
        theta_ref)``). ``t = 0`` is the base model exactly, for every head kind."""
        t = float(t)
        clone = Policy.__new__(Policy)
        torch.nn.Module.__init__(clone)
        clone.encoder, clone.spec = self.encoder, self.spec
        clone.linear, clone.visual, clone.split = None, None, None
        if self.linear is not None:
            clone.linear = LinearHead(self.linear.weight.shape[0])
            with torch.no_grad():
                clone.linear.weight.copy_(strength_matrix(self.linear.weight, t))
        else:
            clone.visual = _copy_tail(self.visual, self.spec.blocks)
            clone.split = tower.split(clone.visual, self.spec.blocks)
            base = dict(self.encoder.model.visual.named_parameters())
            with torch.no_grad():
                for name, p in clone.visual.named_parameters():
                    if p.requires_grad:
                        ref = base[name].detach().to(p.device)
                        p.copy_(ref if t == 0.0 else ref + t * (p - ref))
        return clone

    def _strength_cached(self, t: float) -> Policy:
        # A slider moves through a few values repeatedly; an SVD or a tower copy per request would dominate. The
        # most recently used STRENGTH_CACHE of them are kept: a tower head's copy is its tail (about 56 MB for two
        # ViT-B/32 blocks), so the bound is what keeps memory flat however many values visitors try. Concurrent
        # requests share the cache, hence the lock; a copy is made outside it.
        key = (float(t), sum(p._version for p in self.trainable_parameters()))
        cache: OrderedDict = self.__dict__.setdefault("_strength_cache", OrderedDict())
        lock: threading.Lock = self.__dict__.setdefault("_strength_lock", threading.Lock())
        with lock:
            if key in cache:
                cache.move_to_end(key)
                return cache[key]
        made = self.with_strength(t)
        with lock:
            cache[key] = made
            cache.move_to_end(key)
            while len(cache) > STRENGTH_CACHE:
                cache.popitem(last=False)
        return made

    def at_strength(self, t: float) -> Policy:
        """This policy at strength ``t`` (itself at 1, a cached copy otherwise)."""
        return self if float(t) == 1.0 else self._strength_cached(float(t))

    # ----- what the app calls -----------------------------------------------------------------------------

    @torch.no_grad()
    def log_probs_for(
        self, image_emb: torch.Tensor, labels: Sequence[str], template: str = DEFAULT_TEMPLATE, t: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Base and aligned ``log pi(y|x)`` over ``labels`` from one image embedding (linear heads).

        ``image_emb`` is the backbone's unit-norm embedding ``[d]`` or ``[N, d]``; returns two ``[N, L]``
        tensors (base, aligned at strength ``t``). The image tower is not run again.
        """
        if self.linear is None:
            raise HeadError(f"a {self.head} head changes the image tower; use compare(images, ...) instead")
        return self.compare_inputs(image_emb[None] if image_emb.ndim == 1 else image_emb, labels, template, t)

    @torch.no_grad()
    def compare(
        self, images: list[Image.Image], labels: Sequence[str], template: str = DEFAULT_TEMPLATE, t: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Base and aligned ``log pi(y|x)`` ``[N, L]`` for pictures, any head, one trunk pass.

        A tower head runs the trunk once and its tail twice (base weights and aligned weights).
        """
        if self.linear is not None:
            return self.log_probs_for(self.encoder.encode_images(images), labels, template, t)
        return self.compare_inputs(self.inputs(images), labels, template, t)

    @torch.no_grad()
    def compare_inputs(
        self, x: torch.Tensor, labels: Sequence[str], template: str = DEFAULT_TEMPLATE, t: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Base and aligned ``log pi(y|x)`` ``[N, L]`` from head inputs ``x`` (:meth:`inputs`, e.g. computed in a
        shared batch): a tower head runs its tail at base and at aligned weights."""
        text = self.encoder.classifier(list(labels), (template,))
        if self.linear is not None:
            return self.encoder.log_probs(x, text), torch.log_softmax(self.at_strength(t).logits(x, text), dim=-1)
        base = torch.log_softmax(self.at_strength(0.0).logits(x, text), dim=-1)
        return base, torch.log_softmax(self.at_strength(t).logits(x, text), dim=-1)

    def predict(
        self, images: list[Image.Image], labels: Sequence[str], template: str = DEFAULT_TEMPLATE, t: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Base and aligned class probabilities ``[N, L]`` for pictures."""
        base, aligned = self.compare(images, labels, template, t)
        return base.exp(), aligned.exp()


# ----- checkpoints -------------------------------------------------------------------------------------------


def save_head(policy: Policy, path: str | Path, metadata: dict[str, object] | None = None,
              dtype: torch.dtype | None = None) -> Path:
    """Write the head as safetensors with string metadata, atomically (temp file, then ``os.replace``).

    ``dtype`` (e.g. ``torch.float16``) stores the tensors in that type; loading casts them back.

    Metadata always holds the format, backbone spec and fingerprint, head type and creation time; values
    that are not strings are stored as JSON. A crash before the rename leaves any old file untouched.
    """
    from poclip.engine.embed_cache import backbone_fingerprint

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": HEAD_FORMAT,
        "backbone": policy.encoder.model_spec.name,
        "backbone_fingerprint": backbone_fingerprint(policy.encoder),
        "head": str(policy.spec),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for key, value in (metadata or {}).items():
        meta[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        state = policy.head_state()
        if dtype is not None:
            state = {k: v.to(dtype) for k, v in state.items()}
        # Serialised in memory and written with open(), so the file gets the usual permissions (safetensors'
        # save_file makes it readable by its owner only: a replica running as another user could not load it).
        data = save(state, metadata=meta)
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())  # on disk before the rename, and before any row names the file
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_head_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a head checkpoint (no tensors are loaded)."""
    path = Path(path)
    if not path.is_file():
        raise HeadError(f"head checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise HeadError(f"{path} is not a readable safetensors head checkpoint: {exc}") from exc
    if meta.get("format") != HEAD_FORMAT:
        raise HeadError(f"{path} is not a PO-CLIP head checkpoint (format {meta.get('format')!r})")
    return meta


def load_head(path: str | Path, encoder: ClipEncoder, check_backbone: bool = True) -> Policy:
    """Load a head checkpoint onto ``encoder`` as a :class:`Policy`.

    Raises :class:`HeadError` if the file is not a head checkpoint or (with ``check_backbone``) was
    trained on different backbone weights, since a head only means something on its own backbone.
    """
    from poclip.engine.embed_cache import backbone_fingerprint

    meta = read_head_metadata(path)
    if check_backbone and meta.get("backbone_fingerprint") != backbone_fingerprint(encoder):
        raise HeadError(f"{path} was trained on backbone {meta.get('backbone')!r} with other weights than "
                        f"the loaded {encoder.spec!r}; load that backbone or retrain the head")
    policy = Policy(encoder, HeadSpec.parse(meta["head"]))
    tensors = {}
    with safe_open(str(path), framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            tensors[name] = f.get_tensor(name)
    policy.load_head_state(tensors)
    policy.metadata = meta
    return policy
