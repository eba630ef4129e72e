"""Training-free ablation: switch off the image tower's units that carry written text (mean-ablation).

As Dyslexify (ICLR 2026) does for ViT towers, a unit's output is replaced by its mean over clean calibration
pictures, which removes what the unit says about *this* picture (the word on it) and keeps its average
contribution. Units, by tower:

    ViT        the attention heads of the last ``vit_layers`` transformer blocks (each head's output before
               the block's output projection)
    ResNet     the attention pool's heads (each head's output for the pooled token), or the last stage's
               channels (each channel's map at the pool's input); both are mined and the calibration picks
               the kind that reaches the higher attacked accuracy

Mining (greedy, on :func:`~poclip.engine.defenses.data.calibration_set`, which no evaluation draws from): each
unit is ranked by how much ablating it alone raises the true label's log-probability on the texted pictures
(measured, or for hundreds of channels estimated to first order by attribution patching); walking that
ranking, a unit is kept when adding it raises attacked accuracy and clean accuracy stays
within ``clean_cap`` (1 point) of the unablated tower's. The tower below the units runs once per picture.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from poclip.engine import tower
from poclip.engine.defenses.base import Defense
from poclip.engine.defenses.data import CALIBRATION_N, CALIBRATION_SEED, calibration_set
from poclip.errors import UserError

KINDS = ("pool_heads", "channels", "vit_heads")


class AblationError(UserError):
    """An image tower this defense cannot ablate units of."""


def _tower_kind(visual: torch.nn.Module) -> str:
    cut = tower.split(visual, 0).cut  # raises TowerError (a UserError) for towers tower heads do not know
    return cut.partition(":")[0]


def _head_outputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Scaled dot-product attention per head, heads concatenated: ``[N, Lq, D]`` from ``[N, L, D]`` inputs."""
    n, lq, d = q.shape
    split = lambda t: t.reshape(n, t.shape[1], heads, d // heads).transpose(1, 2)  # noqa: E731
    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).reshape(n, lq, d)


def _ablate(out: torch.Tensor, mask: torch.Tensor, mean: torch.Tensor, heads: int) -> torch.Tensor:
    """Heads marked in ``mask`` ``[heads]`` of ``out`` ``[N, L, D]`` take their mean ``[L, D]`` instead."""
    if not bool(mask.any()):
        return out
    dims = mask.to(out.device).repeat_interleave(out.shape[-1] // heads)
    return torch.where(dims, mean.to(out.device, out.dtype), out)


def pool_heads(pool: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """open_clip ``AttentionPool2d``'s per-head outputs for the pooled token, before ``c_proj``: ``[N, 1, D]``.
    ``pool.c_proj`` of this (squeezed) is the pool's output."""
    x = x.flatten(2).transpose(1, 2)  # NCHW -> N(HW)C
    x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + pool.positional_embedding.to(x.dtype)
    return _head_outputs(pool.q_proj(x[:, :1]), pool.k_proj(x), pool.v_proj(x), pool.num_heads)


def vit_block(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The per-head attention outputs ``[N, L, D]`` (before the output projection) of an open_clip ViT residual
    block on batch-first ``x``; :func:`vit_finish` completes the block from them (possibly ablated)."""
    attn = block.attn
    if not isinstance(attn, torch.nn.MultiheadAttention) or not attn._qkv_same_embed_dim:
        raise AblationError("ViT head ablation needs blocks with torch's MultiheadAttention")
    q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    return _head_outputs(q, k, v, attn.num_heads)


def vit_finish(block: torch.nn.Module, x: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
    """The block's output from its input ``x`` and its per-head attention outputs."""
    x = x + block.ls_1(block.attn.out_proj(heads))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


class Ablation(Defense):
    """Mean-ablation of mined text-carrying units (module docstring); ``mask`` and ``mean`` are the build."""

    name = "ablation"

    def __init__(self, encoder, clean_cap: float = 0.01, candidates: int = 64, vit_layers: int = 6,
                 calibration_n: int = CALIBRATION_N, calibration_seed: int = CALIBRATION_SEED) -> None:
        super().__init__(encoder, clean_cap=clean_cap, candidates=candidates, vit_layers=vit_layers,
                         calibration_n=calibration_n, calibration_seed=calibration_seed)
        self.mask: torch.Tensor | None = None
        self.mean: torch.Tensor | None = None

    # ----- the tower, split at the units --------------------------------------------------------------------

    @property
    def _visual(self) -> torch.nn.Module:
        return self.encoder.model.visual

    @property
    def _blocks(self) -> int:
        """Residual blocks above the cut: none for ResNet units (the pool's input), ``vit_layers`` for ViT."""
        if _tower_kind(self._visual) == "resnet":
            return 0
        return min(int(self.recipe["vit_layers"]), len(self._visual.transformer.resblocks))

    @torch.no_grad()
    def _trunk(self, images) -> torch.Tensor:
        # The encoder's trunk pass (its inference precision); the units above it are scored in float32 on its device.
        return self.encoder.trunk_activations(self.encoder.pixels(images), self._blocks).to(self.encoder.device)

    @torch.no_grad()
    def _units(self, kind: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(all-false mask, mean over ``x``) for a unit kind, from clean activations ``x`` at the cut."""
        visual = self._visual
        if kind == "channels":
            return torch.zeros(x.shape[1], dtype=torch.bool), x.mean(0)
        if kind == "pool_heads":
            return torch.zeros(visual.attnpool.num_heads, dtype=torch.bool), pool_heads(visual.attnpool, x).mean(0)
        means = []
        blocks = list(visual.transformer.resblocks)[-self._blocks:]
        for block in blocks:
            heads = vit_block(block, x)
            means.append(heads.mean(0))
            x = vit_finish(block, x, heads)
        return torch.zeros(len(blocks), blocks[0].attn.num_heads, dtype=torch.bool), torch.stack(means)

    def _features(self, x: torch.Tensor, kind: str, mask: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings from activations at the cut with the ``mask``-ed units mean-ablated."""
        visual = self._visual
        if kind == "channels":
            x = torch.where(mask.to(x.device)[None, :, None, None], mean[None].to(x.device, x.dtype), x)
            out = visual.attnpool.c_proj(pool_heads(visual.attnpool, x))[:, 0]
        elif kind == "pool_heads":
            pool = visual.attnpool
            out = pool.c_proj(_ablate(pool_heads(pool, x), mask, mean, pool.num_heads))[:, 0]
        else:
            blocks = list(visual.transformer.resblocks)[-self._blocks:]
            for i, block in enumerate(blocks):
                x = vit_finish(block, x, _ablate(vit_block(block, x), mask[i], mean[i], block.attn.num_heads))
            pooled, _ = visual._pool(x)
            out = pooled @ visual.proj
        return F.normalize(out.float(), dim=-1).cpu()

    # ----- mining -----------------------------------------------------------------------------------------------

    def _truth_log_prob(self, x, kind, mask, mean, cal, text) -> torch.Tensor:
        logp = torch.log_softmax(self.encoder.logit_scale * self._features(x, kind, mask, mean) @ text.T, -1)
        return logp.gather(1, cal.truth[:, None]).mean()

    def _gains(self, kind, attacked_x, mask, mean, cal, text) -> list[tuple[float, int]]:
        """How much ablating each unit alone raises the true label's mean log-prob on the texted pictures.

        Exact (one pass per unit) for up to ``candidates`` units; for more (a ResNet's hundreds of channels) the
        first-order estimate of attribution patching, ``grad . (mean - x)`` summed over the unit, from one
        backward pass, only ranks them: the greedy walk then measures every addition exactly.
        """
        base = float(self._truth_log_prob(attacked_x, kind, mask, mean, cal, text))
        if mask.numel() <= int(self.recipe["candidates"]) or kind != "channels":
            gains = []
            for unit in range(mask.numel()):
                single = mask.flatten().clone()
                single[unit] = True
                gains.append(float(self._truth_log_prob(attacked_x, kind, single.view_as(mask), mean, cal, text))
                             - base)
        else:
            x = attacked_x.clone().requires_grad_(True)
            with torch.enable_grad():
                (grad,) = torch.autograd.grad(self._truth_log_prob(x, kind, mask, mean, cal, text), [x])
            gains = (grad * (mean[None] - attacked_x)).sum(dim=(0, 2, 3)).tolist()
        return sorted(((g, u) for u, g in enumerate(gains)), reverse=True)

    @torch.no_grad()
    def _mine(self, kind: str, clean_x, attacked_x, cal, text) -> dict:
        mask, mean = self._units(kind, clean_x)
        scale = self.encoder.logit_scale

        def measure(m: torch.Tensor) -> tuple[float, float]:
            att = self._features(attacked_x, kind, m, mean) @ text.T
            return cal.accuracy(scale * att), cal.accuracy(scale * self._features(clean_x, kind, m, mean) @ text.T)

        base_att, base_clean = measure(mask)
        floor = base_clean - float(self.recipe["clean_cap"])
        chosen, (att, clean) = mask.flatten().clone(), (base_att, base_clean)
        for gain, unit in self._gains(kind, attacked_x, mask, mean, cal, text)[: int(self.recipe["candidates"])]:
            if gain <= 0:
                break
            trial = chosen.clone()
            trial[unit] = True
            t_att, t_clean = measure(trial.view_as(mask))
            if t_att > att and t_clean >= floor - 1e-9:
                chosen, (att, clean) = trial, (t_att, t_clean)
        return {"kind": kind, "mask": chosen.view_as(mask), "mean": mean, "attacked": att, "clean": clean,
                "base_attacked": base_att, "base_clean": base_clean}

    @torch.no_grad()
    def fit(self) -> None:
        cal = calibration_set(int(self.recipe["calibration_n"]), int(self.recipe["calibration_seed"]))
        kinds = ("pool_heads", "channels") if _tower_kind(self._visual) == "resnet" else ("vit_heads",)
        clean_x, attacked_x = self._trunk(cal.clean), self._trunk(cal.attacked)
        text = self.encoder.classifier(list(cal.labels))
        mined = [self._mine(kind, clean_x, attacked_x, cal, text) for kind in kinds]
        best = max(mined, key=lambda m: (m["attacked"], -int(m["mask"].sum())))
        self.mask, self.mean = best["mask"], best["mean"]
        self.info = {"kind": best["kind"], "units": int(best["mask"].sum()), "of": best["mask"].numel(),
                     "calibration": {m["kind"]: {k: round(float(m[k]), 4) if not isinstance(m[k], str) else m[k]
                                                 for k in ("attacked", "clean", "base_attacked", "base_clean")}
                                     | {"units": int(m["mask"].sum())} for m in mined}}
        if not math.isfinite(float(self.mean.detach().float().sum())):
            raise AblationError("the calibration activations are not finite")

    def state(self) -> dict[str, torch.Tensor]:
        return {"mask": self.mask, "mean": self.mean}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.mask, self.mean = tensors["mask"].bool(), tensors["mean"]

    @torch.no_grad()
    def _log_probs(self, images, labels, template):
        features = self._features(self._trunk(images), str(self.info["kind"]), self.mask, self.mean)
        return self.encoder.log_probs(features, self.encoder.classifier(list(labels), (template,)))
