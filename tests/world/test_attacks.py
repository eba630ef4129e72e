import json
import random

import numpy as np
import pytest
from PIL import Image

from poclip.world.attacks import FONTS, AttackError, TextAttack, random_attack, render, to_hex


def grey(size=(224, 224)):
    return Image.new("RGB", size, (128, 128, 128))


def changed(a: Image.Image, b: Image.Image) -> np.ndarray:
    return np.any(np.asarray(a) != np.asarray(b), axis=-1)


def test_render_is_deterministic_and_json_round_trip_gives_identical_pixels():
    attack = random_attack(["circle", "star", "heart"], "circle", 7)
    first = render(grey(), attack)
    again = render(grey(), TextAttack.from_json(attack.to_json()))
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert changed(first, grey()).sum() > 100


def test_random_attack_is_seeded_and_paper_style():
    labels = ["circle", "star", "heart", "square"]
    a, b = random_attack(labels, "star", 3), random_attack(labels, "star", 3)
    assert a == b
    samples = [random_attack(labels, "star", random.Random(s)) for s in range(200)]
    assert all(s.text != "star" and s.text in labels for s in samples)
    assert all(20 / 224 - 1e-4 <= s.size <= 40 / 224 + 1e-4 for s in samples)
    assert all(s.fill != s.stroke for s in samples)
    assert len({s.fill for s in samples}) == 8
    assert len({(s.x, s.y) for s in samples}) > 150


@pytest.mark.parametrize("x,y", [(0.0, 0.0), (1.0, 1.0), (0.99, 0.5), (0.5, 0.02)])
def test_text_near_the_border_is_moved_inside_not_cut(x, y):
    centred = changed(render(grey(), TextAttack("hexagon", size=0.15, x=0.5, y=0.5)), grey()).sum()
    corner = changed(render(grey(), TextAttack("hexagon", size=0.15, x=x, y=y)), grey()).sum()
    # Same number of inked pixels wherever it is placed: nothing fell off the edge.
    assert abs(int(corner) - int(centred)) <= 0.02 * centred


def test_oversized_size_shrinks_to_fit_and_auto_fit_fills_width():
    img = render(grey((200, 100)), TextAttack("a very long line of text", size=0.9))
    cols = np.where(changed(img, grey((200, 100))).any(axis=0))[0]
    assert cols.min() >= 0 and cols.max() <= 199
    auto = render(grey(), TextAttack("star", size=None))
    cols = np.where(changed(auto, grey()).any(axis=0))[0]
    assert cols.max() - cols.min() > 0.6 * 224


def test_unicode_multiline_rotation_and_every_font_render():
    for font in FONTS:
        img = render(grey(), TextAttack("Ωμέγα café\nПривет", font=font, rotation=30))
        assert changed(img, grey()).sum() > 200


def test_opacity_zero_changes_nothing_and_half_blends():
    assert changed(render(grey(), TextAttack("star", opacity=0.0)), grey()).sum() == 0
    half = np.asarray(render(grey(), TextAttack("star", fill="#ffffff", stroke_width=0, opacity=0.5)))
    assert half.max() < 255 and half.max() > 150


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"text": ""}, "empty"),
        ({"text": "   \n "}, "empty"),
        ({"text": "x" * 201}, "at most 200"),
        ({"text": "star", "font": "comic"}, "Unknown font"),
        ({"text": "star", "fill": "blurple"}, "colour"),
        ({"text": "star", "x": 1.5}, "outside 0-1"),
        ({"text": "star", "opacity": 2}, "Opacity"),
    ],
)
def test_bad_attacks_get_clear_errors(kwargs, message):
    with pytest.raises(AttackError, match=message):
        render(grey(), TextAttack(**kwargs))


def test_json_errors_are_clear():
    with pytest.raises(AttackError, match="not valid JSON"):
        TextAttack.from_json("{nope")
    with pytest.raises(AttackError, match="Unknown attack field"):
        TextAttack.from_json(json.dumps({"text": "a", "colour": "red"}))


def test_colour_formats_from_the_browser_are_accepted():
    assert to_hex("rgba(255, 0, 16, 1)") == "#ff0010"
    assert to_hex("#abc") == "#aabbcc"
    assert to_hex("Red") == "#e02020"
