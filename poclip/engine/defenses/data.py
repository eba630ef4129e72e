"""The pictures defenses are built on: PO-CLIP's training budget, and a calibration set no evaluation uses.

Streams (each picture a pure function of its seed and index, as everywhere in the synthetic world):
    ``pairs:0:i``, ``clean:0:i``      training (:func:`poclip.engine.train.synth_preferences` / ``synth_clean``),
                                      the same 1,000 + 1,000 pictures PO-CLIP's heads train on
    ``calibration:7:i``              :func:`calibration_set`: what training-free defenses choose their
                                      settings on; evaluation draws from ``eval:2024:i`` and never from here
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from PIL import Image

from poclip.engine.preferences import CleanImage, Preference, synth_clean, synth_preferences
from poclip.world import synth
from poclip.world.attacks import render
from poclip.world.styles import sample_style, styled_attack

PAIRS, CLEAN, SEED = 1000, 1000, 0  # PO-CLIP's retrain budget, given to every trained defense
CALIBRATION_SEED = 7
CALIBRATION_N = 200


@lru_cache(maxsize=2)
def training_data(pairs: int = PAIRS, clean: int = CLEAN, seed: int = SEED
                  ) -> tuple[tuple[Preference, ...], tuple[CleanImage, ...]]:
    """PO-CLIP's synthetic training budget: ``pairs`` texted pairs and ``clean`` pictures (style family, ``seed``).

    Memoised, so the defenses built in one process draw the pictures once.
    """
    return tuple(synth_preferences(pairs, seed)), tuple(synth_clean(clean, seed))


@dataclass(frozen=True)
class Calibration:
    """Pictures to choose a defense's settings on: each object clean and with text of the training style family.

    ``truth`` holds label indices into ``labels``; ``written`` the text on each attacked picture.
    """

    labels: tuple[str, ...]
    clean: list[Image.Image] = field(repr=False)
    attacked: list[Image.Image] = field(repr=False)
    truth: torch.Tensor
    written: tuple[str, ...]

    @property
    def n(self) -> int:
        return len(self.truth)

    def accuracy(self, log_probs: torch.Tensor) -> float:
        """Share of rows of ``log_probs`` ``[n, labels]`` whose argmax is the truth."""
        return float((log_probs.argmax(1) == self.truth).float().mean())


@lru_cache(maxsize=2)
def calibration_set(n: int = CALIBRATION_N, seed: int = CALIBRATION_SEED) -> Calibration:
    """``n`` calibration objects (stream ``calibration:{seed}:{i}``), classes balanced.

    Text is drawn like training text (the style family, training fonts, training neutral words), so nothing
    chosen here has seen the evaluation's held-out font or neutral words.
    """
    labels = synth.SHAPES
    clean, attacked, truth, written = [], [], [], []
    for i in range(n):
        rng = random.Random(f"calibration:{seed}:{i}")
        scene = synth.sample_scene(rng, shape=labels[i % len(labels)])
        picture = synth.draw_scene(scene)
        text = styled_attack(sample_style(rng), labels, scene.shape, rng)
        clean.append(picture)
        attacked.append(render(picture, text.attack))
        truth.append(labels.index(scene.shape))
        written.append(text.attack.text)
    return Calibration(tuple(labels), clean, attacked, torch.tensor(truth), tuple(written))
