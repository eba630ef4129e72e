import socket

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from poclip import synth
from poclip.inference import Predictor
from poclip.ui import CUSTOM, build_demo, predict_handler, random_attack_handler

STYLE = ("sans-bold", 0.15, "#ffffff", "rgba(0, 0, 0, 1)", 0.5, 0.5, 1.0, 0.0)


@pytest.fixture(scope="module")
def predictor(bundled):
    return Predictor(bundled)


def star_on_grey() -> Image.Image:
    import random

    return synth.draw_scene(synth.sample_scene(random.Random(4), shape="star"), 224)


def test_predict_shows_the_attacked_picture_and_top_labels(predictor):
    clean_seen, clean = predict_handler(predictor, star_on_grey(), "", *STYLE, "Synthetic shapes", "")
    assert max(clean, key=clean.get) == "star" and len(clean) == 5
    seen, answer = predict_handler(predictor, star_on_grey(), "circle", *STYLE, "Synthetic shapes", "")
    assert not np.array_equal(np.asarray(seen), np.asarray(clean_seen))  # the word is on the picture
    assert answer["circle"] > clean.get("circle", 0.0)


def test_custom_label_set_and_user_errors(predictor):
    _, answer = predict_handler(predictor, star_on_grey(), "", *STYLE, CUSTOM, "star, heart , star")
    assert set(answer) == {"star", "heart"}
    with pytest.raises(gr.Error, match="at least two labels"):
        predict_handler(predictor, star_on_grey(), "", *STYLE, CUSTOM, "star")
    with pytest.raises(gr.Error, match="Upload an image"):
        predict_handler(predictor, None, "", *STYLE, "Synthetic shapes", "")
    with pytest.raises(gr.Error, match="at most 200"):
        predict_handler(predictor, star_on_grey(), "x" * 300, *STYLE, "Synthetic shapes", "")


def test_random_attack_button_fills_controls_with_a_label_from_the_set():
    first = random_attack_handler("Synthetic shapes", "", seed=9)
    assert first == random_attack_handler("Synthetic shapes", "", seed=9)
    assert first[0] in synth.SHAPES and first[3] != first[4]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_launched_app_answers_gradio_client(predictor, tmp_path):
    from gradio_client import Client, handle_file

    demo = build_demo(predictor)
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        path = tmp_path / "star.png"
        star_on_grey().save(path)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        seen, answer = client.predict(handle_file(str(path)), "circle", *STYLE, "Synthetic shapes", "",
                                      api_name="/predict")
        assert Image.open(seen).size == (224, 224)
        assert {c["label"] for c in answer["confidences"]} <= set(synth.SHAPES)
        assert answer["label"] in synth.SHAPES
    finally:
        demo.close()
