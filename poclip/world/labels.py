"""Label sets: the finite set of answers CLIP chooses between, and their prompt template."""

from __future__ import annotations

import re

from poclip.errors import UserError
from poclip.world.synth import DEFAULT_TEMPLATE as DEFAULT_TEMPLATE  # re-exported: the template is defined once
from poclip.world.synth import SHAPES

MAX_LABELS = 100
MAX_LABEL_CHARS = 64

PRESETS: dict[str, tuple[str, ...]] = {
    "Synthetic shapes": SHAPES,
    "Everyday objects": (
        "dog", "cat", "car", "bicycle", "apple", "banana", "chair", "laptop", "phone", "cup", "book", "tree",
    ),
    "Animals": ("dog", "cat", "horse", "bird", "fish", "cow", "sheep", "elephant", "lion", "rabbit"),
}


# The bundled model was trained on the synthetic world only: it cannot recognise dogs or cars, so offering those
# presets would only show it failing. Any real backbone recognises every preset.
SYNTHETIC_PRESETS = ("Synthetic shapes",)


def presets_for(backbone: str) -> dict[str, tuple[str, ...]]:
    """The label-set presets the backbone named ``backbone`` (a model spec's name, e.g. ``bundled``) can recognise.

    Args:
        backbone: the loaded model spec's name; ``bundled`` is the small model of the synthetic world.
    Returns:
        Preset name -> labels, in :data:`PRESETS` order: the synthetic shapes for ``bundled``, all presets otherwise.
    """
    if backbone == "bundled":
        return {name: PRESETS[name] for name in SYNTHETIC_PRESETS}
    return dict(PRESETS)


class LabelSetError(UserError):
    """A label set the user typed that cannot be used; the message says why."""


def parse_labels(text: str | list[str] | tuple[str, ...]) -> list[str]:
    """Labels from comma- or newline-separated text (or a list): trimmed, duplicates dropped, in order.

    Raises :class:`LabelSetError` for fewer than 2 labels, more than :data:`MAX_LABELS`, or an over-long label.
    """
    parts = re.split(r"[,\n]", text) if isinstance(text, str) else [str(p) for p in text]
    labels = list(dict.fromkeys(p.strip() for p in parts if p.strip()))
    if len(labels) < 2:
        raise LabelSetError("Give at least two labels, separated by commas (e.g. 'dog, cat').")
    if len(labels) > MAX_LABELS:
        raise LabelSetError(f"{len(labels)} labels given; at most {MAX_LABELS} are supported.")
    long = [label for label in labels if len(label) > MAX_LABEL_CHARS]
    if long:
        raise LabelSetError(f"Label {long[0][:20]!r}... is longer than {MAX_LABEL_CHARS} characters.")
    return labels


def check_template(template: str) -> str:
    """A prompt template must contain exactly one ``{}`` where the label goes."""
    if template.count("{}") != 1 or len(template) > 200:
        raise LabelSetError("The prompt template must contain '{}' exactly once, e.g. 'a photo of a {}.'")
    return template
