"""The Compare tab's layout and events: the picture and its controls on the left, what the models saw, both
answers and the vote on the right. The handlers are in :mod:`poclip.app.ui.compare`; every event here is
private (the public API is :mod:`poclip.app.ui.api`).

The page keeps, in ``gr.State``, the picture, the id of the comparison on screen (None while it is out of date)
and what that comparison was computed from (:func:`~poclip.app.ui.compare.shown_key`).
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from poclip.app.compare import MODEL_TITLES
from poclip.app.comparisons import SIDES
from poclip.app.service import AppService
from poclip.app.ui.boundary import QUIET, USER_ERRORS, as_requested, user_errors
from poclip.app.ui.compare import (
    CONSENT,
    CUSTOM,
    MANY_PREDICTIONS,
    STALE,
    Controls,
    Example,
    compare_examples,
    example_handler,
    place_text_handler,
    predict_handler,
    preview_handler,
    random_attack_handler,
    shown_file,
    shown_key,
    synthetic_object_handler,
    upload_handler,
    upload_refusal,
    vote_handler,
)
from poclip.world.attacks import FONTS
from poclip.world.labels import presets_for

PRIVATE = {"api_visibility": "private", **QUIET}
VOTES = (("left", "Left is right"), ("right", "Right is right"), ("both", "Both"), ("neither", "Neither"))


@dataclass
class CompareView:
    """The Compare tab's components that events read or write. ``controls`` are in :class:`Controls` order."""

    picture: gr.State
    comparison_id: gr.State
    shown: gr.State
    upload: gr.File
    upload_note: gr.Markdown
    gallery: gr.Gallery
    synth_btn: gr.Button
    random_btn: gr.Button
    controls: list[gr.components.Component]
    predict_btn: gr.Button
    preview: gr.Image
    stale: gr.Markdown
    titles: list[gr.Markdown]
    answers: list[gr.Label]
    vote_buttons: dict[str, gr.Button]
    neither_label: gr.Dropdown
    vote_message: gr.Markdown
    vote_counter: gr.Markdown

    def control(self, name: str) -> gr.components.Component:
        return self.controls[Controls.names().index(name)]


def voting(enabled: bool) -> list:
    """Updates for the four vote buttons."""
    return [gr.update(interactive=enabled) for _ in VOTES]


def out_of_date(comparison_id: str | None) -> tuple:
    """Outputs (comparison id, vote buttons, note) for answers that no longer match the controls: voting stops,
    and the note says why. With no comparison on screen (``comparison_id`` None: none yet, or already out of
    date) the note stays as it is, so the second change of a burst does not wipe the first one's note."""
    return None, *voting(False), (STALE if comparison_id else gr.update())


def random_restyle(comparison_id: str | None, preset: str, custom: str) -> tuple:
    """"Random attack" on the page: new text, style and place for the label set, and the answers on screen out of
    date in the same response, exactly as a typed change makes them (the change events the new values fire
    arrive later, and the answers must not stay votable meanwhile).

    Returns:
        The nine styled controls (text to rotation), then :func:`out_of_date`'s outputs.
    """
    return (*random_attack_handler(preset, custom), *out_of_date(comparison_id))


def picture_column(examples: list[Example], credit: str, presets: list[str], models: list[tuple[str, str]]
                   ) -> dict:
    """The left column: where the picture comes from, the text on it, the label set and Predict."""
    c = {"upload": gr.File(label="Upload a picture (PNG, JPEG, WebP, GIF)", file_count="single", type="filepath",
                           elem_id="upload", height=90)}
    c["upload_note"] = gr.Markdown(elem_id="upload-note")
    c["share"] = gr.Checkbox(label=CONSENT, value=Controls.share, elem_id="share")
    with gr.Row():
        c["synth_btn"] = gr.Button("New synthetic object", elem_id="synth-btn")
        c["random_btn"] = gr.Button("Random attack", elem_id="random-btn")
    c["gallery"] = gr.Gallery([(e.path, e.caption) for e in examples], label="Examples (click one)", columns=6,
                              height=110 if len(examples) <= 6 else 220, allow_preview=False,
                              visible=bool(examples), elem_id="examples")
    gr.Markdown(f"<small>{credit}</small>", visible=bool(credit), elem_id="photo-credit")
    c["text"] = gr.Textbox(Controls.text, label="Text to write on the picture", placeholder="e.g. star",
                           max_lines=4, elem_id="attack-text")
    with gr.Accordion("Text style and position", open=False):
        c["font"] = gr.Dropdown(list(FONTS), value=Controls.font, label="Font")
        c["size"] = gr.Slider(0, 0.5, value=Controls.size, step=0.005, label="Size (fraction of the picture; 0 = fit)")
        with gr.Row():
            c["fill"] = gr.ColorPicker(value=Controls.fill, label="Text colour")
            c["stroke"] = gr.ColorPicker(value=Controls.stroke, label="Outline colour")
        c["x"] = gr.Slider(0, 1, value=Controls.x, step=0.01, label="Horizontal position")
        c["y"] = gr.Slider(0, 1, value=Controls.y, step=0.01, label="Vertical position")
        c["opacity"] = gr.Slider(0, 1, value=Controls.opacity, step=0.05, label="Opacity")
        c["rotation"] = gr.Slider(-90, 90, value=Controls.rotation, step=1, label="Rotation (degrees)")
    with gr.Row():
        c["preset"] = gr.Dropdown([*presets, CUSTOM], value=presets[0], label="Label set", elem_id="preset")
        c["custom"] = gr.Textbox(Controls.custom, label="Custom labels (comma-separated)",
                                 placeholder="dog, cat, car", elem_id="custom-labels")
    with gr.Row():
        c["t"] = gr.Slider(-2, 2, value=Controls.t, step=0.05, label="Alignment strength t (0 = base, 1 = trained)",
                           scale=2)
        c["arena"] = gr.Checkbox(label="Arena mode: PO-CLIP against a random defense, named after I vote",
                                 value=Controls.arena, scale=1)
    c["predict_btn"] = gr.Button("Predict", variant="primary", elem_id="predict-btn")
    # Which model each side shows (arena mode draws them instead); below Predict and closed, so Predict and
    # the vote stay on a laptop's screen.
    with gr.Accordion("Models to compare (base, PO-CLIP or another defense)", open=False, elem_id="models"), \
            gr.Row():
        for side, default in (("left_model", Controls.left_model), ("right_model", Controls.right_model)):
            c[side] = gr.Dropdown(models, value=default, label=f"{side.split('_')[0].title()} side shows",
                                  elem_id=side.replace("_", "-"))
    return c


def answer_column() -> dict:
    """The right column: what the models saw, both answers and the vote."""
    # 240 px keeps the vote buttons on a 1280x900 screen together with Predict, whatever the picture's shape.
    c = {"preview": gr.Image(type="filepath", label="What the models see (click to place the text)",
                             interactive=False, height=240, elem_id="preview")}
    c["stale"] = gr.Markdown(elem_id="stale-note")
    c["titles"], c["answers"] = [], []
    with gr.Row():
        for side, title in (("left", "### Base CLIP"), ("right", "### PO-CLIP")):
            with gr.Column(min_width=150):
                c["titles"].append(gr.Markdown(title))
                c["answers"].append(gr.Label(num_top_classes=5, label=side.title(), elem_id=f"{side}-answer"))
    gr.Markdown("**Which answer is right?**")
    with gr.Row():
        c["vote_buttons"] = {v: gr.Button(name, elem_id=f"vote-{v}", interactive=False, min_width=80)
                             for v, name in VOTES[:3]}
    with gr.Row():
        c["neither_label"] = gr.Dropdown([], value=None, label="Neither: the object is ...", scale=3,
                                         elem_id="neither-label", allow_custom_value=False)
        verdict, name = VOTES[3]
        c["vote_buttons"][verdict] = gr.Button(name, elem_id=f"vote-{verdict}", interactive=False, min_width=80)
    c["vote_message"] = gr.Markdown(elem_id="vote-message")
    c["vote_counter"] = gr.Markdown(elem_id="vote-counter")
    return c


def compare_layout(examples: list[Example], credit: str, presets: list[str], models: list[tuple[str, str]]
                   ) -> CompareView:
    """The Compare tab's components (inside an open ``gr.Tab``); ``models``: (title, name) a side may show."""
    states = {"picture": gr.State(None), "comparison_id": gr.State(None), "shown": gr.State(None)}
    with gr.Row(equal_height=False):
        with gr.Column():
            left = picture_column(examples, credit, presets, models)
        with gr.Column():
            right = answer_column()
    controls = [left.pop(name) for name in Controls.names()]
    return CompareView(**states, **left, **right, controls=controls)


def picture_events(service: AppService, view: CompareView, examples: list[Example]) -> None:
    """Upload, example and synthetic object: each replaces the picture (and an example may set the label set)."""

    def on_upload(path):
        try:
            with as_requested():  # the upload is decoded within its address's share of the decode budget
                loaded = upload_handler(path, service.visitors.client())
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

    view.upload.upload(on_upload, view.upload, [view.picture, view.preview, view.upload_note], **PRIVATE)
    example_out = [view.picture, view.preview, view.upload, view.control("preset"), view.control("custom"),
                   view.control("text")]
    view.gallery.select(on_example, None, example_out, **PRIVATE)
    view.synth_btn.click(on_synthetic, None, [view.picture, view.preview, view.upload], **PRIVATE)
    view.preview.select(place_text_handler, view.picture, [view.control("x"), view.control("y")],
                        api_visibility="private")


def staleness_events(view: CompareView) -> None:
    """Any change to the picture or a control, typed or set by a button: voting stops at once and the note shows;
    the preview follows, debounced (only the newest pending preview runs)."""
    buttons = list(view.vote_buttons.values())
    stale_out = [view.comparison_id, *buttons, view.stale]

    def mark_stale(record_id, shown_from, pic, *values):
        # Change events can arrive after a Predict that already used the new values: only a real difference
        # from what the answers on screen were computed from makes them stale.
        if shown_from is not None and shown_key(pic, Controls(*values)) == shown_from:
            return gr.update(), *[gr.update()] * len(buttons), gr.update()
        return out_of_date(record_id)

    def on_preview(pic, *values):
        try:
            seen = preview_handler(pic, Controls(*values))
            return None if seen is None else shown_file(seen)
        except USER_ERRORS:  # e.g. text still being typed past the limit: Predict will say what is wrong
            return gr.update()

    changes = [view.picture.change, *(c.change for c in view.controls)]
    gr.on(changes, mark_stale, [view.comparison_id, view.shown, view.picture, *view.controls], stale_out,
          queue=False, api_visibility="private", show_progress="hidden")
    gr.on(changes, on_preview, [view.picture, *view.controls], view.preview, trigger_mode="always_last",
          api_visibility="private", show_progress="hidden")
    styled = [view.control(name) for name in ("text", "font", "size", "fill", "stroke", "x", "y", "opacity",
                                               "rotation")]
    label_set = [view.control("preset"), view.control("custom")]
    view.random_btn.click(user_errors(random_restyle), [view.comparison_id, *label_set], [*styled, *stale_out],
                          **PRIVATE)


def predict_events(service: AppService, view: CompareView) -> None:
    """Predict (the button or Enter in the text box): both answers, the comparison id, voting on."""

    @user_errors
    def on_predict(pic, *values):
        result = predict_handler(service, pic, Controls(*values))
        return (shown_file(result.seen), result.left, result.right, result.left_title, result.right_title,
                result.comparison_id, shown_key(pic, Controls(*values)), *voting(True),
                gr.update(choices=list(result.labels), value=None), "", "")

    outputs = [view.preview, *view.answers, *view.titles, view.comparison_id, view.shown,
               *view.vote_buttons.values(), view.neither_label, view.stale, view.vote_message]
    for trigger in (view.predict_btn.click, view.control("text").submit):
        trigger(on_predict, [view.picture, *view.controls], outputs, **PRIVATE, **MANY_PREDICTIONS)


def vote_events(service: AppService, view: CompareView, handle_box: gr.Textbox, anon_id: gr.BrowserState) -> None:
    """A vote on the comparison on screen: the stored judgment, both sides named, voting off until Predict."""

    def on_vote(verdict: str):
        @user_errors
        def vote_click(record_id, label, handle, anon, profile: gr.OAuthProfile | None = None):
            result = vote_handler(service, record_id, verdict, label, handle, anon, profile)
            return (result["message"], result["left_title"], result["right_title"], result["counter"],
                    *voting(False))

        return vote_click

    outputs = [view.vote_message, *view.titles, view.vote_counter, *view.vote_buttons.values()]
    for verdict, button in view.vote_buttons.items():
        button.click(on_vote(verdict), [view.comparison_id, view.neither_label, handle_box, anon_id], outputs,
                     **PRIVATE)


def build_compare(service: AppService, handle_box: gr.Textbox, anon_id: gr.BrowserState) -> None:
    """The Compare tab (inside an open ``gr.Tab``): examples and label sets the live backbone knows."""
    backbone = service.encoder.model_spec.name
    examples, credit = compare_examples(backbone)
    # Every model this app offers; a peer still being built says so when picked (Predict explains).
    models = [(MODEL_TITLES.get(m, m), m) for m in (*SIDES, *service.peers.names)]
    view = compare_layout(examples, credit, list(presets_for(backbone)), models)
    picture_events(service, view, examples)
    staleness_events(view)
    predict_events(service, view)
    vote_events(service, view, handle_box, anon_id)
