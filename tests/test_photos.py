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
