"""Evaluation: zero-shot accuracy of a CLIP, clean and under typographic attack, base or aligned.

:func:`evaluate_synth` scores a bare backbone. For aligned policies, embed an evaluation set once
(:func:`embed_synth_eval`, or :func:`embed_dataset_eval` for any Hugging Face ``datasets`` image dataset)
and score any number of heads and strengths on it with :func:`evaluate_policy`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

import torch
from PIL import Image

from poclip.engine.embed_cache import EmbeddingCache
from poclip.engine.losses import kl_to_reference
from poclip.engine.models import DEFAULT_TEMPLATES, ClipEncoder
from poclip.engine.policy import Policy
from poclip.world import synth
from poclip.world.attacks import render


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


# ----- aligned policies: embed an evaluation set once, then score any head and strength on it ----------------


@dataclass
class EvalEmbeddings:
    """An evaluation set, embedded once: clean and attacked pictures of the same items.

    ``truth`` and ``written`` are label indices (``written`` = the attack's word, -1 if it is not a label).
    Pictures are kept only when a tower head must see pixels (``keep_images``).
    """

    labels: list[str]
    template: str
    clean: torch.Tensor
    attacked: torch.Tensor
    truth: torch.Tensor
    written: torch.Tensor
    clean_images: list[Image.Image] | None = None
    attacked_images: list[Image.Image] | None = None

    @property
    def n(self) -> int:
        return len(self.truth)


def embed_synth_eval(
    encoder: ClipEncoder,
    n: int = 1000,
    seed: int = 2024,
    cache: EmbeddingCache | None = None,
    keep_images: bool = False,
    template: str = synth.DEFAULT_TEMPLATE,
) -> EvalEmbeddings:
    """Embed ``n`` synthetic evaluation items (seed ``seed``) clean and with their paper-style attack."""
    if n <= 0:
        raise ValueError("n must be positive")
    cache = cache if cache is not None else EmbeddingCache(encoder)
    labels = list(synth.SHAPES)
    items = synth.eval_set(n, seed, "random")
    clean = cache.embed([it.clean for it in items])
    attacked = cache.embed([it.clean for it in items], [it.attack for it in items])
    return EvalEmbeddings(
        labels, template, clean, attacked,
        torch.tensor([labels.index(it.label) for it in items]),
        torch.tensor([labels.index(it.attack.text) for it in items]),
        [it.clean for it in items] if keep_images else None,
        [it.attacked for it in items] if keep_images else None,
    )


def embed_dataset_eval(
    encoder: ClipEncoder,
    dataset,
    label_column: str = "label",
    image_column: str = "image",
    n: int | None = None,
    seed: int = 2024,
    template: str = synth.DEFAULT_TEMPLATE,
    cache: EmbeddingCache | None = None,
    keep_images: bool = False,
) -> EvalEmbeddings:
    """Embed a Hugging Face ``datasets.Dataset`` with an image and a label column, attacking on the fly.

    The label set is the ``ClassLabel`` names of ``label_column`` (or its sorted distinct values). Each
    picture gets a paper-style attack writing another label (:func:`poclip.world.attacks.random_attack`, seeded
    by ``f"dataset-attack:{seed}:{i}"``). ``n`` (default all) rows are taken in a seeded random order.
    """
    from poclip.world.attacks import random_attack
    from poclip.world.images import normalize_image

    for column in (label_column, image_column):
        if column not in dataset.column_names:
            raise ValueError(f"the dataset has no column {column!r}; columns: {', '.join(dataset.column_names)}")
    feature = dataset.features[label_column]
    names = list(getattr(feature, "names", None) or sorted({str(v) for v in dataset[label_column]}))
    if len(names) < 2:
        raise ValueError("the dataset needs at least two classes to attack with a wrong label")
    rows = list(range(len(dataset)))
    random.Random(f"dataset-order:{seed}").shuffle(rows)
    rows = rows[: n or len(rows)]
    if not rows:
        raise ValueError("the dataset is empty")
    cache = cache if cache is not None else EmbeddingCache(encoder)
    images, attacks, truth, written = [], [], [], []
    for i, row in enumerate(rows):
        record = dataset[row]
        label = record[label_column]
        label = names[label] if getattr(feature, "names", None) else str(label)
        attack = random_attack(names, label, random.Random(f"dataset-attack:{seed}:{i}"))
        images.append(normalize_image(record[image_column]))
        attacks.append(attack)
        truth.append(names.index(label))
        written.append(names.index(attack.text))
    clean = cache.embed(images)
    attacked = cache.embed(images, attacks)
    return EvalEmbeddings(
        names, template, clean, attacked, torch.tensor(truth), torch.tensor(written),
        images if keep_images else None,
        [render(img, atk) for img, atk in zip(images, attacks, strict=True)] if keep_images else None,
    )


def _policy_log_probs(policy: Policy, emb: torch.Tensor, images, text: torch.Tensor) -> torch.Tensor:
    if not policy.trains_on_pixels:
        return torch.log_softmax(policy.logits(emb, text), dim=-1)
    if images is None:
        raise ValueError("a tower head needs the pictures: embed the set with keep_images=True")
    out = []
    for start in range(0, len(images), 128):
        pixels = policy.encoder.pixels(images[start : start + 128])
        out.append(torch.log_softmax(policy.logits(pixels, text), dim=-1))
    return torch.cat(out)


@torch.no_grad()
def evaluate_policy(policy: Policy | None, data: EvalEmbeddings, t: float = 1.0, encoder: ClipEncoder | None = None
                    ) -> dict:
    """Score a policy (``None`` = the base model of ``encoder``) at strength ``t`` on an embedded set.

    Returns ``n``, ``clean_accuracy``, ``typographic_accuracy`` (= ``accuracy``, on the attacked pictures),
    ``attack_success_rate`` (share predicted as the written word), ``kl_drift`` = mean over clean pictures
    of KL(pi_ref || pi), and ``per_class``: for each label its clean and attacked accuracy.
    """
    encoder = policy.encoder if policy is not None else encoder
    if encoder is None:
        raise ValueError("pass a policy or the encoder of the base model")
    text = encoder.classifier(data.labels, (data.template,))
    ref_clean = encoder.log_probs(data.clean, text)
    if policy is None:
        clean_lp, attacked_lp = ref_clean, encoder.log_probs(data.attacked, text)
    else:
        head = policy if t == 1.0 else policy.with_strength(t)
        clean_lp = _policy_log_probs(head, data.clean, data.clean_images, text)
        attacked_lp = _policy_log_probs(head, data.attacked, data.attacked_images, text)
    clean_pred, attacked_pred = clean_lp.argmax(1), attacked_lp.argmax(1)
    y = data.truth
    typographic = float((attacked_pred == y).float().mean())
    per_class = {}
    for k, label in enumerate(data.labels):
        rows = y == k
        if rows.any():
            per_class[label] = {"clean": round(float((clean_pred[rows] == k).float().mean()), 4),
                                "attacked": round(float((attacked_pred[rows] == k).float().mean()), 4)}
    return {
        "n": data.n,
        "t": t,
        "accuracy": round(typographic, 4),
        "clean_accuracy": round(float((clean_pred == y).float().mean()), 4),
        "typographic_accuracy": round(typographic, 4),
        "attack_success_rate": round(float((attacked_pred == data.written).float().mean()), 4),
        "kl_drift": round(float(kl_to_reference(ref_clean, clean_lp).mean()), 5),
        "per_class": per_class,
    }


def evaluate_synth_policy(policy: Policy, n: int = 1000, seed: int = 2024, t: float = 1.0,
                          cache: EmbeddingCache | None = None) -> dict:
    """The app's promotion gate: :func:`evaluate_policy` on ``n`` held-out synthetic pictures (seed ``seed``)."""
    data = embed_synth_eval(policy.encoder, n, seed, cache, keep_images=policy.trains_on_pixels)
    return evaluate_policy(policy, data, t)


def sweep_strength(policy: Policy, data: EvalEmbeddings, ts: list[float]) -> list[dict]:
    """Clean and attacked accuracy, attack success rate and KL drift for each strength in ``ts``."""
    rows = []
    for t in ts:
        r = evaluate_policy(policy, data, t)
        rows.append({k: r[k] for k in ("t", "clean_accuracy", "typographic_accuracy", "attack_success_rate",
                                       "kl_drift")})
    return rows
