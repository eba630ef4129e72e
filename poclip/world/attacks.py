"""Typographic attacks: text written onto an image.

An attack is a small, JSON-serializable description (:class:`TextAttack`). Rendering it onto the same
image always gives the same pixels, so the database stores the attack instead of the attacked image.
Sizes and positions are fractions of the image, so one attack means the same thing on a 64 px model
input and on a 1024 px upload.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import asdict, dataclass, fields, replace
from functools import lru_cache
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from poclip.errors import UserError
from poclip.settings import ASSETS_DIR

FONT_DIR = ASSETS_DIR / "fonts"
# Freely licensed: DejaVu (Bitstream Vera licence, assets/fonts/LICENSE-DejaVu.txt) and Liberation Serif
# Italic (SIL Open Font License 1.1, assets/fonts/LICENSE-Liberation.txt, from Debian's fonts-liberation2).
FONTS: dict[str, str] = {
    "sans": "DejaVuSans.ttf",
    "sans-bold": "DejaVuSans-Bold.ttf",
    "serif": "DejaVuSerif.ttf",
    "mono": "DejaVuSansMono.ttf",
    "serif-italic": "LiberationSerif-Italic.ttf",
}
# Every generated training attack uses these; HELD_OUT_FONTS are for measuring whether robustness holds
# beyond the fonts training saw (bench/alignment.py's "held-out font" row).
TRAINING_FONTS: tuple[str, ...] = ("mono", "sans", "sans-bold", "serif")
HELD_OUT_FONTS: tuple[str, ...] = ("serif-italic",)

# The eight text colours of the random attack, as in the paper's typographic data.
ATTACK_COLOURS: dict[str, str] = {
    "white": "#ffffff",
    "black": "#000000",
    "red": "#e02020",
    "green": "#20a040",
    "blue": "#2040e0",
    "yellow": "#f0d020",
    "cyan": "#20c8d8",
    "magenta": "#d020c0",
}

MAX_TEXT_CHARS = 200
MAX_LINES = 8
# The paper draws words 20-40 px high on 224 px images; we keep that as a fraction of the short side.
PAPER_SIZE_RANGE = (20 / 224, 40 / 224)
_AUTO_FIT_WIDTH = 0.9  # auto-fit fills at most this share of the image width
_MIN_FONT_PX = 4


class AttackError(UserError):
    """A text attack that cannot be rendered as asked; the message says what to change."""


@dataclass(frozen=True)
class TextAttack:
    """Text to write on an image.

    Attributes:
        text: the words; ``\\n`` separates lines.
        font: a key of :data:`FONTS`.
        size: font height as a fraction of the image's shorter side; ``None`` auto-fits the text to
            90% of the image width (capped at half the image height).
        fill: text colour, ``#rrggbb``.
        stroke: outline colour, ``#rrggbb``.
        stroke_width: outline width as a fraction of the font size (0 = no outline).
        x, y: centre of the text as fractions of width and height; ``None`` draws a position from
            ``seed``. The text is always kept fully inside the image.
        opacity: 0 (invisible) to 1 (opaque).
        rotation: degrees, counter-clockwise.
        seed: used only to place text whose ``x`` or ``y`` is ``None``.
        patch: ``None``, or the ``#rrggbb`` colour of a label patch (a filled box) drawn behind the text.
        physical: the text is already in the picture (a photographed note, :mod:`poclip.world.photos`): the
            attack names the written word, and :func:`render` leaves the pixels as they are.
    """

    text: str
    font: str = "sans-bold"
    size: float | None = None
    fill: str = "#ffffff"
    stroke: str = "#000000"
    stroke_width: float = 0.08
    x: float | None = 0.5
    y: float | None = 0.5
    opacity: float = 1.0
    rotation: float = 0.0
    seed: int = 0
    patch: str | None = None
    physical: bool = False

    def validate(self) -> TextAttack:
        """Return self if renderable, else raise :class:`AttackError` with a clear message."""
        if not isinstance(self.text, str) or not self.text.strip():
            raise AttackError("The text to write is empty: type at least one visible character.")
        if len(self.text) > MAX_TEXT_CHARS:
            raise AttackError(
                f"The text is {len(self.text)} characters long; at most {MAX_TEXT_CHARS} fit on an image."
            )
        if self.text.count("\n") >= MAX_LINES:
            raise AttackError(f"The text has more than {MAX_LINES} lines.")
        if self.font not in FONTS:
            raise AttackError(f"Unknown font {self.font!r}; choose one of {', '.join(FONTS)}.")
        if self.size is not None and not 0.01 <= self.size <= 1.0:
            raise AttackError(f"Text size {self.size} is outside 0.01-1.0 (a fraction of the image).")
        for name in ("fill", "stroke"):
            _parse_colour(getattr(self, name), name)
        if self.patch is not None:
            _parse_colour(self.patch, "patch")
        if not 0.0 <= self.stroke_width <= 0.5:
            raise AttackError(f"Stroke width {self.stroke_width} is outside 0-0.5 (a fraction of the font size).")
        for name in ("x", "y"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise AttackError(f"Position {name}={value} is outside 0-1 (a fraction of the image).")
        if not 0.0 <= self.opacity <= 1.0:
            raise AttackError(f"Opacity {self.opacity} is outside 0-1.")
        if not math.isfinite(self.rotation):
            raise AttackError("Rotation must be a finite number of degrees.")
        if not isinstance(self.physical, bool):
            raise AttackError("'physical' must be true or false.")
        return self

    def to_json(self) -> str:
        """Serialize to a JSON string that :meth:`from_json` turns back into an equal attack."""
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True)

    def to_dict(self) -> dict[str, Any]:
        # Without a patch or a physical note the dict is what it was before they existed, so stored attacks and
        # cache keys hold.
        data = asdict(self)
        if data["patch"] is None:
            del data["patch"]
        if not data["physical"]:
            del data["physical"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TextAttack:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise AttackError(f"Unknown attack field(s): {', '.join(sorted(unknown))}.")
        if "text" not in data:
            raise AttackError("An attack needs a 'text' field.")
        return cls(**data).validate()

    @classmethod
    def from_json(cls, text: str) -> TextAttack:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AttackError(f"Attack parameters are not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise AttackError("Attack parameters must be a JSON object.")
        return cls.from_dict(data)


def to_hex(value: str, name: str = "colour") -> str:
    """Normalise ``#rgb``, ``#rrggbb``, ``rgb(r, g, b)``, ``rgba(r, g, b, a)`` or a colour name to ``#rrggbb``."""
    r, g, b = _parse_colour(value, name)
    return f"#{r:02x}{g:02x}{b:02x}"


def _parse_colour(value: str, name: str = "colour") -> tuple[int, int, int]:
    if not isinstance(value, str):
        raise AttackError(f"{name} must be a colour like '#ff0000', got {value!r}.")
    text = value.strip().lower()
    if text in ATTACK_COLOURS:
        text = ATTACK_COLOURS[text]
    match = re.fullmatch(r"rgba?\(\s*([\d.]+)\s*,\s*([\d.]+)\s*,\s*([\d.]+)\s*(?:,\s*[\d.]+\s*)?\)", text)
    if match:
        rgb = tuple(round(float(v)) for v in match.groups())
        if all(0 <= v <= 255 for v in rgb):
            return rgb  # type: ignore[return-value]
    if re.fullmatch(r"#[0-9a-f]{3}", text):
        text = "#" + "".join(c * 2 for c in text[1:])
    if re.fullmatch(r"#[0-9a-f]{6}", text):
        return tuple(int(text[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
    raise AttackError(f"{name} must be a colour like '#ff0000', got {value!r}.")


@lru_cache(maxsize=512)
def _font(name: str, px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(FONT_DIR / FONTS[name]), px)


def _text_layer(attack: TextAttack, px: int) -> Image.Image:
    """The text alone on a transparent RGBA canvas of its tight size, rotated."""
    font = _font(attack.font, px)
    stroke_px = round(attack.stroke_width * px)
    probe = ImageDraw.Draw(Image.new("RGBA", (1, 1)))
    left, top, right, bottom = probe.multiline_textbbox(
        (0, 0), attack.text, font=font, stroke_width=stroke_px, align="center"
    )
    size = (max(1, math.ceil(right - left)), max(1, math.ceil(bottom - top)))
    pad = round(0.3 * px) if attack.patch is not None else 0
    size = (size[0] + 2 * pad, size[1] + 2 * pad)
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    if attack.patch is not None:
        draw.rectangle((0, 0, size[0] - 1, size[1] - 1), fill=(*_parse_colour(attack.patch, "patch"), 255))
    fill = (*_parse_colour(attack.fill, "fill"), 255)
    stroke = (*_parse_colour(attack.stroke, "stroke"), 255)
    draw.multiline_text(
        (pad - left, pad - top), attack.text, font=font, fill=fill, stroke_width=stroke_px, stroke_fill=stroke,
        align="center",
    )
    if attack.rotation % 360:
        layer = layer.rotate(attack.rotation, resample=Image.Resampling.BICUBIC, expand=True)
    if attack.opacity < 1.0:
        alpha = layer.getchannel("A").point(lambda a: round(a * attack.opacity))
        layer.putalpha(alpha)
    return layer


def fitted_font_px(attack: TextAttack, width: int, height: int) -> int:
    """Font size in pixels for ``attack`` on a ``width`` x ``height`` image.

    A requested size is honoured unless the text would not fit inside the image, in which case it
    shrinks until it does; ``size=None`` grows the text to 90% of the width (at most half the height).
    """
    short = min(width, height)
    if attack.size is None:
        px, max_w, max_h = max(_MIN_FONT_PX, short // 2), _AUTO_FIT_WIDTH * width, 0.5 * height
    else:
        px, max_w, max_h = max(_MIN_FONT_PX, round(attack.size * short)), width, height
    while px > _MIN_FONT_PX:
        layer = _text_layer(replace(attack, opacity=1.0), px)
        if layer.width <= max_w and layer.height <= max_h:
            break
        px = max(_MIN_FONT_PX, int(px * min(max_w / layer.width, max_h / layer.height, 0.95)))
    return px


def render(image: Image.Image, attack: TextAttack) -> Image.Image:
    """Write ``attack`` onto a copy of ``image`` and return it as RGB.

    The text's bounding box is clamped to lie fully inside the image; a ``physical`` attack is already in the
    picture, so the copy is unchanged.
    Raises :class:`AttackError` if the attack is invalid or cannot fit even at the smallest size.
    """
    attack.validate()
    if attack.physical:
        return image.convert("RGB")
    base = image.convert("RGBA")
    width, height = base.size
    layer = _text_layer(attack, fitted_font_px(attack, width, height))
    if layer.width > width or layer.height > height:
        raise AttackError("The text does not fit on this image even at the smallest size; shorten it.")
    rng = random.Random(attack.seed)
    cx = attack.x if attack.x is not None else rng.random()
    cy = attack.y if attack.y is not None else rng.random()
    left = min(max(0, round(cx * width - layer.width / 2)), width - layer.width)
    top = min(max(0, round(cy * height - layer.height / 2)), height - layer.height)
    base.alpha_composite(layer, (left, top))
    return base.convert("RGB")


def random_attack(
    labels: list[str] | tuple[str, ...], true_label: str | None, rng: random.Random | int
) -> TextAttack:
    """Sample an attack in the style of the paper's typographic data.

    A wrong label drawn uniformly from ``labels`` (never ``true_label``), height 20-40 px at 224 px
    (scaled to the image), fill and outline from eight colours with fill != outline, a random font of
    :data:`TRAINING_FONTS` and a random position. Deterministic for a given ``rng`` seed.
    """
    rng = random.Random(rng) if isinstance(rng, int) else rng
    wrong = [label for label in labels if label != true_label]
    if not wrong:
        raise AttackError("The label set needs at least one label other than the true one to attack with.")
    fill_name, stroke_name = rng.sample(sorted(ATTACK_COLOURS), 2)
    return TextAttack(
        text=rng.choice(wrong),
        font=rng.choice(TRAINING_FONTS),
        size=round(rng.uniform(*PAPER_SIZE_RANGE), 4),
        fill=ATTACK_COLOURS[fill_name],
        stroke=ATTACK_COLOURS[stroke_name],
        stroke_width=0.08,
        x=round(rng.uniform(0.2, 0.8), 4),
        y=round(rng.uniform(0.15, 0.85), 4),
    )

