"""Concept disentanglement on the synthetic world (the paper's gender experiment, with colour tone).

Afzali et al. (ICLR 2025, arXiv 2411.08923, Sec. 5) train the linear head on pairs that prefer the
opposite reading of a binary concept (gender there) and then use the strength knob to move the model from
its original reading (t = 0) through a concept-neutral point (t*) to the reversed reading (t = 1), while
the task (there: profession) is kept by the KL regularizer.

Here the concept is the tone of an object's colour (warm: red/orange/yellow/pink, cool: green/blue/purple/
cyan), read with the label set ("warm", "cool") and the template "a {} coloured shape." (the bundled model's
captions say "a warm coloured star"), and the task is the shape. Pairs: on a clean picture, the opposite
tone is chosen over the true one; the clean regularization pictures keep the shape distribution.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field, replace

import torch

from poclip.engine.config import TrainConfig
from poclip.engine.embed_cache import EmbeddingCache
from poclip.engine.losses import kl_to_reference
from poclip.engine.models import ClipEncoder
from poclip.engine.policy import Policy
from poclip.engine.preferences import CleanImage, Preference, synth_clean
from poclip.engine.train import train
from poclip.world import synth

TONES: tuple[str, ...] = ("warm", "cool")
TONE_TEMPLATE = "a {} coloured shape."
SHAPE_TEMPLATE = synth.DEFAULT_TEMPLATE
DEFAULT_TS: tuple[float, ...] = (-1.0, -0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)


@dataclass
class DisentangleConfig:
    """The experiment: sizes, seeds and the training recipe."""

    pairs: int = 1000
    clean: int = 1000
    n_eval: int = 1000
    train_seed: int = 0
    eval_seed: int = 2024
    ts: tuple[float, ...] = DEFAULT_TS
    # Reversing a concept moves W far from the identity, so no orthogonality penalty and a longer, faster run
    # than the typographic recipe; the KL on shape labels is what keeps the task.
    # Chosen on the bundled model from lr 0.1-0.3 x lambda 0.3-3: the strongest reversal at t = 1 whose shape
    # accuracy stays within 3 points of the base for every t in [0, 1].
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        head="linear", loss="dpo", ortho=0.0, reg_lambda=1.0, optimizer="adamw", lr=0.3, epochs=100, patience=0))


def concept_pairs(n: int, seed: int = 0, size: int = 224) -> list[Preference]:
    """``n`` clean scenes, each preferring the opposite tone over the true one (stream ``concept:{seed}:{i}``)."""
    out = []
    for i in range(n):
        scene = synth.sample_scene(random.Random(f"concept:{seed}:{i}"))
        opposite = "cool" if scene.tone == "warm" else "warm"
        out.append(Preference(synth.draw_scene(scene, size), opposite, scene.tone, TONES, TONE_TEMPLATE))
    return out


def _sweep(policy: Policy, emb: torch.Tensor, tone: torch.Tensor, shape: torch.Tensor, ts) -> list[dict]:
    enc = policy.encoder
    tone_text = enc.classifier(list(TONES), (TONE_TEMPLATE,))
    shape_text = enc.classifier(list(synth.SHAPES), (SHAPE_TEMPLATE,))
    ref_shape = enc.log_probs(emb, shape_text)
    rows = []
    for t in ts:
        head = policy.with_strength(t)
        with torch.no_grad():
            tone_pred = head.logits(emb, tone_text).argmax(1)
            shape_lp = torch.log_softmax(head.logits(emb, shape_text), dim=-1)
        rows.append({
            "t": t,
            "attribute_accuracy": round(float((tone_pred == tone).float().mean()), 4),
            "attribute_warm_share": round(float((tone_pred == 0).float().mean()), 4),
            "shape_accuracy": round(float((shape_lp.argmax(1) == shape).float().mean()), 4),
            "shape_kl": round(float(kl_to_reference(ref_shape, shape_lp).mean()), 5),
        })
    return rows


def neutral_strength(policy: Policy, emb: torch.Tensor, tone: torch.Tensor, shape: torch.Tensor,
                     lo: float = 0.0, hi: float = 1.0, steps: int = 41) -> dict:
    """The strength t* in [lo, hi] whose attribute accuracy is closest to chance (0.5), on a fine grid."""
    grid = [lo + (hi - lo) * k / (steps - 1) for k in range(steps)]
    rows = _sweep(policy, emb, tone, shape, grid)
    return min(rows, key=lambda r: (abs(r["attribute_accuracy"] - 0.5), r["t"]))


def run_disentangle(encoder: ClipEncoder, cfg: DisentangleConfig | None = None,
                    cache: EmbeddingCache | None = None) -> dict:
    """Train the tone-reversing head and sweep t; returns the table and the neutral point t*.

    Result keys: ``base`` (attribute and shape accuracy of the base model), ``sweep`` (one row per t:
    attribute_accuracy, attribute_warm_share, shape_accuracy, shape_kl), ``neutral`` (the row at t*),
    ``train`` (trainer metrics and seconds) and ``checks`` (the experiment's claims, measured).
    """
    cfg = cfg or DisentangleConfig()
    cache = cache if cache is not None else EmbeddingCache(encoder)
    pairs = concept_pairs(cfg.pairs, cfg.train_seed)
    clean = [CleanImage(c.image, synth.SHAPES, SHAPE_TEMPLATE) for c in _clean(cfg.clean, cfg.train_seed)]
    started = time.perf_counter()
    result = train(encoder, pairs, clean, replace(cfg.train), cache=cache)
    seconds = time.perf_counter() - started

    items = synth.eval_set(cfg.n_eval, cfg.eval_seed, "none")
    emb = cache.embed([it.clean for it in items])
    tone = torch.tensor([TONES.index(it.scene.tone) for it in items])
    shape = torch.tensor([synth.SHAPES.index(it.label) for it in items])
    sweep = _sweep(result.policy, emb, tone, shape, cfg.ts)
    base = next(r for r in _sweep(result.policy, emb, tone, shape, [0.0]))
    neutral = neutral_strength(result.policy, emb, tone, shape)
    at_one = next(r for r in _sweep(result.policy, emb, tone, shape, [1.0]))
    in_range = [r for r in sweep if 0.0 <= r["t"] <= 1.0] + [neutral]
    shape_drop = max(base["shape_accuracy"] - r["shape_accuracy"] for r in in_range)
    return {
        "concept": "colour tone (warm vs cool)",
        "task": "shape",
        "attribute_labels": list(TONES),
        "attribute_template": TONE_TEMPLATE,
        "n_eval": cfg.n_eval,
        "base": {"attribute_accuracy": base["attribute_accuracy"], "shape_accuracy": base["shape_accuracy"]},
        "sweep": sweep,
        "neutral": neutral,
        "train": {"seconds": round(seconds, 2), "pairs": cfg.pairs, "clean": cfg.clean, "loss": cfg.train.loss,
                  "metrics": {k: round(v, 4) for k, v in result.metrics.items()}},
        "checks": {
            "neutral_t": neutral["t"],
            "neutral_attribute_accuracy": neutral["attribute_accuracy"],
            "reversed_attribute_accuracy_at_1": at_one["attribute_accuracy"],
            "max_shape_drop_on_0_1": round(shape_drop, 4),
            "neutral_near_chance": abs(neutral["attribute_accuracy"] - 0.5) <= 0.1,
            "mostly_reversed_at_1": at_one["attribute_accuracy"] <= 0.25,
            "shape_within_3_points": shape_drop <= 0.03,
        },
        "policy": result.policy,
    }


def _clean(n: int, seed: int) -> list[CleanImage]:
    return synth_clean(n, seed + 7919)  # a stream apart from the typographic experiment's clean pictures
