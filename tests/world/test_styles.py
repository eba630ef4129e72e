"""The text-style family: every style renders, says what it writes, and training never sees a held-out font."""

import random
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from poclip.engine.preferences import synth_preferences
from poclip.world import synth
from poclip.world.attacks import HELD_OUT_FONTS, TRAINING_FONTS, AttackError, TextAttack, render
from poclip.world.styles import (
    ATTACK_FAMILIES,
    EVAL_NEUTRAL_WORDS,
    STYLES,
    TRAIN_NEUTRAL_WORDS,
    family_attack,
    styled_attack,
)

LABELS = synth.SHAPES


@pytest.mark.parametrize("style", STYLES)
def test_every_style_renders_and_names_the_wrong_words_it_writes(style):
    a = styled_attack(style, LABELS, "star", random.Random(f"s:{style}"))
    b = styled_attack(style, LABELS, "star", random.Random(f"s:{style}"))
    assert a == b and a.style == style
    img = render(Image.new("RGB", (224, 224), (90, 90, 90)), a.attack)
    assert np.any(np.asarray(img) != 90)
    text = a.attack.text.lower().replace(" ", "").replace("\n", "")
    assert "star" not in a.wrong and all(w in LABELS for w in a.wrong)
    assert all(w.replace(" ", "") in text for w in a.wrong)
    if style == "true":
        assert a.attack.text == "star" and a.wrong == ()
    if style == "neutral":
        assert a.attack.text in TRAIN_NEUTRAL_WORDS and a.wrong == ()


def test_style_looks_differ_as_named():
    rng = lambda s: random.Random(f"look:{s}")  # noqa: E731
    assert styled_attack("upper", LABELS, "star", rng(1)).attack.text[0].isupper()
    assert styled_attack("small", LABELS, "star", rng(2)).attack.size < 16 / 224
    assert styled_attack("faint", LABELS, "star", rng(3)).attack.opacity <= 0.55
    assert styled_attack("patch", LABELS, "star", rng(4)).attack.patch is not None
    assert len(styled_attack("mixed", LABELS, "star", rng(5)).wrong) >= 2
    with pytest.raises(AttackError, match="unknown text style"):
        styled_attack("graffiti", LABELS, "star", rng(6))


def test_a_label_patch_round_trips_and_old_attacks_keep_their_json():
    plain = TextAttack("star")
    assert "patch" not in plain.to_json()  # cache keys and stored attacks from before patches still match
    patched = TextAttack("star", patch="#ffffff")
    assert TextAttack.from_json(patched.to_json()) == patched
    grey = Image.new("RGB", (224, 224), (90, 90, 90))
    assert np.sum(np.asarray(render(grey, patched)) == 255) > np.sum(np.asarray(render(grey, plain)) == 255)
    with pytest.raises(AttackError, match="patch"):
        TextAttack("star", patch="nope").validate()


def test_training_pairs_mix_the_styles_and_never_use_a_held_out_font_or_evaluation_word():
    prefs = synth_preferences(300, seed=0, size=64)
    fonts = Counter(p.attack.font for p in prefs)
    assert set(fonts) <= set(TRAINING_FONTS) and not set(fonts) & set(HELD_OUT_FONTS)
    assert not {p.attack.text for p in prefs} & set(EVAL_NEUTRAL_WORDS)
    true_word = [p for p in prefs if p.attack.text == p.chosen]
    assert len(true_word) > 20 and all(p.rejected is None for p in true_word)
    assert sum(p.rejected is None for p in prefs) < len(prefs) / 2
    paper = synth_preferences(50, seed=0, size=64, styles="paper")
    assert all(p.attack.text == p.rejected and p.rejected != p.chosen for p in paper)


@pytest.mark.parametrize("family", ATTACK_FAMILIES)
def test_every_evaluation_family_renders(family):
    text = family_attack(family, LABELS, "heart", random.Random(f"f:{family}"))
    render(Image.new("RGB", (224, 224)), text.attack)
    if family == "held_out_font":
        assert text.attack.font in HELD_OUT_FONTS
    elif family == "neutral_word":
        assert text.attack.text in EVAL_NEUTRAL_WORDS
    else:
        assert text.attack.font in TRAINING_FONTS
