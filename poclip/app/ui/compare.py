"""The Compare tab: a picture, a word written on it, base and aligned CLIP side by side, and a vote.

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

from poclip.app.comparisons import Comparison
from poclip.app.display import display_file
from poclip.app.service import AppService
from poclip.app.ui.boundary import QUIET, USER_ERRORS, refused, user_errors
from poclip.app.ui.identity import annotator_handle
from poclip.errors import UserError
from poclip.settings import ASSETS_DIR
from poclip.world import photos, synth
from poclip.world.attacks import ATTACK_COLOURS, FONTS, TextAttack, random_attack, render, to_hex
from poclip.world.decode_budget import ServerBusy
from poclip.world.images import open_image
from poclip.world.labels import PRESETS, parse_labels

EXAMPLES_DIR = ASSETS_DIR / "examples"
CUSTOM = "Custom (type below)"
STALE = "_The controls changed since Predict: press **Predict** to see the answers for what is set now._"
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


def side_titles(record: Comparison, revealed: bool) -> tuple[str, str]:
    """Headings of the two answer columns; in arena mode neutral names until the person has voted."""
    if not revealed:
        return "### Model A", "### Model B"
    names = {"base": "Base CLIP", "aligned": f"PO-CLIP ({record.version}, t={record.t:g})"}
    right = "aligned" if record.shown_left == "base" else "base"
    return f"### {names[record.shown_left]}", f"### {names[right]}"


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


def upload_handler(path: str | None) -> Picture | None:
    """The app's validator on the raw uploaded file; ``None`` when the upload was cleared."""
    if not path:
        return None
    return Picture(open_image(path), "upload")


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
                                         t=float(controls.t), arena=bool(controls.arena), source=picture.source,
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
    left_title, right_title = side_titles(service.comparisons.comparison(comparison_id), revealed=True)
    mine = service.annotation.labelled_by(who)
    return {**stored, "message": f"Thanks! Stored: **{stored['chosen']}** is right, not *{stored['rejected']}*.",
            "left_title": left_title, "right_title": right_title,
            "counter": f"You have given {mine} label{'s' if mine != 1 else ''}."}


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


# ----- layout and events -----------------------------------------------------------------------------------------


@dataclass
class CompareTab:
    upload: gr.File
    preview: gr.Image
    predict_btn: gr.Button
    vote_buttons: dict[str, gr.Button]
    correct: gr.Dropdown
    vote_message: gr.Markdown
    vote_counter: gr.Markdown
    comparison_id: gr.State


def _voting(enabled: bool) -> list:
    return [gr.update(interactive=enabled) for _ in range(4)]


def build_compare(service: AppService, handle_box: gr.Textbox, anon_id: gr.BrowserState) -> CompareTab:
    """The Compare tab's components and events (inside an open ``gr.Tab``)."""
    picture = gr.State(None)  # Picture: the normalised picture and where it came from
    comparison_id = gr.State(None)  # the id of the comparison on screen; None while it is out of date
    shown = gr.State(None)  # shown_key() of what the answers on screen were computed from
    with gr.Row(equal_height=False):
        with gr.Column():
            upload = gr.File(label="Upload a picture (PNG, JPEG, WebP, GIF)", file_count="single", type="filepath",
                             elem_id="upload", height=90)
            upload_note = gr.Markdown(elem_id="upload-note")
            share = gr.Checkbox(label=CONSENT, value=False, elem_id="share")
            with gr.Row():
                synth_btn = gr.Button("New synthetic object", elem_id="synth-btn")
                random_btn = gr.Button("Random attack", elem_id="random-btn")
            examples, credit = compare_examples(service.encoder.model_spec.name)
            gallery = gr.Gallery([(e.path, e.caption) for e in examples], label="Examples (click one)", columns=6,
                                 height=110 if len(examples) <= 6 else 220, allow_preview=False,
                                 visible=bool(examples), elem_id="examples")
            gr.Markdown(f"<small>{credit}</small>", visible=bool(credit), elem_id="photo-credit")
            text = gr.Textbox("", label="Text to write on the picture", placeholder="e.g. star", max_lines=4,
                              elem_id="attack-text")
            with gr.Accordion("Text style and position", open=False):
                font = gr.Dropdown(list(FONTS), value="sans-bold", label="Font")
                size = gr.Slider(0, 0.5, value=0.15, step=0.005, label="Size (fraction of the picture; 0 = fit)")
                with gr.Row():
                    fill = gr.ColorPicker(value=ATTACK_COLOURS["white"], label="Text colour")
                    stroke = gr.ColorPicker(value=ATTACK_COLOURS["black"], label="Outline colour")
                x = gr.Slider(0, 1, value=0.5, step=0.01, label="Horizontal position")
                y = gr.Slider(0, 1, value=0.5, step=0.01, label="Vertical position")
                opacity = gr.Slider(0, 1, value=1, step=0.05, label="Opacity")
                rotation = gr.Slider(-90, 90, value=0, step=1, label="Rotation (degrees)")
            preset = gr.Dropdown([*PRESETS, CUSTOM], value="Synthetic shapes", label="Label set", elem_id="preset")
            custom = gr.Textbox("", label="Custom labels (comma-separated)", placeholder="dog, cat, car",
                                elem_id="custom-labels")
            with gr.Row():
                t = gr.Slider(-2, 2, value=1, step=0.05, label="Alignment strength t (0 = base, 1 = trained)")
                arena = gr.Checkbox(label="Arena mode (hide which side is which until I vote)")
            predict_btn = gr.Button("Predict", variant="primary", elem_id="predict-btn")
        with gr.Column():
            preview = gr.Image(type="filepath", label="What the models see (click to place the text)",
                               interactive=False,
                               height=320, elem_id="preview")
            stale = gr.Markdown(elem_id="stale-note")
            with gr.Row():
                with gr.Column(min_width=150):
                    left_title = gr.Markdown("### Base CLIP")
                    left = gr.Label(num_top_classes=5, label="Left", elem_id="left-answer")
                with gr.Column(min_width=150):
                    right_title = gr.Markdown("### PO-CLIP")
                    right = gr.Label(num_top_classes=5, label="Right", elem_id="right-answer")
            gr.Markdown("**Which answer is right?**")
            with gr.Row():
                vote_buttons = {v: gr.Button(name, elem_id=f"vote-{v}", interactive=False, min_width=80)
                                for v, name in (("left", "Left is right"), ("right", "Right is right"),
                                                ("both", "Both"))}
            with gr.Row():
                correct = gr.Dropdown([], value=None, label="Neither: the object is ...", scale=3,
                                      elem_id="neither-label", allow_custom_value=False)
                vote_buttons["neither"] = gr.Button("Neither", elem_id="vote-neither", interactive=False,
                                                    min_width=80)
            vote_message = gr.Markdown(elem_id="vote-message")
            vote_counter = gr.Markdown(elem_id="vote-counter")
    # The public API: /predict takes the raw file and returns the comparison id that /vote names.
    with gr.Row(visible=False):
        api_id = gr.Textbox("", label="comparison id")
        api_verdict = gr.Textbox("", label="verdict")
        api_label = gr.Textbox("", label="neither label")
        api_labels = gr.JSON(label="label set")
        predict_api = gr.Button()
        vote_api = gr.Button()

    controls = [text, font, size, fill, stroke, x, y, opacity, rotation, preset, custom, t, arena, share]
    buttons = list(vote_buttons.values())

    def on_upload(path):
        try:
            loaded = upload_handler(path)
        except USER_ERRORS as exc:  # shown beside the upload; the previous picture is cleared
            message, note = upload_refusal(exc)
            gr.Warning(message)
            return None, None, note
        return (gr.update(), gr.update(), "") if loaded is None else (loaded, shown_file(loaded.image), "")

    @user_errors
    def on_example(evt: gr.SelectData):
        loaded = example_handler(int(evt.index), examples)
        chosen = examples[int(evt.index)]
        if chosen.labels is None:  # a synthetic shape: the label set and the text stay as they are
            return loaded, shown_file(loaded.image), None, gr.update(), gr.update(), gr.update()
        # A real photo: its object's label set, and no typed text (the note on the photo is the attack).
        return loaded, shown_file(loaded.image), None, CUSTOM, ", ".join(chosen.labels), ""

    @user_errors
    def on_synthetic():
        loaded = synthetic_object_handler()
        return loaded, shown_file(loaded.image), None

    upload.upload(on_upload, upload, [picture, preview, upload_note], api_visibility="private", **QUIET)
    gallery.select(on_example, None, [picture, preview, upload, preset, custom, text], api_visibility="private",
                   **QUIET)
    synth_btn.click(on_synthetic, None, [picture, preview, upload], api_visibility="private", **QUIET)

    def mark_stale(record_id, shown_from, pic, *values):
        # Change events can arrive after a Predict that already used the new values: only a real difference
        # from what the answers on screen were computed from makes them stale.
        if shown_from is not None and shown_key(pic, Controls(*values)) == shown_from:
            return gr.update(), *[gr.update()] * 4, gr.update()
        return None, *_voting(False), (STALE if record_id else "")

    def on_preview(pic, *values):
        try:
            seen = preview_handler(pic, Controls(*values))
            return None if seen is None else shown_file(seen)
        except USER_ERRORS:  # e.g. text still being typed past the limit: Predict will say what is wrong
            return gr.update()

    # Any change to the picture or a control: the answers on screen no longer match, so voting stops at once;
    # the preview follows, debounced (only the newest pending preview runs).
    gr.on([picture.change, *(c.change for c in controls)], mark_stale, [comparison_id, shown, picture, *controls],
          [comparison_id, *buttons, stale], queue=False, api_visibility="private", show_progress="hidden")
    gr.on([picture.change, *(c.change for c in controls)], on_preview, [picture, *controls], preview,
          trigger_mode="always_last", api_visibility="private", show_progress="hidden")

    @user_errors
    def on_predict(pic, *values):
        result = predict_handler(service, pic, Controls(*values))
        return (shown_file(result.seen), result.left, result.right, result.left_title, result.right_title,
                result.comparison_id, shown_key(pic, Controls(*values)), *_voting(True),
                gr.update(choices=list(result.labels), value=None),
                "", "")

    predict_out = [preview, left, right, left_title, right_title, comparison_id, shown, *buttons, correct, stale,
                   vote_message]
    # Up to 32 predictions at once: they wait for the shared image-tower batch (poclip.app.batching), not for
    # each other.
    many = {"concurrency_limit": 32, "concurrency_id": "predict"}
    predict_btn.click(on_predict, [picture, *controls], predict_out, api_visibility="private",
                      api_name="predict_click", **QUIET, **many)
    text.submit(on_predict, [picture, *controls], predict_out, api_visibility="private", api_name="predict_enter",
                **QUIET, **many)

    @user_errors
    def predict(picture, text, font, size, fill, stroke, x, y, opacity, rotation, label_set, custom_labels, t,
                arena, share):
        """API: the raw picture file and the controls -> what the models saw, both answers, titles, the
        comparison id for /vote and the label set."""
        controls = Controls(text, font, size, fill, stroke, x, y, opacity, rotation, label_set, custom_labels, t,
                            arena, share)
        shown = predict_handler(service, upload_handler(picture), controls)
        return (shown_file(shown.seen), shown.left, shown.right, shown.left_title, shown.right_title,
                shown.comparison_id,
                list(shown.labels))

    predict_api.click(predict, [upload, *controls], [preview, left, right, left_title, right_title, api_id,
                                                     api_labels], api_name="predict", **many)

    def on_vote(verdict: str):
        @user_errors
        def vote_click(record_id, label, handle_, anon, profile: gr.OAuthProfile | None = None):
            result = vote_handler(service, record_id, verdict, label, handle_, anon, profile)
            return (result["message"], result["left_title"], result["right_title"], result["counter"],
                    *_voting(False))

        return vote_click

    vote_out = [vote_message, left_title, right_title, vote_counter, *buttons]
    for verdict, button in vote_buttons.items():
        button.click(on_vote(verdict), [comparison_id, correct, handle_box, anon_id], vote_out,
                     api_visibility="private", api_name=f"vote_{verdict}", **QUIET)

    @user_errors
    def vote(comparison_id, verdict, neither_label, handle, anonymous_id=None, profile: gr.OAuthProfile | None = None):
        """API: a verdict (left, right, both, neither + the right label) on the comparison /predict returned."""
        result = vote_handler(service, comparison_id, verdict, neither_label, handle, anonymous_id, profile)
        keep = ("judgment_id", "sample_id", "comparison_id", "chosen", "rejected", "verdict", "shown_left",
                "version", "t")
        return {k: result[k] for k in keep}, result["counter"]

    vote_json = gr.JSON(visible=False)
    vote_api.click(vote, [api_id, api_verdict, api_label, handle_box, anon_id], [vote_json, vote_counter],
                   api_name="vote")

    @user_errors
    def random_style(preset_, custom_):
        return random_attack_handler(preset_, custom_)

    random_btn.click(random_style, [preset, custom], [text, font, size, fill, stroke, x, y, opacity, rotation],
                     api_name="random_attack", **QUIET)
    preview.select(place_text_handler, picture, [x, y], api_visibility="private")
    return CompareTab(upload, preview, predict_btn, vote_buttons, correct, vote_message, vote_counter,
                      comparison_id)
