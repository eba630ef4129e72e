"""The Compare tab's values and handlers: a picture, a word written on it, base and aligned CLIP side by side,
and a vote. The layout and its events are in :mod:`poclip.app.ui.compare_page`.

Predict keeps a comparison record on the server (:meth:`AppService.predict`) and the page keeps only its
id in ``gr.State``. Changing any control afterwards marks the answers out of date and disables voting until
the next Predict, so a vote always stores what was on screen. Uploads arrive as raw files and go through
the app's validator (:func:`poclip.world.images.open_image`) before anything decodes them.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Sequence
from dataclasses import astuple, dataclass, field, fields

import gradio as gr
from PIL import Image

from poclip.app.compare import MODEL_TITLES
from poclip.app.comparisons import Comparison
from poclip.app.display import display_file
from poclip.app.service import AppService
from poclip.app.ui.boundary import refused
from poclip.app.ui.counts import counted
from poclip.app.ui.identity import annotator_handle, keep_name
from poclip.errors import UserError
from poclip.settings import ASSETS_DIR
from poclip.world import photos, synth
from poclip.world.attacks import ATTACK_COLOURS, TextAttack, random_attack, render, to_hex
from poclip.world.decode_budget import ServerBusy
from poclip.world.images import open_image
from poclip.world.labels import PRESETS, parse_labels

EXAMPLES_DIR = ASSETS_DIR / "examples"
CUSTOM = "Custom (type below)"
STALE = "_The controls changed since Predict: press **Predict** to see the answers for what is set now._"
# Up to 32 predictions at once (the page's and the API's together): they wait for the shared image-tower batch
# (poclip.app.batching), not for each other.
MANY_PREDICTIONS = {"concurrency_limit": 32, "concurrency_id": "predict"}
CONSENT = ("Others may see and label my picture. A vote stores the picture and may show it to other "
           "annotators; upload only pictures you have the right to share.")


@dataclass
class Controls:
    """Everything on the Compare tab that decides what the models see, in the order of the page's inputs."""

    text: str = ""
    font: str = "sans-bold"
    size: float = 0.15
    fill: str = ATTACK_COLOURS["white"]
    stroke: str = ATTACK_COLOURS["black"]
    x: float = 0.5
    y: float = 0.5
    opacity: float = 1.0
    rotation: float = 0.0
    preset: str = "Synthetic shapes"
    custom: str = ""
    t: float = 1.0
    arena: bool = False
    share: bool = False
    left_model: str = "base"
    right_model: str = "aligned"

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def labels(self) -> list[str]:
        """The label set chosen: a preset, or the typed list when 'Custom' is picked."""
        if self.preset == CUSTOM or self.preset not in PRESETS:
            return parse_labels(self.custom or "")
        return list(PRESETS[self.preset])

    def attack(self) -> TextAttack | None:
        """The attack the controls describe; ``None`` when no text is typed. ``size`` 0 means auto-fit."""
        if not self.text or not self.text.strip():
            return None
        return TextAttack(
            text=self.text, font=self.font, size=None if not self.size else float(self.size),
            fill=to_hex(self.fill, "Text colour"), stroke=to_hex(self.stroke, "Outline colour"), x=float(self.x),
            y=float(self.y), opacity=float(self.opacity), rotation=float(self.rotation),
        ).validate()


@dataclass(eq=False)  # hashed by identity: gr.State notices a new picture without hashing pixels
class Picture:
    """The normalised picture on the Compare tab and where it came from (``upload``/``synthetic``/``example``).

    ``key`` names this picture in the page's record of what the answers on screen were computed from;
    ``note`` is the word already written in it (a real photo's note, a ``physical`` attack), which is the
    comparison's attack unless text is typed.
    """

    image: Image.Image
    source: str
    key: str = field(default_factory=lambda: secrets.token_hex(8))
    note: TextAttack | None = None


def shown_key(picture: Picture | None, controls: Controls) -> str:
    """What a prediction was computed from (picture and every control), to tell whether the screen is stale."""
    return repr((picture.key if picture else None, *astuple(controls)))


@dataclass(frozen=True)
class Shown:
    """What Predict puts on screen."""

    seen: Image.Image
    left: dict[str, float]
    right: dict[str, float]
    left_title: str
    right_title: str
    comparison_id: str
    labels: tuple[str, ...]


def model_title(record: Comparison, model: str) -> str:
    """How the page names ``model`` on ``record``: PO-CLIP with its version and strength, else its title."""
    if model == "aligned":
        return f"PO-CLIP ({record.version}, t={record.t:g})"
    return MODEL_TITLES.get(model, model)


def side_titles(record: Comparison, revealed: bool) -> tuple[str, str]:
    """Headings of the two answer columns; in arena mode neutral names until the person has voted."""
    if not revealed:
        return "### Model A", "### Model B"
    return f"### {model_title(record, record.shown_left)}", f"### {model_title(record, record.right_model)}"


def example_paths() -> list[str]:
    return sorted(str(p) for p in EXAMPLES_DIR.glob("*.png"))


@dataclass(frozen=True)
class Example:
    """A Compare example: the picture file, its caption, and for a real photo its object's label set and its note
    (``labels`` None: the example keeps the label set chosen on the page)."""

    path: str
    caption: str
    labels: tuple[str, ...] | None = None
    note: TextAttack | None = None


def compare_examples(backbone: str) -> tuple[list[Example], str]:
    """The Compare tab's examples for ``backbone`` (the loaded spec's name, ``ModelSpec.name``) and the credit
    line to show with them ('' for none).

    The bundled model knows only the synthetic world, so it gets synthetic shapes; any other backbone gets the
    real photos, one attacked photo per object (:func:`poclip.world.photos.example_photos`), each with its
    object's label set and its note's word as the attack.
    """
    if backbone == "bundled":
        return [Example(path, f"synthetic {path.rsplit('_', 1)[-1].removesuffix('.png')}")
                for path in example_paths()], ""
    rows = [Example(str(p.path), p.caption, photos.app_labels(p), photos.note_attack(p))
            for p in photos.example_photos()]
    return rows, photos.CREDIT


# ----- handlers (plain functions of the service; tests call them by keyword) ----------------------------------


def upload_handler(path: str | None, client: str | None = None) -> Picture | None:
    """The app's validator on the raw uploaded file, decoded within ``client``'s share of the decode budget (its
    network address: :meth:`~poclip.app.visitors.Visitors.client`); ``None`` when the upload was cleared."""
    if not path:
        return None
    return Picture(open_image(path, client=client), "upload")


def upload_refusal(exc: BaseException) -> tuple[str, str]:
    """The warning and the note beside the upload for a refused file (logged on one line): a busy server means
    nothing is wrong with the file, which can be sent again; anything else means this file cannot be used."""
    message = refused("upload", exc)
    if isinstance(exc, ServerBusy):
        return message, f"**Not opened yet.** {message}"
    return message, f"**This file cannot be used.** {message}"


def example_handler(index: int, examples: Sequence[Example] | None = None) -> Picture:
    """Example picture number ``index`` of ``examples`` (default: the synthetic ones); bundled with the app, so no
    consent is needed. A real photo's note comes with it as the attack."""
    examples = compare_examples("bundled")[0] if examples is None else examples
    if not 0 <= index < len(examples):
        raise UserError("There is no such example.")
    return Picture(open_image(examples[index].path), "example", note=examples[index].note)


def synthetic_object_handler(seed: int | None = None) -> Picture:
    """A fresh picture from the synthetic world (what the bundled model was trained on)."""
    return Picture(synth.draw_scene(synth.sample_scene(random.Random(seed)), 224), "synthetic")


def preview_handler(picture: Picture | None, controls: Controls) -> Image.Image | None:
    """The picture with the text placed as the controls say (what Predict will show the models)."""
    if picture is None:
        return None
    attack = controls.attack()
    return render(picture.image, attack) if attack is not None else picture.image


def predict_handler(service: AppService, picture: Picture | None, controls: Controls,
                    rng: random.Random | None = None) -> Shown:
    """Base and aligned predictions side by side, kept on the server as one comparison record."""
    if picture is None:
        raise UserError("Upload a picture, pick an example or draw a synthetic object first.")
    record = service.comparisons.predict(picture.image, controls.labels(), controls.attack() or picture.note,
                                         t=float(controls.t), arena=bool(controls.arena), left=controls.left_model,
                                         right=controls.right_model, source=picture.source,
                                         shared=bool(controls.share), rng=rng)
    left_title, right_title = side_titles(record, revealed=not controls.arena)
    return Shown(record.seen, record.left.top(5), record.right.top(5), left_title, right_title, record.id,
                 record.labels)


def vote_handler(service: AppService, comparison_id: str | None, verdict: str, correct_label: str | None,
                 handle: str | None, anon_id: str | None, profile: gr.OAuthProfile | None = None) -> dict:
    """Store the verdict on comparison ``comparison_id``; returns the stored judgment, the revealed titles and
    the person's own count."""
    if not comparison_id:
        raise UserError("Press Predict first: a vote needs answers on screen.")
    who = annotator_handle(handle, anon_id, profile, service)
    stored = service.comparisons.vote(who, comparison_id, verdict, correct_label or None)
    keep_name(service, who, handle)
    left_title, right_title = side_titles(service.comparisons.comparison(comparison_id), revealed=True)
    mine = service.annotation.labelled_by(who)
    return {**stored, "message": f"Thanks! Stored: **{stored['chosen']}** is right, not *{stored['rejected']}*.",
            "left_title": left_title, "right_title": right_title,
            "counter": f"You have given {counted(mine, 'label')}."}


def random_attack_handler(preset: str, custom: str, seed: int | None = None) -> tuple:
    """A paper-style random attack for the controls: a label from the set, random style and place."""
    labels = Controls(preset=preset, custom=custom).labels()
    a = random_attack(labels, None, random.Random(seed))
    return a.text, a.font, a.size, a.fill, a.stroke, a.x, a.y, 1.0, 0.0


def place_text_handler(picture: Picture | None, evt: gr.SelectData):
    """Clicking the picture puts the text's centre there."""
    if picture is None or evt is None or evt.index is None:
        return gr.update(), gr.update()
    width, height = picture.image.size
    return round(min(max(evt.index[0] / width, 0), 1), 3), round(min(max(evt.index[1] / height, 0), 1), 3)


def shown_file(picture: Image.Image) -> str:
    """The picture as the page shows it: a content-addressed JPEG written once and atomically, so identical
    pictures from many clients never race on one file. Full size (the app normalises to at most 1024 px),
    so a click on it maps to the picture's own coordinates."""
    return display_file(picture, max_side=1024)
