"""Evaluation: zero-shot accuracy of a CLIP, clean and under typographic attack."""

from __future__ import annotations

from typing import Literal

import torch

from poclip import synth
from poclip.models import DEFAULT_TEMPLATES, ClipEncoder


def evaluate_synth(
    encoder: ClipEncoder,
    n: int = 1000,
    seed: int = 2024,
    attack: Literal["none", "random"] = "random",
    batch_size: int = 128,
    templates: tuple[str, ...] = DEFAULT_TEMPLATES,
) -> dict:
    """Zero-shot shape classification on ``n`` synthetic pictures (seed ``seed``).

    Returns ``n``, ``accuracy`` (on the attacked pictures when ``attack='random'``), and for attacks
    also ``clean_accuracy`` on the same pictures without text and ``attack_success_rate``, the share
    of pictures whose prediction becomes the written word. ``per_class`` holds each shape's accuracy.
    """
    if n <= 0:
        raise ValueError("n must be positive")
    labels = list(synth.SHAPES)
    text = encoder.classifier(labels, templates)
    truth, clean_pred, attacked_pred, written = [], [], [], []
    for start in range(0, n, batch_size):
        items = [synth.eval_item(seed, i, attack) for i in range(start, min(n, start + batch_size))]
        truth += [labels.index(it.label) for it in items]
        clean_pred.append((encoder.encode_images([it.clean for it in items]) @ text.T).argmax(1))
        if attack == "random":
            attacked_pred.append((encoder.encode_images([it.attacked for it in items]) @ text.T).argmax(1))
            written += [labels.index(it.attack.text) for it in items]
    y = torch.tensor(truth)
    clean = torch.cat(clean_pred)
    pred = torch.cat(attacked_pred) if attack == "random" else clean
    result = {
        "data": "synth",
        "n": n,
        "seed": seed,
        "attack": attack,
        "accuracy": round(float((pred == y).float().mean()), 4),
    }
    if attack == "random":
        result["clean_accuracy"] = round(float((clean == y).float().mean()), 4)
        result["attack_success_rate"] = round(float((pred == torch.tensor(written)).float().mean()), 4)
    result["per_class"] = {
        label: round(float((pred[y == k] == k).float().mean()), 4) for k, label in enumerate(labels) if (y == k).any()
    }
    return result
