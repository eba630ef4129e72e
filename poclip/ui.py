"""The Gradio interface. Handlers are plain functions over :class:`poclip.inference.Predictor`."""

from __future__ import annotations

import random

import gradio as gr
from PIL import Image

from poclip import synth
from poclip.attacks import ATTACK_COLOURS, FONTS, AttackError, TextAttack, random_attack, to_hex
from poclip.images import ImageError
from poclip.inference import Predictor
from poclip.labels import PRESETS, LabelSetError, parse_labels
from poclip.settings import ASSETS_DIR

EXAMPLES_DIR = ASSETS_DIR / "examples"
CUSTOM = "Custom (type below)"
USER_ERRORS = (AttackError, ImageError, LabelSetError)


def resolve_labels(preset: str, custom: str) -> list[str]:
    """The label set chosen in the UI: a preset, or the typed list when 'Custom' is picked."""
    if preset == CUSTOM or preset not in PRESETS:
        return parse_labels(custom or "")
    return list(PRESETS[preset])


def make_attack(
    text: str, font: str, size: float, fill: str, stroke: str, x: float, y: float, opacity: float, rotation: float
) -> TextAttack | None:
    """The attack the controls describe; ``None`` when no text is typed. ``size`` 0 means auto-fit."""
    if not text or not text.strip():
        return None
    return TextAttack(
        text=text, font=font, size=None if not size else float(size), fill=to_hex(fill, "Text colour"),
        stroke=to_hex(stroke, "Outline colour"), x=float(x), y=float(y), opacity=float(opacity),
        rotation=float(rotation),
    ).validate()


def predict_handler(predictor: Predictor, image, text, font, size, fill, stroke, x, y, opacity, rotation, preset,
                    custom):
    """Handler for the Predict button: returns (picture the model saw, top-5 label probabilities)."""
    if image is None:
        raise gr.Error("Upload an image or pick an example first.")
    try:
        attack = make_attack(text, font, size, fill, stroke, x, y, opacity, rotation)
        result = predictor.predict(image, resolve_labels(preset, custom), attack)
    except USER_ERRORS as exc:
        raise gr.Error(str(exc)) from exc
    return result.image, result.top(5)


def random_attack_handler(preset: str, custom: str, seed: int | None = None):
    """Fill the attack controls with a paper-style random attack: a label from the set, random style."""
    try:
        labels = resolve_labels(preset, custom)
    except LabelSetError as exc:
        raise gr.Error(str(exc)) from exc
    a = random_attack(labels, None, random.Random(seed))
    return a.text, a.font, a.size, a.fill, a.stroke, a.x, a.y, 1.0, 0.0


def synthetic_object_handler(seed: int | None = None) -> Image.Image:
    """A fresh picture from the synthetic world (what the bundled model was trained on)."""
    rng = random.Random(seed)
    return synth.draw_scene(synth.sample_scene(rng), 224)


def example_paths() -> list[str]:
    return sorted(str(p) for p in EXAMPLES_DIR.glob("*.png"))


def build_demo(predictor: Predictor) -> gr.Blocks:
    """The app page: image and attack controls on the left, what the model saw and answered on the right."""
    with gr.Blocks(title="PO-CLIP: typographic attacks on CLIP") as demo:
        gr.Markdown(
            "# PO-CLIP\nWrite a word on a picture and watch CLIP change its mind. "
            f"\n\n**Live model:** {predictor.model_info}"
        )
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="pil", label="Image", sources=["upload", "clipboard", "webcam"], height=320)
                with gr.Row():
                    synth_btn = gr.Button("New synthetic object")
                    random_btn = gr.Button("Random attack")
                if example_paths():
                    gr.Examples(example_paths(), inputs=image, label="Examples")
                text = gr.Textbox(label="Text to write on the image", placeholder="e.g. star", max_lines=4)
                with gr.Accordion("Text style and position", open=False):
                    font = gr.Dropdown(list(FONTS), value="sans-bold", label="Font")
                    size = gr.Slider(0, 0.5, value=0, step=0.005, label="Size (fraction of image; 0 = fit)")
                    with gr.Row():
                        fill = gr.ColorPicker(value=ATTACK_COLOURS["white"], label="Text colour")
                        stroke = gr.ColorPicker(value=ATTACK_COLOURS["black"], label="Outline colour")
                    x = gr.Slider(0, 1, value=0.5, step=0.01, label="Horizontal position")
                    y = gr.Slider(0, 1, value=0.5, step=0.01, label="Vertical position")
                    opacity = gr.Slider(0, 1, value=1, step=0.05, label="Opacity")
                    rotation = gr.Slider(-90, 90, value=0, step=1, label="Rotation (degrees)")
                preset = gr.Dropdown([*PRESETS, CUSTOM], value="Synthetic shapes", label="Label set")
                custom = gr.Textbox(label="Custom labels (comma-separated)", placeholder="dog, cat, car")
                predict_btn = gr.Button("Predict", variant="primary")
            with gr.Column():
                seen = gr.Image(type="pil", label="What the model sees", interactive=False, height=320)
                answer = gr.Label(num_top_classes=5, label="CLIP's prediction")

        inputs = [image, text, font, size, fill, stroke, x, y, opacity, rotation, preset, custom]
        predict_btn.click(lambda *a: predict_handler(predictor, *a), inputs, [seen, answer], api_name="predict")
        text.submit(lambda *a: predict_handler(predictor, *a), inputs, [seen, answer], api_name=False)
        random_btn.click(random_attack_handler, [preset, custom], [text, font, size, fill, stroke, x, y, opacity,
                                                                   rotation], api_name="random_attack")
        synth_btn.click(synthetic_object_handler, None, image, api_name="synthetic_object")
    return demo
