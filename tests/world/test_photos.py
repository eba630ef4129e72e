"""The real typographic-attack photos: their labels, and ``eval --data distill-wild`` end to end."""

import json

import pytest

from poclip.cli import main
from poclip.engine.photo_eval import evaluate_photos
from poclip.engine.policy import Policy
from poclip.world.photos import CREDIT, PHOTOS_DIR, objects, photos


def test_all_227_photos_are_bundled_with_their_credit_and_licence():
    assert len(photos()) == 227
    assert len(objects()) == 16
    assert (PHOTOS_DIR / "LICENSE-CC-BY-4.0.txt").is_file()
    credit = "Multimodal Neurons in Artificial Neural Networks"
    assert credit in (PHOTOS_DIR / "README.md").read_text() and credit in CREDIT and "Goh" in CREDIT
    kinds = [p.kind for p in photos()]
    assert kinds.count("blank") == 16 and kinds.count("own") == 15 and kinds.count("attack") == 196


def test_label_sets_come_from_the_article_and_the_written_word_is_always_a_label():
    by_file = {f"{p.round}/{p.path.name}": p for p in photos()}
    ipod = by_file["in-the-wild-2/apple-ipod.jpg"]
    assert ipod.right[0] == "Granny Smith" and ipod.attack_labels == ("iPod",) and ipod.kind == "attack"
    assert ipod.reference["iPod"] > 0.99  # the article's CLIP reads the note
    assert {"Granny Smith", "dough", "patio", "iPod"} <= set(ipod.labels)  # the article's classes for the apple
    rifle = by_file["in-the-wild-2/apple-rifle.jpg"]
    assert set(rifle.attack_labels) == {"rifle", "assault rifle"}
    assert by_file["in-the-wild-2/apple-apple.jpg"].kind == "own"
    assert by_file["in-the-wild-3/trash-blank.jpg"].right == ("trash can",)  # no figures published for it
    for p in photos():
        assert len(set(p.labels)) == len(p.labels) >= 7
        assert set(p.right) <= set(p.labels) and set(p.attack_labels) <= set(p.labels)
        assert not set(p.right) & set(p.attack_labels)
        assert (p.kind == "attack") == bool(p.attack_labels)


def test_eval_distill_wild_prints_a_per_object_table(capsys):
    code = main(["eval", "--data", "distill-wild", "--model", "bundled", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    assert result["data"] == "distill-wild" and result["n"] == 227 and result["objects"] == 16
    assert len(result["per_object"]) == 16
    for row in result["per_object"]:
        assert {"blank_accuracy", "attacked_accuracy", "attack_success_rate"} <= set(row)
        assert row["blank_accuracy"] in (0.0, 1.0)  # one blank-note photo per object
        # The right labels and the attack labels are disjoint, so the two shares cannot add up to more than 1.
        assert row["attacked_accuracy"] + row["attack_success_rate"] <= 1.0 + 1e-9
    blank_hits = sum(row["blank_accuracy"] for row in result["per_object"])
    assert result["blank_accuracy"] == round(blank_hits / 16, 4)
    assert "blank acc" in err and "in-the-wild-2/apple" in err  # the readable table on stderr


def test_per_photo_rows_add_up_to_the_figures_and_an_identity_head_changes_nothing(bundled):
    head = Policy(bundled)  # a fresh linear head is the identity: the aligned model is the base model
    result = evaluate_photos(bundled, head, t=1.0, per_photo=True)
    rows = result["photos"]
    attacked = [r for r in rows if r["kind"] == "attack"]
    assert len(rows) == 227 and len(attacked) == 196
    assert result["attack_success_rate"] == round(sum(r["attacked"] for r in attacked) / 196, 4)
    assert result["attacked_accuracy"] == round(sum(r["right"] for r in attacked) / 196, 4)
    for r in rows:
        assert 0.0 <= r["p_right"] <= 1.0 and 0.0 <= r["p_attack"] <= 1.0
    assert result["base"] == {k: result[k] for k in result["base"]}


@pytest.mark.parametrize("spec", ["poclip-tiny-rn"])
def test_random_weight_backbones_run_on_the_photos(spec):
    from poclip.engine.models import load_model

    result = evaluate_photos(load_model(spec))
    assert result["model"] == spec and result["n"] == 227


def _pixels(image):
    return list(image.convert("RGB").getdata())


def test_a_physical_note_names_the_word_and_draws_nothing():
    from poclip.world.attacks import TextAttack, render
    from poclip.world.images import open_image
    from poclip.world.photos import note_attack

    ipod = next(p for p in photos() if p.path.name == "apple-ipod.jpg")
    note = note_attack(ipod)
    assert note.text == "iPod" and note.physical
    assert TextAttack.from_dict(note.to_dict()) == note
    picture = open_image(ipod.path)
    assert _pixels(render(picture, note)) == _pixels(picture)
    assert _pixels(render(picture, TextAttack("iPod"))) != _pixels(picture)  # a drawn one does change it
    assert "physical" not in TextAttack("iPod").to_dict()  # stored attacks and cache keys of drawn text hold
    assert note_attack(next(p for p in photos() if p.kind == "blank")) is None


def test_compare_offers_the_photos_with_their_label_sets_and_credit_for_real_backbones(tmp_path, tiny):
    from apphelpers import make_service

    from poclip.app.ui.compare import Controls, compare_examples, example_handler, predict_handler, vote_handler
    from poclip.world.images import open_image
    from poclip.world.photos import app_labels

    synthetic, no_credit = compare_examples("bundled")
    assert synthetic and all(e.labels is None and e.note is None for e in synthetic) and no_credit == ""
    examples, credit = compare_examples(tiny.model_spec.name)
    assert len(examples) == 16 and credit == CREDIT
    by_path = {str(p.path): p for p in photos()}
    for example in examples:  # one attacked photo per object, its object's labels, its note as the attack
        photo = by_path[example.path]
        assert photo.kind == "attack" and example.labels == app_labels(photo) and example.note.text == photo.word
    assert len({by_path[e.path].object_key for e in examples}) == 16
    index = next(i for i, e in enumerate(examples) if e.path.endswith("in-the-wild-2/apple-calligraphy.jpg"))

    service = make_service(tmp_path, tiny, seed_items=0)
    try:
        picture = example_handler(index, examples)
        assert _pixels(picture.image) == _pixels(open_image(examples[index].path))
        controls = Controls(preset="Custom (type below)", custom=", ".join(examples[index].labels))
        shown = predict_handler(service, picture, controls)
        assert shown.labels == examples[index].labels and set(shown.left) <= set(shown.labels)
        assert _pixels(shown.seen) == _pixels(picture.image)  # the note is in the photo; nothing is drawn
        record = service.comparisons.comparison(shown.comparison_id)
        assert record.attack.text == "calligraphy" and record.attack.physical
        stored = vote_handler(service, shown.comparison_id, "left", None, "photo-fan", service.identity.issue())
        sample = service.repo.get_sample(stored["sample_id"])
        assert sample.attack["text"] == "calligraphy" and sample.attack["physical"] is True
        assert sample.labels == examples[index].labels
    finally:
        service.close()


def test_annotate_serves_the_photos_with_their_object_label_set_and_credit(tmp_path, tiny):
    from apphelpers import make_service

    from poclip.app.seeding import GOLD_HANDLE
    from poclip.app.ui.annotate import answer_handler, next_item_handler
    from poclip.world.images import open_image
    from poclip.world.photos import app_labels, label_set_name

    served_photos = [p for p in photos() if p.kind != "own"]
    service = make_service(tmp_path, tiny, seed_items=30)
    try:
        assert service.repo.counts()["samples"] == len(served_photos) == 212
        # Gold answers (so people's labels can count towards training): attack photos of objects one label names.
        gold = service.repo.judgments_of(GOLD_HANDLE)
        assert len(gold) == service.admin.people_counts()["gold_items"] > 0
        for answer in gold:
            sample = service.repo.get_sample(answer.sample_id)
            photo = next(p for p in served_photos if label_set_name(p) == sample.label_set
                         and p.word == sample.attack["text"])
            assert photo.kind == "attack" and (answer.chosen, answer.rejected) == (photo.right[0], photo.word)
            assert photo.right == (answer.chosen,)
        assert service.seeding.seed_items() == 0  # a restart finds them all (one look-up) and adds nothing
        assert service.repo.counts()["samples"] == 212 and len(service.repo.judgments_of(GOLD_HANDLE)) == len(gold)
        me = service.identity.issue()  # the browser's signed id: it acts; "ann" is only its display name
        shown = next_item_handler(service, handle="ann", anon_id=me)
        sample = service.repo.get_sample(shown.sample_id)
        word = (sample.attack or {}).get("text", "")
        photo = next(p for p in served_photos if label_set_name(p) == sample.label_set and p.word == word)
        assert shown.labels == list(app_labels(photo)) and CREDIT in shown.prompt
        assert _pixels(shown.picture) == _pixels(open_image(photo.path))  # the photo itself, nothing drawn
        assert sample.attack is None if photo.kind == "blank" else sample.attack["physical"] is True
        visible = [b["value"] for b in shown.outputs()[4:] if b.get("visible")]
        assert len(visible) == len(photo.labels)  # a button for every label of the object

        answer_handler(service, sample_id=shown.sample_id, chosen=visible[shown.labels.index(photo.right[0])],
                       handle="ann", anon_id=me)
        [judgment] = service.repo.judgments_of(service.identity.verify(me))
        assert (judgment.sample_id, judgment.chosen) == (sample.id, photo.right[0])
        if photo.kind == "attack" and photo.word in photo.labels:
            assert judgment.rejected == photo.word  # the note's word is what the person corrected
        assert judgment.rejected in photo.labels and judgment.rejected != photo.right[0]
    finally:
        service.close()


def test_the_bundled_backbone_keeps_the_synthetic_items(tmp_path, bundled):
    from apphelpers import make_service

    from poclip.app.ui.annotate import next_item_handler

    service = make_service(tmp_path, bundled, seed_items=12)
    try:
        assert service.repo.counts()["samples"] == 12
        shown = next_item_handler(service, handle="ann", anon_id=service.identity.issue())
        assert CREDIT not in shown.prompt and service.repo.get_sample(shown.sample_id).label_set == "Synthetic shapes"
    finally:
        service.close()
