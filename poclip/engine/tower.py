"""Split an open_clip image tower at a cut: a frozen trunk below it, a trainable tail above it.

A tower head trains only the tail, so the trunk's output at the cut (its *activations*) is computed once per
picture and cached (:class:`~poclip.engine.embed_cache.ActivationCache`); each training step then runs only
the tail. ``tail(trunk(pixels)) == tower(pixels)`` for every supported tower (tested).

Cuts, by head (``K`` counts residual blocks from the top):
    ``projection``       ModifiedResNet: the attention pool's input; ViT: the transformer's output tokens
    ``last_blocks:K``    the input of the K-th block from the top (ModifiedResNet bottlenecks in layer1-4,
                         ViT transformer blocks); the tail is those K blocks plus the projection
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from poclip.errors import UserError


class TowerError(UserError):
    """An image tower or cut this module cannot split; the message says why."""


@dataclass(frozen=True)
class TowerSplit:
    """Where a head cuts the tower: ``cut`` names the activation (a cache namespace), ``blocks`` the tail's
    residual blocks (0 for the projection alone), ``trainable`` the tail's parameter-holding modules."""

    cut: str
    blocks: int
    trainable: tuple[torch.nn.Module | torch.nn.Parameter, ...]


def _resnet_blocks(visual: torch.nn.Module) -> list[torch.nn.Module]:
    return [b for name in ("layer1", "layer2", "layer3", "layer4") for b in getattr(visual, name)]


def _kind(visual: torch.nn.Module) -> str:
    if hasattr(visual, "attnpool") and hasattr(visual, "layer4"):
        return "resnet"
    if isinstance(getattr(visual, "proj", None), torch.nn.Parameter) and hasattr(visual, "transformer"):
        return "vit"
    raise TowerError(f"tower heads support open_clip ModifiedResNet and VisionTransformer towers, "
                     f"not {type(visual).__name__}")


def split(visual: torch.nn.Module, blocks: int) -> TowerSplit:
    """The split for a tail of ``blocks`` residual blocks plus the projection (``blocks=0``: projection only)."""
    kind = _kind(visual)
    if kind == "resnet":
        all_blocks, projection = _resnet_blocks(visual), [visual.attnpool]
    else:
        all_blocks = list(visual.transformer.resblocks)
        projection = [visual.proj, *(m for m in (getattr(visual, "ln_post", None),) if m is not None)]
        if getattr(visual, "attn_pool", None) is not None:
            raise TowerError("ViT towers with attention pooling (CoCa) are not supported by tower heads")
    if blocks > len(all_blocks):
        raise TowerError(f"last_blocks:{blocks} asks for more blocks than the image tower has ({len(all_blocks)})")
    cut = f"{kind}:projection" if blocks == 0 else f"{kind}:block-{len(all_blocks) - blocks}"
    return TowerSplit(cut, blocks, tuple([*all_blocks[len(all_blocks) - blocks:], *projection]))


def _vit_blocks_run(visual: torch.nn.Module, x: torch.Tensor, start: int, stop: int | None) -> torch.Tensor:
    # Activations are stored batch-first (N, L, D) whatever the transformer's own layout is.
    transformer = visual.transformer
    batch_first = getattr(transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    for block in list(transformer.resblocks)[start:stop]:
        x = block(x)
    return x if batch_first else x.transpose(0, 1)


def _attention_pool(pool: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """open_clip's ``AttentionPool2d`` output with only the pooled token as the query.

    The pool returns the first (mean) token's attention output; open_clip computes queries and outputs for
    all ``HW + 1`` tokens and keeps one. Asking for that one alone gives the same result (tested) at about
    half the cost of a training step of the pool: keys and values stay ``HW + 1``, queries and the output
    projection become 1.
    """
    x = x.flatten(2).permute(2, 0, 1)  # NCHW -> (HW)NC
    x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0) + pool.positional_embedding[:, None, :].to(x.dtype)
    out, _ = torch.nn.functional.multi_head_attention_forward(
        query=x[:1], key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=pool.num_heads,
        q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight,
        in_proj_weight=None, in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0, out_proj_weight=pool.c_proj.weight,
        out_proj_bias=pool.c_proj.bias, use_separate_proj_weight=True, training=pool.training, need_weights=False)
    return out[0]


def trunk(visual: torch.nn.Module, pixels: torch.Tensor, blocks: int) -> torch.Tensor:
    """The tower's activations at the cut of :func:`split` ``(visual, blocks)`` for preprocessed ``pixels``."""
    kind = _kind(visual)
    if kind == "resnet":
        x = visual.stem(pixels)
        all_blocks = _resnet_blocks(visual)
        for block in all_blocks[: len(all_blocks) - blocks]:
            x = block(x)
        return x
    n = len(visual.transformer.resblocks)
    return _vit_blocks_run(visual, visual._embeds(pixels), 0, n - blocks)


def tail(visual: torch.nn.Module, activations: torch.Tensor, blocks: int, query_only: bool = False) -> torch.Tensor:
    """The tower's output (unnormalised embedding) from activations at the cut; ``visual`` may be a copy whose
    tail weights differ from the trunk's tower.

    ``query_only`` (training): a ResNet's attention pool computes only the pooled token's query, which is equal up
    to float rounding and about twice as fast; off, the result is bit-for-bit the tower's own forward.
    """
    kind = _kind(visual)
    if kind == "resnet":
        x = activations
        for block in _resnet_blocks(visual)[len(_resnet_blocks(visual)) - blocks:]:
            x = block(x)
        return _attention_pool(visual.attnpool, x) if query_only else visual.attnpool(x)
    n = len(visual.transformer.resblocks)
    x = _vit_blocks_run(visual, activations, n - blocks, None)
    pooled, _ = visual._pool(x)
    return pooled @ visual.proj


