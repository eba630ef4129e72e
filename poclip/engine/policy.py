"""The aligned model: a frozen CLIP backbone plus a trainable alignment head, read as a policy over labels.

    pi(y|x) = softmax_y( s * <f(x), g(txt(y))> )       (Afzali et al., ICLR 2025, arXiv 2411.08923)

The reference policy pi_ref is the base model (f = unit-norm image embedding, g = identity). Heads:

``linear`` (default, CPU-fast)
    A square W (d x d, identity at init) shared by both modalities: f(x) = W img(x), g(t) = W t, so
    logits are ``s * img^T W^T W txt``. Only W trains, on cached embeddings. Strength knob: with the SVD
    ``W = U S V^T``, ``W_t = U S^t V^T`` and ``W_t^T W_t = V S^(2t) V^T``: t = 0 is the base model (up to
    float rounding), t = 1 the trained head, t > 1 extrapolates, t < 0 reverses the learned emphasis.
``projection``
    The image tower's final projection (ViT ``proj``, ResNet ``attnpool``) trains on pixels.
``last_blocks:K``
    The image tower's last K blocks plus its projection train on pixels.

Tower heads have no SVD; their strength knob interpolates weights, ``theta_t = theta_ref + t (theta -
theta_ref)`` (so again t = 0 is the base model exactly and t < 0 moves away from the trained one).
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from poclip.engine.models import ClipEncoder

HEAD_FORMAT = "poclip-head/1"
HEAD_KINDS = ("linear", "projection", "last_blocks:K")
_MIN_SINGULAR = 1e-6  # S^t with t < 0 needs S > 0; a collapsed direction is treated as tiny, not zero


class HeadError(ValueError):
    """A head spec or checkpoint that cannot be used; the message says why."""


def parse_head(head: str) -> tuple[str, int]:
    """Split a head spec: ``'linear'`` -> ('linear', 0), ``'last_blocks:2'`` -> ('last_blocks', 2)."""
    head = head.strip()
    if head in ("linear", "projection"):
        return head, 0
    name, _, k = head.partition(":")
    if name == "last_blocks" and k.isdigit() and int(k) > 0:
        return name, int(k)
    raise HeadError(f"unknown head {head!r}; choose linear, projection or last_blocks:K (K >= 1)")


def strength_matrix(weight: torch.Tensor, t: float) -> torch.Tensor:
    """``W_t = U S^t V^T`` for the SVD ``W = U S V^T`` (computed in float64, returned in W's dtype)."""
    if t == 1.0:
        return weight.detach().clone()
    u, s, vh = torch.linalg.svd(weight.detach().double())
    return ((u * s.clamp(min=_MIN_SINGULAR).pow(t)) @ vh).to(weight.dtype)


def _tower_parts(visual: torch.nn.Module, kind: str, k: int) -> list[torch.nn.Module | torch.nn.Parameter]:
    """The modules/parameters of an open_clip image tower that a tower head trains."""
    if isinstance(getattr(visual, "proj", None), torch.nn.Parameter):  # ViT
        projection: list = [visual.proj]
        if hasattr(visual, "ln_post"):
            projection.append(visual.ln_post)
        blocks = list(getattr(getattr(visual, "transformer", None), "resblocks", []))
    elif hasattr(visual, "attnpool"):  # ModifiedResNet: attention pooling ends in the projection
        projection = [visual.attnpool]
        blocks = [b for name in ("layer1", "layer2", "layer3", "layer4") if hasattr(visual, name)
                  for b in getattr(visual, name)]
    elif hasattr(visual, "head"):  # timm towers
        projection, blocks = [visual.head], []
    else:
        raise HeadError(f"do not know where the projection of a {type(visual).__name__} image tower is")
    if kind == "projection":
        return projection
    if k > len(blocks):
        raise HeadError(f"last_blocks:{k} asks for more blocks than the image tower has ({len(blocks)})")
    return [*blocks[-k:], *projection]


class LinearHead(torch.nn.Module):
    """f(x) = W x on both modalities; W starts at the identity so the head starts as the base model."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.eye(dim))

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return emb @ self.weight.T


class Policy(torch.nn.Module):
    """A backbone (:class:`~poclip.engine.models.ClipEncoder`, frozen) plus an alignment head.

    Use :meth:`log_probs_for` / :meth:`predict` for the app's base-and-aligned predictions, and
    :meth:`with_strength` for the SVD strength knob. The reference policy is ``encoder`` itself.
    """

    def __init__(self, encoder: ClipEncoder, head: str = "linear") -> None:
        super().__init__()
        self.encoder = encoder
        self.head_kind, self.head_blocks = parse_head(head)
        self.head = head.strip()
        self.linear: LinearHead | None = None
        self.visual: torch.nn.Module | None = None
        if self.head_kind == "linear":
            self.linear = LinearHead(encoder.embed_dim)
        else:
            # A private copy of the tower, so the base model (the reference) stays untouched.
            self.visual = copy.deepcopy(encoder.model.visual).to(encoder.device)
            self.visual.requires_grad_(False)
            for part in _tower_parts(self.visual, self.head_kind, self.head_blocks):
                part.requires_grad_(True)
            self.visual.eval()

    # ----- the policy -----------------------------------------------------------------------------------

    @property
    def trains_on_pixels(self) -> bool:
        """Tower heads need pictures; the linear head works on cached embeddings."""
        return self.visual is not None

    @property
    def logit_scale(self) -> float:
        return self.encoder.logit_scale

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """Aligned image features: ``W img`` for a linear head (``x`` = unit-norm embeddings ``[N, d]``),
        the tower's unit-norm embedding for tower heads (``x`` = preprocessed pixels)."""
        if self.linear is not None:
            return self.linear(x)
        return F.normalize(self.visual(x.to(self.encoder.device)).float(), dim=-1).cpu()

    def text_features(self, text_emb: torch.Tensor) -> torch.Tensor:
        """Aligned text features: ``W txt`` for a linear head, ``txt`` unchanged for tower heads."""
        return self.linear(text_emb) if self.linear is not None else text_emb

    def logits(self, x: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """``s * <f(x), g(txt)>``, shape ``[N, L]``."""
        return self.logit_scale * self.image_features(x) @ self.text_features(text_emb).T

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        module = self.linear if self.linear is not None else self.visual
        return [p for p in module.parameters() if p.requires_grad]

    def head_state(self) -> dict[str, torch.Tensor]:
        """The tensors that define the head (what a checkpoint stores)."""
        if self.linear is not None:
            return {"W": self.linear.weight.detach().cpu().contiguous()}
        names = {id(p) for p in self.trainable_parameters()}
        return {f"visual.{n}": p.detach().cpu().contiguous() for n, p in self.visual.named_parameters()
                if id(p) in names}

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
        """A copy of this policy at strength ``t`` (linear: ``W_t = U S^t V^T``; tower: weight interpolation)."""
        t = float(t)
        clone = Policy.__new__(Policy)
        torch.nn.Module.__init__(clone)
        clone.encoder, clone.head_kind, clone.head_blocks, clone.head = (
            self.encoder, self.head_kind, self.head_blocks, self.head)
        clone.linear, clone.visual = None, None
        if self.linear is not None:
            clone.linear = LinearHead(self.linear.weight.shape[0])
            with torch.no_grad():
                clone.linear.weight.copy_(strength_matrix(self.linear.weight, t))
        else:
            clone.visual = copy.deepcopy(self.visual)
            base = dict(self.encoder.model.visual.named_parameters())
            with torch.no_grad():
                for name, p in clone.visual.named_parameters():
                    if p.requires_grad:
                        ref = base[name].detach().to(p.device)
                        p.copy_(ref + t * (p - ref))
        return clone

    # ----- what the app calls -----------------------------------------------------------------------------

    @torch.no_grad()
    def log_probs_for(
        self, image_emb: torch.Tensor, labels: Sequence[str], template: str = "a photo of a {}.", t: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Base and aligned ``log pi(y|x)`` over ``labels`` from one image embedding (linear heads).

        ``image_emb`` is the backbone's unit-norm embedding ``[d]`` or ``[N, d]``; returns two ``[N, L]``
        tensors (base, aligned at strength ``t``). The image tower is not run again.
        """
        if self.linear is None:
            raise HeadError(f"a {self.head} head changes the image tower; use predict(images, ...) instead")
        emb = image_emb[None] if image_emb.ndim == 1 else image_emb
        text = self.encoder.classifier(list(labels), (template,))
        base = self.encoder.log_probs(emb, text)
        head = self if t == 1.0 else self._strength_cached(t)
        aligned = torch.log_softmax(head.logits(emb, text), dim=-1)
        return base, aligned

    def _strength_cached(self, t: float) -> Policy:
        # A slider moves through a few values repeatedly; an SVD per request would dominate the head's cost.
        key = (float(t), self.linear.weight._version)
        cache = self.__dict__.setdefault("_strength_cache", {})
        if key not in cache:
            if len(cache) > 32:
                cache.clear()
            cache[key] = self.with_strength(t)
        return cache[key]

    @torch.no_grad()
    def predict(
        self, images: list[Image.Image], labels: Sequence[str], template: str = "a photo of a {}.", t: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Base and aligned class probabilities ``[N, L]`` for pictures; one tower pass for a linear head."""
        if self.linear is not None:
            base, aligned = self.log_probs_for(self.encoder.encode_images(images), labels, template, t)
            return base.exp(), aligned.exp()
        pixels = self.encoder.pixels(images)
        text = self.encoder.classifier(list(labels), (template,))
        base = self.encoder.log_probs(self.encoder.encode_pixels(pixels), text)
        head = self if t == 1.0 else self.with_strength(t)
        return base.exp(), torch.softmax(head.logits(pixels, text), dim=-1)


# ----- checkpoints -------------------------------------------------------------------------------------------


def save_head(policy: Policy, path: str | Path, metadata: dict[str, object] | None = None) -> Path:
    """Write the head as safetensors with string metadata, atomically (temp file, then ``os.replace``).

    Metadata always holds the format, backbone spec and fingerprint, head type and creation time; values
    that are not strings are stored as JSON. A crash before the rename leaves any old file untouched.
    """
    from poclip.engine.embed_cache import backbone_fingerprint

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": HEAD_FORMAT,
        "backbone": policy.encoder.spec,
        "backbone_fingerprint": backbone_fingerprint(policy.encoder),
        "head": policy.head,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for key, value in (metadata or {}).items():
        meta[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(policy.head_state(), str(tmp), metadata=meta)
        with open(tmp, "rb") as fh:  # on disk before the rename, and before any row names the file
            os.fsync(fh.fileno())
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
    policy = Policy(encoder, meta["head"])
    tensors = {}
    with safe_open(str(path), framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            tensors[name] = f.get_tensor(name)
    policy.load_head_state(tensors)
    policy.metadata = meta
    return policy
