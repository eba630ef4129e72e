"""UI handlers as plain functions (no browser): what each button returns and the errors it shows."""

import logging
import random

import gradio as gr
import numpy as np
import pytest
from apphelpers import ADMIN_TOKEN, footprint, make_service
from PIL import Image
from upload_corpus import CORPUS

from poclip.app.ui.annotate import answer_handler, next_item_handler, undo_handler
from poclip.app.ui.boundary import user_errors
from poclip.app.ui.chart import chart_svg
from poclip.app.ui.compare import (
    CUSTOM,
    STALE,
    Controls,
    Picture,
    place_text_handler,
    predict_handler,
    preview_handler,
    random_attack_handler,
    upload_handler,
    vote_handler,
)
from poclip.app.ui.compare_page import out_of_date, random_restyle
from poclip.app.ui.counts import counted
from poclip.app.ui.data import data_view
from poclip.app.ui.identity import sign_in_handler
from poclip.app.ui.train import progress_text, retrain_handler, versions_table
from poclip.world import synth
from poclip.world.labels import PRESETS, presets_for

predict = user_errors(predict_handler)
vote = user_errors(vote_handler)
upload = user_errors(upload_handler)


@pytest.fixture
def service(tmp_path, bundled):
    svc = make_service(tmp_path, bundled)
    yield svc
    svc.close()


def star() -> Picture:
    return Picture(synth.draw_scene(synth.sample_scene(random.Random(4), shape="star"), 224), "synthetic")


def test_predict_shows_the_attacked_picture_and_both_answers(service):
    clean = predict(service, picture=star(), controls=Controls())
    assert max(clean.left, key=clean.left.get) == "star" and len(clean.left) == 5
    shown = predict(service, picture=star(), controls=Controls(text="circle"))
    assert not np.array_equal(np.asarray(shown.seen), np.asarray(clean.seen))  # the word is on the picture
    assert shown.left["circle"] > clean.left.get("circle", 0.0)
    assert shown.left_title == "### Base CLIP" and "PO-CLIP" in shown.right_title
    assert shown.labels == tuple(synth.SHAPES) and shown.comparison_id != clean.comparison_id


def test_the_preview_shows_the_text_where_it_will_go(service):
    plain = preview_handler(star(), Controls())
    left_word = preview_handler(star(), Controls(text="circle", x=0.2, y=0.2))
    right_word = preview_handler(star(), Controls(text="circle", x=0.8, y=0.8))
    diff = np.abs(np.asarray(left_word, dtype=int) - np.asarray(plain, dtype=int)).sum(axis=2)
    ys, xs = np.nonzero(diff)
    assert xs.mean() < 112 and ys.mean() < 112  # the text went to the top left
    assert not np.array_equal(np.asarray(left_word), np.asarray(right_word))
    assert preview_handler(None, Controls(text="circle")) is None


def test_arena_mode_hides_the_sides_until_the_vote(service):
    ann = service.identity.issue()  # the signed id acts; "ann" is only its display name
    rng = random.Random(7)
    sides = set()
    for _ in range(12):
        shown = predict_handler(service, star(), Controls(text="circle", arena=True), rng=rng)
        assert (shown.left_title, shown.right_title) == ("### Model A", "### Model B")
        sides.add(service.comparisons.comparison(shown.comparison_id).shown_left)
    assert sides == {"base", "aligned"}
    record = service.comparisons.comparison(shown.comparison_id)
    result = vote(service, comparison_id=shown.comparison_id, verdict="neither", correct_label="star",
                  handle="ann", anon_id=ann)
    named = "### PO-CLIP" if record.shown_left == "aligned" else "### Base CLIP"
    assert result["left_title"].startswith(named) and result["counter"] == "You have given 1 label."
    assert result["shown_left"] == record.shown_left


def test_neither_needs_a_label_from_the_comparisons_own_set(service):
    ann = service.identity.issue()  # the signed id acts; "ann" is only its display name
    shown = predict(service, picture=star(), controls=Controls(text="circle", preset=CUSTOM,
                                                               custom="starfish, doughnut, kite"))
    before = footprint(service)
    with pytest.raises(gr.Error, match="Pick the right label"):
        vote(service, comparison_id=shown.comparison_id, verdict="neither", correct_label=None, handle="ann",
             anon_id=ann)
    with pytest.raises(gr.Error, match="not one of this comparison's labels"):
        vote(service, comparison_id=shown.comparison_id, verdict="neither", correct_label="circle", handle="ann",
             anon_id=ann)
    assert footprint(service) == before
    wrong = [label for label in shown.labels if label != max(shown.left, key=shown.left.get)]
    stored = vote(service, comparison_id=shown.comparison_id, verdict="neither", correct_label=wrong[0],
                  handle="ann", anon_id=ann)
    assert stored["chosen"] == wrong[0]
    assert service.repo.get_sample(stored["sample_id"]).labels == ("starfish", "doughnut", "kite")


def test_user_errors_are_shown_and_logged_on_one_line(service, caplog):
    ann = service.identity.issue()  # the signed id acts; "ann" is only its display name
    caplog.set_level(logging.INFO, logger="poclip.app.ui")
    with pytest.raises(gr.Error, match="at least two labels"):
        predict(service, picture=star(), controls=Controls(preset=CUSTOM, custom="star"))
    with pytest.raises(gr.Error, match="Upload a picture"):
        predict(service, picture=None, controls=Controls())
    with pytest.raises(gr.Error, match="at most 200"):
        predict(service, picture=star(), controls=Controls(text="x" * 300))
    with pytest.raises(gr.Error, match="Press Predict first"):
        vote(service, comparison_id=None, verdict="left", correct_label=None, handle="ann", anon_id=ann)
    shown = predict(service, picture=star(), controls=Controls())
    with pytest.raises(gr.Error, match="No anonymous id"):
        vote(service, comparison_id=shown.comparison_id, verdict="left", correct_label=None, handle="",
             anon_id="")  # no signed id
    with pytest.raises(gr.Error, match="sign in with the admin token"):
        user_errors(retrain_handler)(service, "not-the-token", "dpo")
    assert footprint(service)["judgments"] == service.repo.stats().gold_items
    refusals = [r for r in caplog.records if r.name == "poclip.app.ui"]
    assert len(refusals) == 6 and all(r.exc_info is None and "\n" not in r.getMessage() for r in refusals)
    assert "queued" in retrain_handler(service, ADMIN_TOKEN, "dpo")


def test_every_upload_in_the_corpus_gets_a_message_or_a_prediction(service, tmp_path):
    voted = 0
    for i, case in enumerate(CORPUS):
        path = tmp_path / case.filename
        path.write_bytes(case.data())
        before = footprint(service)
        if case.message:
            with pytest.raises(gr.Error, match=case.message):
                upload(str(path))
            assert footprint(service) == before, case.name
            continue
        picture = upload(str(path))
        shown = predict(service, picture=picture, controls=Controls(text="circle", share=True))
        assert sum(shown.left.values()) > 0.5 and shown.seen.mode == "RGB", case.name
        result = vote(service, comparison_id=shown.comparison_id, verdict="left", correct_label=None,
                      handle=f"uploader-{i}", anon_id=service.identity.issue())
        # (some cases normalise to the same white square)
        voted += 1
        stored = service.repo.get_image(service.repo.get_sample(result["sample_id"]).image_sha256)
        assert (stored.width, stored.height) == picture.image.size, case.name
    assert voted == sum(1 for c in CORPUS if c.check)


def test_admin_signs_in_once_and_only_admins_see_who_labelled_what(service):
    item = service.annotation.next_item("dora")
    service.annotation.answer_item("dora", item.sample.id, item.labels[0])
    text, people, recent = data_view(service, token="")
    assert "**1** label from **1** person" in text and people is None and recent is None
    assert "admins only" in text
    with pytest.raises(gr.Error, match="admin token"):
        user_errors(sign_in_handler)(service, "wrong")
    token, message = sign_in_handler(service, ADMIN_TOKEN)
    assert token == ADMIN_TOKEN and "Signed in" in message
    text, people, recent = data_view(service, token=token)
    assert list(people["annotator"]) == ["dora"]  # the gold pseudo-annotator is not a person
    assert (recent.iloc[0]["annotator"], recent.iloc[0]["chosen"]) == ("dora", item.labels[0])


def test_admin_message_when_no_admin_is_configured(tmp_path, bundled):
    svc = make_service(tmp_path, bundled, admin_token="", seed_items=0)
    try:
        with pytest.raises(gr.Error, match="switched off on this server: set POCLIP_ADMIN_TOKEN"):
            user_errors(sign_in_handler)(svc, "anything")
    finally:
        svc.close()


def test_annotate_buttons_answer_and_undo(service):
    kbd = service.identity.issue()  # the signed id acts; "kbd" is only its display name
    shown = next_item_handler(service, handle="kbd", anon_id=kbd)
    assert shown.picture.size == (224, 224) and "**0** labels from you" in shown.counter
    assert shown.labels == list(synth.SHAPES)
    buttons = shown.outputs()[4:]
    labels = [b["value"] for b in buttons if b.get("visible")]
    assert labels[0].startswith("1  ") and labels[9].startswith("0  ") and len(labels) == 10
    answered = answer_handler(service, sample_id=shown.sample_id, chosen=labels[2], handle="kbd", anon_id=kbd)
    assert answered.sample_id != shown.sample_id and "**1** label from you" in answered.counter
    again = undo_handler(service, handle="kbd", anon_id=kbd)
    assert again.sample_id == shown.sample_id and "Undone" in again.prompt and "**0** labels from you" in again.counter


def test_random_attack_and_click_to_place():
    first = random_attack_handler("Synthetic shapes", "", seed=9)
    assert first == random_attack_handler("Synthetic shapes", "", seed=9)
    assert first[0] in synth.SHAPES and first[3] != first[4]
    event = gr.SelectData(None, {"index": [56, 168], "value": None})
    assert place_text_handler(star(), event) == (0.25, 0.75)


def test_training_chart_text_is_readable_on_a_phone():
    """The chart scales to its column: on a 390 px phone (a column of about 350 px) no text is under 10 px."""
    import re

    history = [{"step": s, "loss": 0.7, "rewards/margins": 0.1, "kl/clean": 0.0, "rewards/accuracies": 0.5}
               for s in range(1, 50)]
    svg = chart_svg(history)
    width = float(re.search(r'<svg[^>]*\bwidth="([\d.]+)pt"', svg).group(1))
    sizes = [float(px) for px in re.findall(r"font-size: ([\d.]+)px", svg)]
    assert len(sizes) > 10 and min(sizes) * 350 / width >= 10, (min(sizes), width)


def test_counters_say_1_label_and_2_labels():
    assert [counted(n, "label") for n in (0, 1, 2)] == ["0 labels", "1 label", "2 labels"]
    assert counted(1, "person", "people", bold=True) == "**1** person" and counted(3, "person", "people") == "3 people"


def test_random_attack_marks_the_answers_out_of_date_like_a_typed_change():
    restyled = random_restyle("comparison-on-screen", "Synthetic shapes", "")
    assert restyled[0] in synth.SHAPES
    comparison_id, *votes, note = restyled[9:]
    assert comparison_id is None and note == STALE and [v["interactive"] for v in votes] == [False] * 4
    assert restyled[9:] == out_of_date("comparison-on-screen")


def test_only_presets_the_live_backbone_recognises_are_offered():
    assert list(presets_for("bundled")) == ["Synthetic shapes"]
    assert list(presets_for("ViT-B-32")) == list(PRESETS)


def test_training_chart_has_a_numeric_step_axis_a_legend_and_units():
    history = [{"step": s, "loss": 0.7 - s / 400, "rewards/margins": s / 50, "kl/clean": s / 2000,
                "rewards/accuracies": min(1.0, s / 100)} for s in range(1, 181)]
    svg = chart_svg(history)
    for text in ("loss", "reward margin", "KL on clean pictures", "reward accuracy", "nats", "fraction",
                 "optimizer step", ">50<", ">100<", ">150<"):
        assert text in svg, text
    assert "epoch" not in svg and "No training curves" in chart_svg([])


def test_progress_text_counts_steps_and_versions_show_the_loss(service, tmp_path, bundled):
    from poclip.engine.policy import Policy, save_head

    service.training.retrain(token=ADMIN_TOKEN)
    run = service.repo.claim_run("a-worker")  # the trainer reports through the store, wherever it runs
    service.repo.heartbeat(run.id, {"phase": "training", "step": 120, "total": 180, "message": "",
                                    "history": [{"step": 120, "loss": 0.5}]}, lease=run.lease)
    assert progress_text(service) == f"**Trainer:** training run {run.id}: step 120 of 180"
    path = save_head(Policy(bundled), tmp_path / "heads" / "run.safetensors")
    version = service.repo.register_version(bundled.spec, str(path), {"loss": "dpo"}, run_id=run.id, lease=run.lease)
    service.repo.promote_version(version.id, run_id=run.id, lease=run.lease)
    service.repo.finish_run(run.id, metrics={"gate": "better", "history": [{"step": 180, "loss": 0.4}]},
                            version_id=version.id, lease=run.lease)
    assert progress_text(service).startswith(f"**Trainer:** run {run.id} promoted after 180 steps")
    assert "loss" in versions_table(service).columns


def test_a_cleared_upload_keeps_the_picture():
    assert upload_handler(None) is None
    assert isinstance(star().image, Image.Image)


def test_a_refusal_keeps_nothing_the_refused_handler_held():
    """A refused upload's bytes must not live on with the error Gradio keeps for the event."""
    import gc
    import weakref

    from poclip.errors import UserError

    held = []

    class Upload(bytearray):  # bytes cannot be weakly referenced; a bytearray subclass can
        pass

    @user_errors
    def handler():
        data = Upload(b"\x89PNG" * 1000)
        held.append(weakref.ref(data))
        raise UserError("Your network address is already opening pictures")

    with pytest.raises(gr.Error) as refused:
        handler()
    gc.collect()
    assert refused.value.message == "Your network address is already opening pictures"
    assert refused.value.__context__ is None and refused.value.__cause__ is None
    assert held[0]() is None  # the handler's frame, and the upload in it, are gone while the error lives
