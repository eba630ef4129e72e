"""The ``reading`` evaluation family: word-only signs whose written word is the right answer.

A defense that makes a CLIP ignore writing everywhere has thrown away a skill: a sign that says "star" *is*
best described as a star. These are the synthetic world's signs (a background with a word, no object, as in
its pretraining stream), each writing one label of the shape set in the paper's attack style; the answer is
the written label. Stream ``reading:{seed}:{i}``, classes balanced, disjoint from every training stream.
"""

from __future__ import annotations

import random
from dataclasses import replace

from PIL import Image

from poclip.world import synth
from poclip.world.styles import styled_attack

READING_SEED = 2024


def reading_sign(seed: int, index: int, size: int = 224) -> tuple[Image.Image, str]:
    """Sign ``index`` of stream ``seed``: (picture, the label it writes)."""
    rng = random.Random(f"reading:{seed}:{index}")
    word = synth.SHAPES[index % len(synth.SHAPES)]
    scene = replace(synth.sample_scene(rng, shape=word), show_object=False)
    text = styled_attack("true", synth.SHAPES, word, rng).attack
    return synth.draw_scene(replace(scene, text=text), size), word


def reading_set(n: int, seed: int = READING_SEED) -> tuple[list[Image.Image], list[str]]:
    """``n`` signs and their words (the right answers)."""
    if n <= 0:
        raise ValueError("n must be positive")
    signs = [reading_sign(seed, i) for i in range(n)]
    return [s[0] for s in signs], [s[1] for s in signs]
