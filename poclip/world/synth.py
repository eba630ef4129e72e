"""The synthetic world: procedurally drawn objects with captions, some carrying written words.

It is our offline stand-in for web images. Objects are shapes in colours, sizes and positions on
cluttered backgrounds. As on the web, a share of images carry writing, and their captions name what
is written (a sign reading STAR is captioned "a photo of a star"), so a CLIP trained on this world
learns to read and is genuinely fooled by typographic attacks.

Everything is a pure function of a seed and an index: item ``i`` of seed ``s`` is the same picture
whatever else is drawn, so evaluation sets are reproducible and disjoint from training by seed.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace
from typing import Literal

from PIL import Image, ImageDraw

from poclip.world.attacks import ATTACK_COLOURS, PAPER_SIZE_RANGE, TRAINING_FONTS, TextAttack, random_attack, render

SHAPES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "heart", "hexagon", "cross", "diamond", "crescent", "arrow",
)
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "orange": (247, 139, 20),
    "yellow": (240, 214, 30),
    "pink": (240, 120, 190),
    "green": (44, 160, 44),
    "blue": (31, 90, 220),
    "purple": (128, 60, 180),
    "cyan": (30, 200, 210),
}
# A binary concept of this world, used for the concept-disentanglement experiment.
WARM_COLOURS = ("red", "orange", "yellow", "pink")
# Words that appear written in the world besides the shape names, so reading is a general skill.
OTHER_WORDS: tuple[str, ...] = (
    "sale", "open", "stop", "hello", "cat", "dog", "tree", "book", "apple", "car", "love", "exit",
)
SIZE_WORDS = ((0.42, "small"), (0.58, "medium"), (1.0, "large"))
BACKGROUNDS = ("plain", "gradient", "noise", "clutter")
DEFAULT_TEMPLATE = "a photo of a {}."  # the prompt template, defined once; other modules import it

# Share of pretraining images by kind: clean objects, word-only signs, objects with a word on them.
PRETRAIN_MIX = {"object": 0.35, "sign": 0.30, "object+word": 0.35}


@dataclass(frozen=True)
class Scene:
    """One synthetic picture: an object on a background, optionally with writing."""

    shape: str
    colour: str
    size: float  # object diameter as a fraction of the image's short side
    cx: float
    cy: float
    rotation: float
    background: str
    bg_rgb: tuple[int, int, int]
    bg_rgb2: tuple[int, int, int]
    texture_seed: int
    show_object: bool = True
    text: TextAttack | None = None

    @property
    def size_word(self) -> str:
        return next(word for limit, word in SIZE_WORDS if self.size <= limit)

    @property
    def tone(self) -> str:
        return "warm" if self.colour in WARM_COLOURS else "cool"


@dataclass(frozen=True)
class Example:
    scene: Scene
    caption: str


def _unit_polygon(shape: str) -> list[tuple[float, float]]:
    """Outline in a unit box centred on 0 (radius about 1)."""
    if shape == "square":
        return [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]
    if shape == "triangle":
        return [(0.0, -1.0), (0.95, 0.75), (-0.95, 0.75)]
    if shape == "diamond":
        return [(0.0, -1.0), (0.62, 0.0), (0.0, 1.0), (-0.62, 0.0)]
    if shape == "hexagon":
        return [(math.cos(a), math.sin(a)) for a in (math.pi / 3 * k for k in range(6))]
    if shape == "star":
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.42
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((r * math.cos(a), r * math.sin(a)))
        return pts
    if shape == "cross":
        a, b = 0.3, 0.95
        return [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a), (-b, a),
                (-b, -a), (-a, -a)]
    if shape == "arrow":
        return [(-0.95, -0.25), (0.2, -0.25), (0.2, -0.65), (0.95, 0.0), (0.2, 0.65), (0.2, 0.25),
                (-0.95, 0.25)]
    if shape == "heart":
        pts = []
        for k in range(48):
            t = 2 * math.pi * k / 48
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((x / 17, -y / 17 - 0.1))
        return pts
    raise ValueError(f"{shape} is not a polygon shape")


def _object_mask(scene: Scene, width: int, height: int) -> Image.Image:
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    short = min(width, height)
    r = scene.size * short / 2
    cx, cy = scene.cx * width, scene.cy * height
    if scene.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif scene.shape == "crescent":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        off = 0.45 * r
        rr = 0.85 * r
        ang = math.radians(scene.rotation)
        ox, oy = cx + off * math.cos(ang), cy - off * math.sin(ang)
        draw.ellipse((ox - rr, oy - rr, ox + rr, oy + rr), fill=0)
    else:
        ang = math.radians(scene.rotation)
        c, s = math.cos(ang), math.sin(ang)
        pts = [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in _unit_polygon(scene.shape)]
        draw.polygon(pts, fill=255)
    return mask


def _background(scene: Scene, width: int, height: int) -> Image.Image:
    if scene.background == "gradient":
        top = Image.new("RGB", (width, height), scene.bg_rgb)
        bottom = Image.new("RGB", (width, height), scene.bg_rgb2)
        ramp = Image.linear_gradient("L").resize((width, height))
        return Image.composite(bottom, top, ramp)
    img = Image.new("RGB", (width, height), scene.bg_rgb)
    rng = random.Random(scene.texture_seed)
    if scene.background == "noise":
        # Coarse noise: a small random image scaled up, blended with the base colour.
        cells = max(4, width // 16)
        noise = Image.frombytes("RGB", (cells, cells), bytes(rng.getrandbits(8) for _ in range(cells * cells * 3)))
        img = Image.blend(img, noise.resize((width, height), Image.Resampling.BILINEAR), 0.22)
    elif scene.background == "clutter":
        draw = ImageDraw.Draw(img)
        short = min(width, height)
        for _ in range(rng.randint(4, 10)):
            tint = tuple(min(255, max(0, v + rng.randint(-60, 60))) for v in scene.bg_rgb2)
            x0, y0 = rng.random() * width, rng.random() * height
            w = short * rng.uniform(0.03, 0.2)
            if rng.random() < 0.5:
                draw.line((x0, y0, x0 + rng.uniform(-1, 1) * w * 2, y0 + rng.uniform(-1, 1) * w * 2),
                          fill=tint, width=max(1, short // 60))
            else:
                draw.rectangle((x0, y0, x0 + w, y0 + w * rng.uniform(0.3, 1.5)), fill=tint)
    return img


def draw_scene(scene: Scene, size: int = 224) -> Image.Image:
    """Render a scene as a ``size`` x ``size`` RGB image."""
    img = _background(scene, size, size)
    if scene.show_object:
        img.paste(COLOURS[scene.colour], (0, 0), _object_mask(scene, size, size))
    if scene.text is not None:
        img = render(img, scene.text)
    return img


def _muted(rng: random.Random) -> tuple[int, int, int]:
    # Greys and desaturated tints keep the object's colour the most saturated thing in the picture.
    level = rng.choice((rng.randint(25, 80), rng.randint(150, 235)))
    return tuple(min(255, max(0, level + rng.randint(-20, 20))) for _ in range(3))  # type: ignore[return-value]


def sample_scene(rng: random.Random, shape: str | None = None) -> Scene:
    """A random clean object scene (no writing)."""
    size = rng.uniform(0.35, 0.72)
    margin = size / 2 + 0.02
    return Scene(
        shape=shape or rng.choice(SHAPES),
        colour=rng.choice(sorted(COLOURS)),
        size=size,
        cx=rng.uniform(margin, 1 - margin),
        cy=rng.uniform(margin, 1 - margin),
        rotation=rng.uniform(-15, 15),
        background=rng.choice(BACKGROUNDS),
        bg_rgb=_muted(rng),
        bg_rgb2=_muted(rng),
        texture_seed=rng.getrandbits(31),
    )


def _training_text(rng: random.Random, word: str, big: bool) -> TextAttack:
    # Wider than the paper's attack distribution so the model reads words of any size and style.
    lo, hi = (0.16, 0.34) if big else (PAPER_SIZE_RANGE[0] * 0.8, PAPER_SIZE_RANGE[1] * 1.3)
    fill, stroke = rng.sample(sorted(ATTACK_COLOURS.values()), 2)
    return TextAttack(
        text=word.upper() if rng.random() < 0.25 else word,
        font=rng.choice(TRAINING_FONTS),
        size=round(rng.uniform(lo, hi), 4),
        fill=fill,
        stroke=stroke,
        stroke_width=rng.choice((0.0, 0.05, 0.08, 0.12)),
        x=round(rng.uniform(0.15, 0.85), 4),
        y=round(rng.uniform(0.12, 0.88), 4),
        rotation=rng.choice((0.0, 0.0, 0.0, rng.uniform(-20, 20))),
    )


def _object_caption(rng: random.Random, scene: Scene) -> str:
    shape, colour = scene.shape, scene.colour
    return rng.choice((
        f"a photo of a {shape}.",
        f"a {colour} {shape}.",
        f"a photo of a {colour} {shape}.",
        f"a {scene.size_word} {colour} {shape}.",
        f"a {colour} {shape} on a {scene.background} background.",
        f"a drawing of a {shape}.",
        f"a {scene.tone} coloured {shape}.",
        f"a {shape}.",
    ))


def _word_caption(rng: random.Random, word: str) -> str:
    return rng.choice((f"a photo of a {word}.", f"a {word}.", f"a sign that says {word}.", f"the word {word}."))


def pretrain_example(seed: int, index: int) -> Example:
    """Item ``index`` of the pretraining stream for ``seed``: a scene and its web-style caption."""
    rng = random.Random(f"pretrain:{seed}:{index}")
    scene = sample_scene(rng)
    kind = rng.choices(list(PRETRAIN_MIX), weights=list(PRETRAIN_MIX.values()))[0]
    if kind == "object":
        return Example(scene, _object_caption(rng, scene))
    if kind == "sign":
        word = rng.choice(SHAPES) if rng.random() < 0.8 else rng.choice(OTHER_WORDS)
        text = _training_text(rng, word, big=rng.random() < 0.5)
        return Example(replace(scene, show_object=False, text=text), _word_caption(rng, word))
    # An object with a different word on it. Web captions mostly name what is written.
    others = [s for s in SHAPES if s != scene.shape]
    word = rng.choice(others) if rng.random() < 0.75 else rng.choice(OTHER_WORDS)
    scene = replace(scene, text=_training_text(rng, word, big=False))
    roll = rng.random()
    if roll < 0.6:
        caption = _word_caption(rng, word)
    elif roll < 0.85:
        caption = f"a {scene.colour} {scene.shape} with the word {word} written on it."
    else:
        caption = _object_caption(rng, scene)
    return Example(scene, caption)


@dataclass(frozen=True)
class EvalItem:
    """One evaluation picture: the clean image, the same image attacked, and the truth."""

    index: int
    label: str
    scene: Scene
    attack: TextAttack | None
    clean: Image.Image = field(repr=False)
    attacked: Image.Image | None = field(repr=False)


def eval_item(seed: int, index: int, attack: Literal["none", "random"] = "random", size: int = 224) -> EvalItem:
    """Item ``index`` of the evaluation set for ``seed``; classes cycle so every set is balanced.

    The attack writes a wrong shape name in the paper's style (:func:`poclip.world.attacks.random_attack`).
    """
    if attack not in ("none", "random"):
        raise ValueError(f"attack must be 'none' or 'random', got {attack!r}")
    scene, text = eval_scene(seed, index)
    clean = draw_scene(scene, size)
    if attack == "none":
        return EvalItem(index, scene.shape, scene, None, clean, None)
    return EvalItem(index, scene.shape, scene, text, clean, render(clean, text))


def eval_scene(seed: int, index: int) -> tuple[Scene, TextAttack]:
    """The scene of :func:`eval_item` ``index`` and its paper-style attack, nothing drawn."""
    rng = random.Random(f"eval:{seed}:{index}")
    scene = sample_scene(rng, shape=SHAPES[index % len(SHAPES)])
    return scene, random_attack(SHAPES, scene.shape, rng)


def eval_set(n: int, seed: int, attack: Literal["none", "random"] = "random", size: int = 224) -> list[EvalItem]:
    """``n`` balanced evaluation items (same pictures for ``attack='none'`` and ``'random'``)."""
    if n <= 0:
        raise ValueError("n must be positive")
    return [eval_item(seed, i, attack, size) for i in range(n)]
