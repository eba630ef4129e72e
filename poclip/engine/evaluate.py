"""Evaluation: zero-shot accuracy of a CLIP, clean and under typographic attack, base or aligned.

:func:`evaluate_synth` scores a bare backbone. For aligned policies, embed an evaluation set once
(:func:`embed_synth_eval`, or :func:`embed_dataset_eval` for any Hugging Face ``datasets`` image dataset)
and score any number of heads and strengths on it with :func:`evaluate_policy`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from PIL import Image

from poclip.engine.embed_cache import EmbeddingCache, entry_key, image_hash
from poclip.engine.losses import kl_to_reference
from poclip.engine.models import DEFAULT_TEMPLATES, ClipEncoder
from poclip.engine.policy import Policy
from poclip.world import synth
from poclip.world.attacks import TextAttack, random_attack
from poclip.world.styles import StyledText, family_attack


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

class _SynthPictures(Sequence):
    """The clean pictures of a synthetic evaluation set, drawn on demand (a set of 1,000 is not kept in memory)."""

    def __init__(self, seed: int, n: int, size: int = 224) -> None:
        self.seed, self.n, self.size = seed, n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(self.n))]
        # Iteration stops on IndexError: without it list(self) would draw pictures forever.
        if not -self.n <= i < self.n:
            raise IndexError(f"picture {i} of an evaluation set of {self.n}")
        return synth.eval_item(self.seed, i % self.n, "none", self.size).clean


@dataclass
class EvalEmbeddings:
    """An evaluation set, embedded once: clean and attacked pictures of the same items.

    ``truth`` and ``written`` are label indices (``written`` = the first wrong label the text writes, -1 if
    none). ``pictures`` and ``attacks`` let a tower head compute its own inputs (activations at its cut), once
    per cut (:meth:`inputs`).
    """

    labels: list[str]
    template: str
    clean: torch.Tensor
    attacked: torch.Tensor
    truth: torch.Tensor
    written: torch.Tensor
    pictures: Sequence[Image.Image] | None = None
    attacks: list[TextAttack] | None = None
    cache_root: Path | None = None
    hashes: list[str] | None = None  # the pictures' content hashes (:func:`image_hash`), kept with the pictures
    _inputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        return len(self.truth)

    def inputs(self, policy: Policy) -> tuple[torch.Tensor, torch.Tensor]:
        """(clean, attacked) inputs of ``policy``'s head: the embeddings, or activations at its cut."""
        if policy.cut == "embedding":
            return self.clean, self.attacked
        if policy.cut not in self._inputs:
            if self.pictures is None or self.attacks is None or self.hashes is None:
                raise ValueError("a tower head needs the pictures: embed the set with keep_images=True")
            cache = policy.make_cache(self.cache_root)
            # Looked up by hash: a picture is drawn (or opened) only when its entry is missing.
            self._inputs[policy.cut] = tuple(
                cache.embed_known([entry_key(h, a) for h, a in zip(self.hashes, attacks, strict=True)],
                                  self.pictures, attacks)
                for attacks in ([None] * self.n, self.attacks))
        return self._inputs[policy.cut]


def embed_synth_eval(
    encoder: ClipEncoder,
    n: int = 1000,
    seed: int = 2024,
    cache: EmbeddingCache | None = None,
    keep_images: bool = True,
    template: str = synth.DEFAULT_TEMPLATE,
    family: str = "paper",
) -> EvalEmbeddings:
    """Embed ``n`` synthetic evaluation items (seed ``seed``) clean and with text of attack ``family``.

    The same ``seed`` gives the same clean pictures for every family; the ``paper`` family is the attack of
    :func:`poclip.world.synth.eval_item`, others draw their text from ``eval-text:{family}:{seed}:{i}``.
    Pictures are drawn again on demand for tower heads (``keep_images``), never all held in memory.
    """
    return embed_synth_families(encoder, n, seed, (family,), cache, keep_images, template)[family]


def embed_synth_families(
    encoder: ClipEncoder,
    n: int,
    seed: int,
    families: Sequence[str],
    cache: EmbeddingCache | None = None,
    keep_images: bool = True,
    template: str = synth.DEFAULT_TEMPLATE,
) -> dict[str, EvalEmbeddings]:
    """:func:`embed_synth_eval` for each of ``families`` (family -> set): the pictures are drawn and hashed once for
    all of them, and a tower head's inputs are then looked up by those hashes, without drawing (on a cache miss,
    only the missing pictures are drawn again)."""
    if n <= 0:
        raise ValueError("n must be positive")
    cache = cache if cache is not None else EmbeddingCache(encoder)
    labels = list(synth.SHAPES)
    scenes = [synth.eval_scene(seed, i) for i in range(n)]
    pictures = [synth.draw_scene(scene) for scene, _ in scenes]
    hashes = [image_hash(picture) for picture in pictures]
    clean = cache.embed_known([entry_key(h) for h in hashes], pictures, [None] * n)
    truth = torch.tensor([labels.index(scene.shape) for scene, _ in scenes])
    out = {}
    for family in families:
        texts = [StyledText("wrong", paper, (paper.text,)) if family == "paper" else
                 family_attack(family, labels, scene.shape, random.Random(f"eval-text:{family}:{seed}:{i}"))
                 for i, (scene, paper) in enumerate(scenes)]
        attacks = [t.attack for t in texts]
        attacked = cache.embed_known([entry_key(h, a) for h, a in zip(hashes, attacks, strict=True)], pictures,
                                     attacks)
        out[family] = EvalEmbeddings(
            labels, template, clean, attacked, truth,
            torch.tensor([labels.index(t.wrong[0]) if t.wrong else -1 for t in texts]),
            _SynthPictures(seed, n) if keep_images else None,
            attacks if keep_images else None,
            cache.root,
            hashes if keep_images else None,
        )
    return out


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
    hashes = [image_hash(image) for image in images]
    clean = cache.embed_known([entry_key(h) for h in hashes], images, [None] * len(images))
    attacked = cache.embed_known([entry_key(h, a) for h, a in zip(hashes, attacks, strict=True)], images, attacks)
    return EvalEmbeddings(
        names, template, clean, attacked, torch.tensor(truth), torch.tensor(written),
        images if keep_images else None, attacks if keep_images else None,
        cache.root, hashes if keep_images else None,
    )


def _policy_log_probs(policy: Policy, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.log_softmax(policy.logits(x[i : i + 512], text), dim=-1) for i in range(0, len(x), 512)])


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
        clean_x, attacked_x = data.inputs(policy)
        clean_lp = _policy_log_probs(head, clean_x, text)
        attacked_lp = _policy_log_probs(head, attacked_x, text)
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


@torch.no_grad()
def typographic_accuracy(policy: Policy | None, data: EvalEmbeddings, encoder: ClipEncoder | None = None) -> float:
    """The share of ``data``'s attacked pictures ``policy`` (``None`` = the base model of ``encoder``) classifies
    right: :func:`evaluate_policy`'s ``typographic_accuracy`` without its pass over the clean pictures, for a set
    whose clean pictures were scored already (the same pictures in another attack family)."""
    encoder = policy.encoder if policy is not None else encoder
    if encoder is None:
        raise ValueError("pass a policy or the encoder of the base model")
    text = encoder.classifier(data.labels, (data.template,))
    if policy is None:
        attacked_lp = encoder.log_probs(data.attacked, text)
    else:
        attacked_lp = _policy_log_probs(policy, data.inputs(policy)[1], text)
    return round(float((attacked_lp.argmax(1) == data.truth).float().mean()), 4)


def evaluate_synth_policy(policy: Policy, n: int = 1000, seed: int = 2024, t: float = 1.0,
                          cache: EmbeddingCache | None = None) -> dict:
    """The app's promotion gate: :func:`evaluate_policy` on ``n`` held-out synthetic pictures (seed ``seed``)."""
    return evaluate_policy(policy, embed_synth_eval(policy.encoder, n, seed, cache), t)


def sweep_strength(policy: Policy, data: EvalEmbeddings, ts: list[float]) -> list[dict]:
    """Clean and attacked accuracy, attack success rate and KL drift for each strength in ``ts``."""
    rows = []
    for t in ts:
        r = evaluate_policy(policy, data, t)
        rows.append({k: r[k] for k in ("t", "clean_accuracy", "typographic_accuracy", "attack_success_rate",
                                       "kl_drift")})
    return rows
