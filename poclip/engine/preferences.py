"""Preference data: the triples a head trains on, the clean pictures that anchor it, and synthetic ones of both.

A :class:`Preference` says that on a picture (with text written on it, if any) one label beats another; a
:class:`CleanImage` is a picture whose label distribution should stay the base model's (the KL regularizer) and,
with text, a row of the text-invariance term. :func:`synth_preferences` and :func:`synth_clean` draw both from
the synthetic world, with text from the style family (:mod:`poclip.world.styles`) or in the paper's style.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image

from poclip.engine.embed_cache import Picture, StoredPicture
from poclip.errors import UserError
from poclip.world import synth
from poclip.world.attacks import TextAttack
from poclip.world.styles import STYLE_WEIGHTS, sample_style, styled_attack
from poclip.world.synth import DEFAULT_TEMPLATE


class TrainingDataError(UserError):
    """Preference data that cannot be trained on; the message says which item and why."""


@dataclass(frozen=True)
class Preference:
    """One preference triple: on ``image`` (with ``attack`` written on it, if any) ``chosen`` beats ``rejected``.

    ``image`` is a picture, a :class:`~poclip.engine.embed_cache.StoredPicture` (opened only on a cache
    miss) or a cache key (:func:`poclip.engine.embed_cache.entry_key`; no invariance term then, since the
    clean picture is unknown). ``rejected=None`` means the reference model's strongest wrong answer on the
    texted picture: the pair for text that names the true class or no class.
    """

    image: Picture | str = field(repr=False)
    chosen: str
    rejected: str | None
    labels: tuple[str, ...]
    template: str = DEFAULT_TEMPLATE
    attack: TextAttack | None = None


@dataclass(frozen=True)
class CleanImage:
    """A clean regularization picture and the label set whose distribution must stay the base model's.

    ``attack``: text to write on it for the text-invariance term (the policy on the texted picture is pulled to
    its own prediction on the clean one). That term needs no label, so any clean picture can teach "ignore the
    writing"; ``None`` = the picture serves the KL regularizer only.
    """

    image: Picture | str = field(repr=False)
    labels: tuple[str, ...]
    template: str = DEFAULT_TEMPLATE
    attack: TextAttack | None = None


def check_preference(k: int, p: Preference) -> None:
    """Raise :class:`TrainingDataError` naming pair ``k`` and the reason when ``p`` cannot be trained on."""
    where = f"preference {k}"
    if not isinstance(p.image, Image.Image | StoredPicture | str):
        raise TrainingDataError(f"{where}: image must be a PIL image, a stored picture or a cache key, "
                                f"got {type(p.image)}")
    if len(set(p.labels)) != len(p.labels) or len(p.labels) < 2:
        raise TrainingDataError(f"{where}: the label set needs at least two distinct labels, got {list(p.labels)}")
    if p.chosen not in p.labels or (p.rejected is not None and p.rejected not in p.labels):
        raise TrainingDataError(f"{where}: chosen {p.chosen!r} and rejected {p.rejected!r} must both be in the "
                                f"label set {list(p.labels)}")
    if p.chosen == p.rejected:
        raise TrainingDataError(f"{where}: chosen and rejected are the same label {p.chosen!r}")
    if "{}" not in p.template:
        raise TrainingDataError(f"{where}: the template {p.template!r} has no {{}} for the label")


def as_clean(items: Sequence[CleanImage | Picture | str], default: Preference) -> list[CleanImage]:
    """``items`` as :class:`CleanImage`; a bare picture or cache key takes ``default``'s label set and template."""
    out = []
    for item in items:
        if isinstance(item, CleanImage):
            out.append(item)
        else:  # a bare picture keeps the distribution over the first pair's label set
            out.append(CleanImage(item, tuple(default.labels), default.template))
    return out




def _styled_text(labels: Sequence[str], true_label: str, rng: random.Random, styles: str):
    if styles not in ("family", "paper"):
        raise ValueError(f"styles must be 'family' or 'paper', got {styles!r}")
    return styled_attack(sample_style(rng, STYLE_WEIGHTS) if styles == "family" else "wrong", labels, true_label, rng)


def styled_preference(image: Picture, true_label: str, labels: Sequence[str], rng: random.Random,
                      styles: str = "family", template: str = DEFAULT_TEMPLATE) -> Preference:
    """A pair for ``image`` (of ``true_label``) with text drawn from the style family (or the paper's style).

    Chosen = the true label; rejected = a wrong label the text writes, or ``None`` (the reference's
    strongest wrong answer) when the text names the true class or no class. ``styles``: ``family``
    (:data:`~poclip.world.styles.STYLE_WEIGHTS`) or ``paper`` (one wrong class word).
    """
    text = _styled_text(labels, true_label, rng, styles)
    return Preference(image, true_label, text.wrong[0] if text.wrong else None, tuple(labels), template, text.attack)


def synth_preferences(n: int, seed: int = 0, size: int = 224, styles: str = "family") -> list[Preference]:
    """``n`` typographic pairs from the synthetic world: a clean scene plus text (:func:`styled_preference`).

    Labels = all shapes. Pictures come from ``random.Random(f"pairs:{seed}:{i}")``, a stream disjoint from
    the evaluation sets' ``eval:`` seeds. ``styles="paper"`` gives the paper's pairs (one wrong word each).
    """
    out = []
    for i in range(n):
        rng = random.Random(f"pairs:{seed}:{i}")
        scene = synth.sample_scene(rng)
        out.append(styled_preference(synth.draw_scene(scene, size), scene.shape, synth.SHAPES, rng, styles))
    return out


def synth_clean(n: int, seed: int = 0, size: int = 224, styles: str | None = "family") -> list[CleanImage]:
    """``n`` clean regularization scenes (stream ``clean:{seed}:{i}``) over the shape label set.

    ``styles`` (``family`` or ``paper``) also draws text for each scene's invariance row (stream
    ``clean-text:{seed}:{i}``); ``None`` gives the paper's bare clean pictures.
    """
    out = []
    for i in range(n):
        scene = synth.sample_scene(random.Random(f"clean:{seed}:{i}"))
        attack = None
        if styles is not None:
            attack = _styled_text(synth.SHAPES, scene.shape, random.Random(f"clean-text:{seed}:{i}"), styles).attack
        out.append(CleanImage(synth.draw_scene(scene, size), synth.SHAPES, DEFAULT_TEMPLATE, attack))
    return out
