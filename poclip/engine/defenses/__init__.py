"""Defenses a user could pick instead of (or beside) PO-CLIP, behind one interface (:mod:`.base`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from poclip.engine.defenses.ablation import Ablation
from poclip.engine.defenses.base import Defense
from poclip.engine.defenses.ocr_mask import OcrMask
from poclip.engine.defenses.paint import Paint
from poclip.engine.defenses.prefix import DefensePrefix
from poclip.engine.defenses.prompts import PromptEnsemble
from poclip.engine.models import ClipEncoder
from poclip.errors import UserError

# What a user could pick instead of PO-CLIP, cheapest to build first (the app builds them in this order).
PEERS: dict[str, type[Defense]] = {
    "prompts": PromptEnsemble, "ablation": Ablation, "prefix": DefensePrefix, "ocr_mask": OcrMask, "paint": Paint,
}


def check_peers(names: Sequence[str] | None) -> list[str]:
    """``names`` (default: every peer) when each is a peer; else UserError naming the others."""
    names = list(PEERS) if names is None else list(names)
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise UserError(f"unknown defenses {', '.join(unknown)}; choose from {', '.join(PEERS)}")
    return names


def build_peers(encoder: ClipEncoder, cache_dir: str | Path, names: Sequence[str] | None = None) -> dict[str, dict]:
    """Build (or load) the peers ``names`` (default: all) on ``encoder`` into ``cache_dir``; returns, per peer, its
    ``seconds_to_build``, whether it was ``loaded`` from the cache, and its file's ``path``.

    Raises:
        UserError: an unknown name (before anything is built), or the peers whose build failed, each with why (one
            failing, e.g. OCR without Tesseract, does not stop the others).
    """
    names = check_peers(names)
    built, failed = {}, {}
    for name in names:
        try:
            defense = PEERS[name](encoder).build(cache_dir)
        except Exception as exc:
            failed[name] = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
            continue
        built[name] = {"seconds_to_build": defense.seconds_to_build, "loaded": defense.loaded,
                       "path": str(defense.cache_path(cache_dir))}
    if failed:
        raise UserError("; ".join(f"{name}: {why}" for name, why in failed.items()))
    return built
