"""Head inputs for training: every picture's input looked up once, the label sets as one prompt bank, and the
reference log-probabilities.

:func:`prepare` turns preference triples and clean pictures into the tensors the loop reads
(:class:`Prepared`): head inputs through a cache (embeddings for the linear head, the frozen trunk's
activations at the cut for tower heads), the clean self of each texted picture for the text-invariance term,
each item's label set as indices into one bank of prompt embeddings, and log pi_ref(y|x) from the base policy.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from poclip.engine.embed_cache import EmbeddingCache, Picture, entry_key
from poclip.engine.policy import Policy
from poclip.engine.preferences import CleanImage, Preference
from poclip.world.attacks import TextAttack


class _LabelBank:
    """All prompts of all label sets, so items with different label sets share one text-embedding matrix.

    Each item gets a row of prompt indices (padded to the largest label set) and a mask of real labels.
    """

    def __init__(self) -> None:
        self.prompts: dict[str, int] = {}
        self.rows: list[list[int]] = []

    def add(self, labels: Sequence[str], template: str) -> None:
        self.rows.append([self.prompts.setdefault(template.format(label), len(self.prompts)) for label in labels])

    def tensors(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.rows[start:stop]
        width = max(len(r) for r in rows)
        idx = torch.tensor([r + [0] * (width - len(r)) for r in rows], dtype=torch.long)
        mask = torch.tensor([[True] * len(r) + [False] * (width - len(r)) for r in rows])
        return idx, mask


def data_fingerprint(pref_keys: Sequence[str], prefs: Sequence[Preference], clean_keys: Sequence[str],
                     clean: Sequence[CleanImage]) -> str:
    """sha256 over every pair (picture key, chosen, rejected, labels, template) and clean picture, in order."""
    digest = hashlib.sha256()
    for key, p in zip(pref_keys, prefs, strict=True):
        digest.update(json.dumps([key, p.chosen, p.rejected, list(p.labels), p.template]).encode())
    digest.update(b"|clean|")
    for key, c in zip(clean_keys, clean, strict=True):
        digest.update(json.dumps([key, list(c.labels), c.template]).encode())
    return digest.hexdigest()[:20]


def _keys(items: Sequence[Picture | str], attacks: Sequence[TextAttack | None]) -> list[str]:
    return [img if isinstance(img, str) else entry_key(img, atk) for img, atk in zip(items, attacks, strict=True)]


def _lookup(cache: EmbeddingCache, images: Sequence[Picture | str], attacks: Sequence[TextAttack | None],
            keys: Sequence[str]) -> torch.Tensor:
    # Keys for what is cached (no re-hash, no render, no file opened) and pictures only for what is new.
    return cache.embed_known(keys, images, attacks)


def label_log_probs(logits: torch.Tensor, idx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log pi(y|x) over each item's own label set: logits against every prompt, gathered, padding masked."""
    return torch.log_softmax(logits.gather(1, idx).masked_fill(~mask, float("-inf")), dim=-1)


@torch.no_grad()
def _reference_log_probs(policy: Policy, x: torch.Tensor, text_bank: torch.Tensor, idx: torch.Tensor,
                         mask: torch.Tensor) -> torch.Tensor:
    # The reference is the base policy, the same head at strength 0: one definition of pi(y|x) for both.
    base = policy.with_strength(0.0)
    return torch.cat([label_log_probs(base.logits(x[i : i + 512], text_bank), idx[i : i + 512], mask[i : i + 512])
                      for i in range(0, len(x), 512)])


@dataclass
class Prepared:
    """Everything the loop needs, as tensors: ``pairs`` (x, x_clean, inv, idx, mask, ref, chosen, rejected)
    and ``clean`` (x, x_text, inv, idx, mask, ref), with the text embeddings of every prompt."""

    text_bank: torch.Tensor
    pairs: dict[str, torch.Tensor]
    clean: dict[str, torch.Tensor] | None
    fingerprint: str
    seconds: float
    hits: int
    misses: int


@dataclass
class HeadInputs:
    """The head inputs of a run's pictures (:func:`head_inputs`): ``x`` of the pairs and their clean selves
    ``x_clean`` (rows ``inv``), ``cx`` of the clean pictures and their texted versions ``cx_text`` (rows ``cinv``),
    with the pairs' and clean pictures' cache keys."""

    x: torch.Tensor
    x_clean: torch.Tensor
    inv: list[bool]
    cx: torch.Tensor | None
    cx_text: torch.Tensor | None
    cinv: list[bool]
    pref_keys: list[str]
    clean_keys: list[str]


def head_inputs(preferences: Sequence[Preference], clean_items: Sequence[CleanImage], cache: EmbeddingCache,
                clean_selves: bool = True) -> HeadInputs:
    """Every picture's head input through ``cache``: one tower (trunk) pass per picture not already in it. Exactly
    what :func:`prepare` looks up, so calling it ahead (while idle) leaves a run nothing to compute here.

    With ``clean_selves`` a pair's clean self (its picture without the text) and a clean picture's texted
    version (its ``attack``) are looked up too, for the text-invariance term.
    """
    images = [p.image for p in preferences]
    pref_keys = _keys(images, [p.attack for p in preferences])
    clean_keys = _keys([c.image for c in clean_items], [None] * len(clean_items))
    x = _lookup(cache, images, [p.attack for p in preferences], pref_keys)
    # The invariance term needs each texted picture's clean self: known unless the pair gave only a cache key.
    inv = [clean_selves and p.attack is not None and not isinstance(p.image, str) for p in preferences]
    inv_rows = [i for i, ok in enumerate(inv) if ok]
    x_clean = torch.zeros_like(x)
    if inv_rows:
        rows_images = [images[i] for i in inv_rows]
        x_clean[inv_rows] = _lookup(cache, rows_images, [None] * len(inv_rows), _keys(rows_images, [None] * len(
            inv_rows)))
    cx = _lookup(cache, [c.image for c in clean_items], [None] * len(clean_items), clean_keys) \
        if clean_items else None
    # Clean pictures with text add invariance rows (texted vs clean self) without a preference.
    cinv = [clean_selves and c.attack is not None and not isinstance(c.image, str) for c in clean_items]
    cx_text = torch.zeros_like(cx) if cx is not None else None
    if any(cinv):
        rows = [i for i, ok in enumerate(cinv) if ok]
        rows_images, rows_attacks = [clean_items[i].image for i in rows], [clean_items[i].attack for i in rows]
        cx_text[rows] = _lookup(cache, rows_images, rows_attacks, _keys(rows_images, rows_attacks))
    return HeadInputs(x, x_clean, inv, cx, cx_text, cinv, pref_keys, clean_keys)


def prepare(policy: Policy, preferences: Sequence[Preference], clean_items: Sequence[CleanImage],
            cache: EmbeddingCache, clean_selves: bool = True) -> Prepared:
    """Head inputs of every picture (:func:`head_inputs`, through ``cache``), reference log-probs, and resolved
    rejected labels."""
    started = time.perf_counter()
    hits0, misses0 = cache.hits, cache.misses
    inputs = head_inputs(preferences, clean_items, cache, clean_selves)
    x, x_clean, inv, cx, cx_text, cinv = inputs.x, inputs.x_clean, inputs.inv, inputs.cx, inputs.cx_text, inputs.cinv
    pref_keys, clean_keys = inputs.pref_keys, inputs.clean_keys

    bank = _LabelBank()
    for p in preferences:
        bank.add(p.labels, p.template)
    for c in clean_items:
        bank.add(c.labels, c.template)
    text_bank = policy.encoder.encode_texts(list(bank.prompts))
    idx, mask = bank.tensors(0, len(preferences))
    ref = _reference_log_probs(policy, x, text_bank, idx, mask)
    chosen = torch.tensor([p.labels.index(p.chosen) for p in preferences])
    # rejected=None: the reference's strongest wrong answer on the texted picture.
    runner_up = ref.scatter(1, chosen[:, None], float("-inf")).argmax(1)
    rejected = torch.tensor([p.labels.index(p.rejected) if p.rejected is not None else int(runner_up[i])
                             for i, p in enumerate(preferences)])
    pairs = {"x": x, "x_clean": x_clean, "inv": torch.tensor(inv), "idx": idx, "mask": mask, "ref": ref,
             "chosen": chosen, "rejected": rejected}
    clean = None
    if cx is not None:
        cidx, cmask = bank.tensors(len(preferences), len(preferences) + len(clean_items))
        clean = {"x": cx, "x_text": cx_text, "inv": torch.tensor(cinv), "idx": cidx, "mask": cmask,
                 "ref": _reference_log_probs(policy, cx, text_bank, cidx, cmask)}
    # The fingerprint names the resolved rejected labels, so it says exactly what was trained on.
    resolved = [p if p.rejected is not None else Preference(p.image, p.chosen, p.labels[int(r)], p.labels,
                                                              p.template, p.attack)
                for p, r in zip(preferences, rejected, strict=True)]
    fingerprint = data_fingerprint(pref_keys, resolved, [k if c.attack is None else f"{k}+{entry_key(k, c.attack)}"
                                                         for k, c in zip(clean_keys, clean_items, strict=True)],
                                   clean_items)
    return Prepared(text_bank, pairs, clean, fingerprint, time.perf_counter() - started,
                    cache.hits - hits0, cache.misses - misses0)
