"""The text-style family: the kinds of writing a picture can carry, for training pairs and for evaluation.

Training on one style only (a single lower-case wrong class word) lets a model learn the shortcut "the written
class is never the answer". Drawing the text from a family of styles rules that out: the true class word and
neutral words are written too, so the only rule that fits every pair is "ignore the writing".

Styles (:data:`STYLES`):
    ``wrong``    one wrong class word, the paper's style (:func:`~poclip.world.attacks.random_attack`)
    ``true``     the true class word
    ``neutral``  a word that names no class (:data:`TRAIN_NEUTRAL_WORDS`; evaluation uses :data:`EVAL_NEUTRAL_WORDS`)
    ``repeat``   the same wrong word two or three times
    ``mixed``    two or three different wrong words
    ``upper``    a wrong word in upper or title case
    ``spaced``   a wrong word with its letters spaced out
    ``small``    a wrong word 8-15 px high at 224 px
    ``faint``    a wrong word at 25-55 % opacity
    ``patch``    a wrong word in dark ink on a light label patch

Attack *families* (:data:`ATTACK_FAMILIES`) group the styles as people meet them: the rows of the evaluation
tables and the kinds of annotation items (:func:`family_attack`).

Every attack is a plain :class:`~poclip.world.attacks.TextAttack`, so it is stored, rendered and cached like
any other. Fonts come from ``fonts`` (the training fonts unless a caller asks for held-out ones).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

from poclip.world.attacks import (
    ATTACK_COLOURS,
    HELD_OUT_FONTS,
    TRAINING_FONTS,
    AttackError,
    TextAttack,
    random_attack,
)

STYLES: tuple[str, ...] = ("wrong", "true", "neutral", "repeat", "mixed", "upper", "spaced", "small", "faint", "patch")
# The mix the synthetic pair generator and the app's augmentation draw from: the paper's style stays the most
# common, every other style appears often enough to break the "written class = wrong" shortcut.
STYLE_WEIGHTS: dict[str, float] = {
    "wrong": 0.25, "true": 0.15, "neutral": 0.1, "repeat": 0.08, "mixed": 0.08, "upper": 0.08, "spaced": 0.06,
    "small": 0.07, "faint": 0.07, "patch": 0.06,
}
# Disjoint word lists, so the neutral-word evaluation measures words training never wrote.
TRAIN_NEUTRAL_WORDS: tuple[str, ...] = ("sale", "open", "stop", "hello", "exit", "love", "ipod", "free", "menu")
EVAL_NEUTRAL_WORDS: tuple[str, ...] = ("cafe", "taxi", "river", "paper", "music", "north", "lemon", "ticket")
SMALL_SIZE_RANGE = (8 / 224, 15 / 224)
FAINT_OPACITY_RANGE = (0.25, 0.55)
PATCH_COLOURS = ("#ffffff", "#f4ecc8", "#f0d020", "#dddddd")
PATCH_INK = ("#000000", "#202020", "#2040e0", "#e02020")


@dataclass(frozen=True)
class StyledText:
    """An attack of one style and what it writes: ``wrong`` = the wrong labels written (may be empty)."""

    style: str
    attack: TextAttack
    wrong: tuple[str, ...]


def sample_style(rng: random.Random, weights: dict[str, float] | None = None) -> str:
    """A style drawn with ``weights`` (default :data:`STYLE_WEIGHTS`)."""
    weights = weights or STYLE_WEIGHTS
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def styled_attack(
    style: str,
    labels: Sequence[str],
    true_label: str,
    rng: random.Random,
    fonts: Sequence[str] = TRAINING_FONTS,
    neutral_words: Sequence[str] = TRAIN_NEUTRAL_WORDS,
) -> StyledText:
    """An attack of ``style`` on a picture of ``true_label`` (label set ``labels``), deterministic in ``rng``.

    Placement, size, colours and outline start from the paper's random attack; the style then changes the
    text or its look. Raises :class:`~poclip.world.attacks.AttackError` for an unknown style or a label
    set with no wrong label.
    """
    if style not in STYLES:
        raise AttackError(f"unknown text style {style!r}; choose one of {', '.join(STYLES)}")
    wrong_labels = [label for label in labels if label != true_label]
    base = replace(random_attack(labels, true_label, rng), font=rng.choice(tuple(fonts)))
    word = base.text
    if style == "wrong":
        return StyledText(style, base, (word,))
    if style == "true":
        return StyledText(style, replace(base, text=true_label), ())
    if style == "neutral":
        return StyledText(style, replace(base, text=rng.choice(tuple(neutral_words))), ())
    if style == "repeat":
        sep = rng.choice((" ", "\n"))
        return StyledText(style, replace(base, text=sep.join([word] * rng.randint(2, 3))), (word,))
    if style == "mixed":
        words = rng.sample(wrong_labels, min(len(wrong_labels), rng.randint(2, 3)))
        return StyledText(style, replace(base, text=rng.choice((" ", "\n")).join(words)), tuple(words))
    if style == "upper":
        return StyledText(style, replace(base, text=word.upper() if rng.random() < 0.7 else word.title()), (word,))
    if style == "spaced":
        text = " ".join(word.upper() if rng.random() < 0.5 else word)
        return StyledText(style, replace(base, text=text), (word,))
    if style == "small":
        return StyledText(style, replace(base, size=round(rng.uniform(*SMALL_SIZE_RANGE), 4)), (word,))
    if style == "faint":
        return StyledText(style, replace(base, opacity=round(rng.uniform(*FAINT_OPACITY_RANGE), 3)), (word,))
    # patch: dark ink on a light label, no outline, as on a price tag or a sticker
    return StyledText(style, replace(base, patch=rng.choice(PATCH_COLOURS), fill=rng.choice(PATCH_INK),
                                     stroke_width=0.0, stroke=ATTACK_COLOURS["black"]), (word,))


# The families of writing, as the evaluation tables' rows and the annotation items name them.
ATTACK_FAMILIES: tuple[str, ...] = (
    "paper", "held_out_font", "upper_case", "several_words", "true_word", "neutral_word", "low_opacity",
    "small_text", "label_patch",
)
_FAMILY_STYLES: dict[str, tuple[str, ...]] = {
    "held_out_font": ("wrong",), "upper_case": ("upper",), "several_words": ("repeat", "mixed"),
    "true_word": ("true",), "neutral_word": ("neutral",), "low_opacity": ("faint",), "small_text": ("small",),
    "label_patch": ("patch",),
}


# The families a choice of the project may look at: all but the held-out font, whose fonts stay out of training
# and out of the gate, so it remains a clean test of generalization.
SEEN_FAMILIES: tuple[str, ...] = tuple(f for f in ATTACK_FAMILIES if f != "held_out_font")


def check_families(families: Sequence[str], variable: str) -> tuple[str, ...]:
    """``families`` as a tuple if it is not empty and each is one of :data:`SEEN_FAMILIES`; else an
    :class:`~poclip.world.attacks.AttackError` naming ``variable`` and the choices."""
    unknown = [f for f in families if f not in SEEN_FAMILIES]
    if unknown or not families:
        raise AttackError(f"{variable}: {', '.join(unknown) or 'none given'}; choose from {', '.join(SEEN_FAMILIES)}")
    return tuple(families)


def family_attack(family: str, labels: Sequence[str], true_label: str, rng: random.Random, *,
                  held_out: bool = True) -> StyledText:
    """The text of attack family ``family`` (:data:`ATTACK_FAMILIES`) for a picture of ``true_label``.

    ``paper`` is the paper's attack; ``held_out_font`` the same in a font no training attack uses;
    ``several_words`` is the same wrong word two or three times or two or three different wrong words, half
    each. With ``held_out`` (evaluation), ``neutral_word`` writes words training never wrote
    (:data:`EVAL_NEUTRAL_WORDS`); without it (annotation items, which are trained on) the training words, and
    ``held_out_font`` is refused.

    Raises:
        AttackError: an unknown family (or ``held_out_font`` without ``held_out``).
    """
    if family == "paper":
        attack = random_attack(labels, true_label, rng)
        return StyledText("wrong", attack, (attack.text,))
    if family not in _FAMILY_STYLES or (family == "held_out_font" and not held_out):
        choices = ATTACK_FAMILIES if held_out else [f for f in ATTACK_FAMILIES if f != "held_out_font"]
        raise AttackError(f"unknown attack family {family!r}; choose one of {', '.join(choices)}")
    styles = _FAMILY_STYLES[family]
    style = styles[0] if len(styles) == 1 else rng.choice(styles)
    fonts = HELD_OUT_FONTS if family == "held_out_font" else TRAINING_FONTS
    return styled_attack(style, labels, true_label, rng, fonts, EVAL_NEUTRAL_WORDS if held_out else TRAIN_NEUTRAL_WORDS)
