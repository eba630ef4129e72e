"""UI handlers as plain functions (no browser): what each button returns and the errors it shows."""

import random

import gradio as gr
import numpy as np
import pytest
from apphelpers import ADMIN_TOKEN, make_service
from PIL import Image

from poclip.app.ui import (
    CUSTOM,
    answer_handler,
    next_item_handler,
    place_text_handler,
    predict_handler,
    random_attack_handler,
    retrain_handler,
    undo_handler,
    vote_handler,
)
from poclip.world import synth

STYLE = ("sans-bold", 0.15, "#ffffff", "rgba(0, 0, 0, 1)", 0.5, 0.5, 1.0, 0.0)


@pytest.fixture
def service(tmp_path, bundled):
    svc = make_service(tmp_path, bundled)
    yield svc
    svc.close()


def star() -> Image.Image:
    return synth.draw_scene(synth.sample_scene(random.Random(4), shape="star"), 224)


def test_predict_shows_the_attacked_picture_and_both_answers(service):
    clean_seen, clean, *_ = predict_handler(service, star(), "", *STYLE, "Synthetic shapes", "", 1.0, False)
    assert max(clean, key=clean.get) == "star" and len(clean) == 5
    seen, left, right, left_title, right_title, shown_left = predict_handler(
        service, star(), "circle", *STYLE, "Synthetic shapes", "", 1.0, False)
    assert not np.array_equal(np.asarray(seen), np.asarray(clean_seen))  # the word is on the picture
    assert left["circle"] > clean.get("circle", 0.0)
    assert shown_left == "base" and left_title == "### Base CLIP" and "PO-CLIP" in right_title


def test_arena_mode_hides_the_sides_until_the_vote(service):
    sides = set()
    for _ in range(12):
        *_, left_title, right_title, shown_left = predict_handler(service, star(), "circle", *STYLE,
                                                                   "Synthetic shapes", "", 1.0, True)
        assert (left_title, right_title) == ("### Model A", "### Model B")
        sides.add(shown_left)
    assert sides == {"base", "aligned"}
    message, left_title, _, counter = vote_handler(service, star(), "circle", *STYLE, "Synthetic shapes", "", 1.0,
                                                   "neither", "star", "aligned", "ann", "")
    assert "star" in message and left_title.startswith("### PO-CLIP") and counter == "You have labelled 1 items."


def test_user_errors_are_shown_not_crashes(service):
    with pytest.raises(gr.Error, match="at least two labels"):
        predict_handler(service, star(), "", *STYLE, CUSTOM, "star", 1.0, False)
    with pytest.raises(gr.Error, match="Upload an image"):
        predict_handler(service, None, "", *STYLE, "Synthetic shapes", "", 1.0, False)
    with pytest.raises(gr.Error, match="at most 200"):
        predict_handler(service, star(), "x" * 300, *STYLE, "Synthetic shapes", "", 1.0, False)
    with pytest.raises(gr.Error, match="handle"):
        vote_handler(service, star(), "", *STYLE, "Synthetic shapes", "", 1.0, "left", None, "base", "", "")
    with pytest.raises(gr.Error, match="admin"):
        retrain_handler(service, "not-the-token", "dpo")
    assert service.repo.stats().judgments == service.repo.stats().gold_items
    assert "queued" in retrain_handler(service, ADMIN_TOKEN, "dpo")


def test_annotate_buttons_answer_and_undo(service):
    picture, item_id, prompt, counter, *buttons = next_item_handler(service, "kbd", "")
    assert picture.size == (224, 224) and "**0** labelled by you" in counter
    labels = [b["value"] for b in buttons if b.get("visible")]
    assert labels[0].startswith("1  ") and labels[9].startswith("0  ") and len(labels) == 10
    _, next_id, _, counter, *_ = answer_handler(service, item_id, labels[2], "kbd", "")
    assert next_id != item_id and "**1** labelled by you" in counter
    _, again_id, prompt, counter, *_ = undo_handler(service, "kbd", "")
    assert again_id == item_id and "Undone" in prompt and "**0** labelled by you" in counter


def test_random_attack_and_click_to_place():
    first = random_attack_handler("Synthetic shapes", "", seed=9)
    assert first == random_attack_handler("Synthetic shapes", "", seed=9)
    assert first[0] in synth.SHAPES and first[3] != first[4]
    event = gr.SelectData(None, {"index": [56, 168], "value": None})
    assert place_text_handler(star(), event) == (0.25, 0.75)


def test_bad_uploads_get_clear_messages_and_write_nothing(service, tmp_path):
    truncated = tmp_path / "broken.png"
    good = tmp_path / "good.png"
    star().save(good)
    truncated.write_bytes(good.read_bytes()[:300])
    text_file = tmp_path / "notes.png"
    text_file.write_text("not a picture")
    for path, message in ((truncated, "damaged or truncated"), (text_file, "not an image")):
        with pytest.raises(gr.Error, match=message):
            predict_handler(service, str(path), "circle", *STYLE, "Synthetic shapes", "", 1.0, False)
        with pytest.raises(gr.Error, match=message):
            vote_handler(service, str(path), "circle", *STYLE, "Synthetic shapes", "", 1.0, "left", None, "base",
                         "ann", "")
    assert service.repo.stats().judgments == service.repo.stats().gold_items
    seen, *_ = predict_handler(service, str(good), "circle", *STYLE, "Synthetic shapes", "", 1.0, False)
    assert seen.size == (224, 224)


def test_data_tab_lists_recent_judgments(service):
    from poclip.app.ui import data_view

    vote_handler(service, star(), "circle", *STYLE, "Synthetic shapes", "", 1.0, "neither", "star", "base",
                 "dora", "")
    text, people, recent = data_view(service)
    assert "judgments" in text and "dora" in set(people["annotator"])
    newest = recent.iloc[0]
    assert (newest["annotator"], newest["chosen"], newest["undone"]) == ("dora", "star", False)
