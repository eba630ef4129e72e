"""Small on-disk image datasets for the evaluation tests: ``root/<class>/<n>.png`` folders of synthetic shapes."""

from __future__ import annotations

import random
from pathlib import Path

from poclip.world import synth


def make_imagefolder(root: Path, per_class: int = 3) -> Path:
    """A ``datasets`` image folder of circles, squares and stars, ``per_class`` pictures each; returns ``root``."""
    for shape in ("circle", "square", "star"):
        (root / shape).mkdir(parents=True)
        for i in range(per_class):
            scene = synth.sample_scene(random.Random(f"folder:{shape}:{i}"), shape=shape)
            synth.draw_scene(scene, 128).save(root / shape / f"{i}.png")
    return root
