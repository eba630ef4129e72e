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


class TowerError(ValueError):
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


def tail(visual: torch.nn.Module, activations: torch.Tensor, blocks: int) -> torch.Tensor:
    """The tower's output (unnormalised embedding) from activations at the cut; ``visual`` may be a copy whose
    tail weights differ from the trunk's tower."""
    kind = _kind(visual)
    if kind == "resnet":
        x = activations
        for block in _resnet_blocks(visual)[len(_resnet_blocks(visual)) - blocks:]:
            x = block(x)
        return visual.attnpool(x)
    n = len(visual.transformer.resblocks)
    x = _vit_blocks_run(visual, activations, n - blocks, None)
    pooled, _ = visual._pool(x)
    return pooled @ visual.proj


