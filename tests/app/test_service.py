"""The app's back end against a real SQLite file and the bundled model (no browser)."""

import random

import pytest
from apphelpers import ADMIN_TOKEN, ONE_PERSON, footprint, make_service, make_trainer, truth_by_attack

from annotation_db import ValidationError
from poclip.app.service import AppService
from poclip.app.worker import gate
from poclip.errors import UserError
from poclip.world import synth
from poclip.world.attacks import TextAttack, random_attack

TOKEN = ADMIN_TOKEN


@pytest.fixture
def service(tmp_path, bundled):
    svc = make_service(tmp_path, bundled)
    yield svc
    svc.close()


def star_scene():
    return synth.draw_scene(synth.sample_scene(random.Random(4), shape="star"), 224)


def test_compare_without_a_version_shows_the_base_model_on_both_sides(service):
    result = service.comparisons.compare(star_scene(), list(synth.SHAPES), TextAttack("circle", size=0.15))
    assert result.base.probs == result.aligned.probs
    assert result.version == "base model (no aligned version yet)"
    assert abs(sum(result.base.probs.values()) - 1) < 1e-4


def test_vote_stores_exactly_the_comparison_and_bad_votes_store_nothing(service):
    shown = service.comparisons.predict(star_scene(), list(synth.SHAPES), TextAttack("circle", size=0.15),
                                        source="synthetic")
    before = footprint(service)
    refused = [
        (dict(comparison_id=shown.id, verdict="sideways"), "must be one of"),
        (dict(comparison_id=shown.id, verdict="neither"), "Pick the right label"),
        (dict(comparison_id=shown.id, verdict="neither", correct_label="banana"), "not one of this comparison"),
        (dict(comparison_id=None, verdict="left"), "press Predict"),
        (dict(comparison_id="made-up", verdict="left"), "expired"),
        (dict(comparison_id=shown.id, verdict="left", annotator=" "), "enter a name"),
        (dict(comparison_id=shown.id, verdict="left", annotator="x" * 65), "too long"),
    ]
    for kwargs, message in refused:
        with pytest.raises(UserError, match=message):
            service.comparisons.vote(**{"annotator": "ann2", **kwargs})
    assert footprint(service) == before  # no image row, file, sample, annotator or judgment

    stored = service.comparisons.vote("ann", shown.id, "neither", correct_label="star")
    assert (stored["chosen"], stored["rejected"], stored["shown_left"]) == ("star", shown.base.label, "base")
    sample = service.repo.get_sample(stored["sample_id"])
    assert sample.attack == shown.attack.to_dict() and sample.labels == shown.labels
    after = footprint(service)
    assert (after["judgments"], after["images"], after["samples"]) == (before["judgments"] + 1,
                                                                       before["images"] + 1, before["samples"] + 1)
    with pytest.raises(UserError, match="already judged this picture"):  # the same person, the same picture
        service.comparisons.vote("ann", shown.id, "left")
    assert footprint(service) == after


def test_a_stale_vote_stores_the_old_comparison_exactly(service):
    """Predict, then the controls change (another word, another t) and a new Predict: the old id still means
    the old picture, word, label set, sides and answers."""
    old = service.comparisons.predict(star_scene(), list(synth.SHAPES), TextAttack("circle", size=0.15), t=1.0,
                          arena=True, source="synthetic", rng=random.Random(3))
    new = service.comparisons.predict(star_scene(), ["star", "heart"], TextAttack("heart", size=0.3), t=0.0,
                          source="synthetic")
    assert new.id != old.id
    stored = service.comparisons.vote("stale", old.id, "left")
    judgment = service.repo.judgments_of("stale")[0]
    sample = service.repo.get_sample(stored["sample_id"])
    assert sample.attack["text"] == "circle" and sample.labels == tuple(synth.SHAPES)
    assert (judgment.shown_left, judgment.said_right) == (old.shown_left, "left")
    assert judgment.chosen == old.left.label and stored["t"] == 1.0


def test_refused_by_the_rate_limit_leaves_nothing_behind(tmp_path, bundled):
    svc = make_service(tmp_path, bundled, rate_limit="1/60", seed_items=0)
    try:
        first = svc.comparisons.predict(star_scene(), list(synth.SHAPES), TextAttack("circle", size=0.15),
                                        source="synthetic")
        svc.comparisons.vote("quick", first.id, "neither", correct_label="star")
        before = footprint(svc)
        other = synth.draw_scene(synth.sample_scene(random.Random(8), shape="heart"), 224)
        second = svc.comparisons.predict(other, list(synth.SHAPES), TextAttack("arrow", size=0.15), source="synthetic")
        with pytest.raises(ValidationError, match="slow down"):
            svc.comparisons.vote("quick", second.id, "neither", correct_label="heart")
        assert footprint(svc) == before  # the new picture was not stored
    finally:
        svc.close()


def test_an_upload_is_stored_only_when_its_uploader_agreed(service):
    private = service.comparisons.predict(star_scene(), list(synth.SHAPES), TextAttack("circle", size=0.15))
    before = footprint(service)
    with pytest.raises(UserError, match="Others may see"):
        service.comparisons.vote("owner", private.id, "neither", correct_label="star")
    assert footprint(service) == before
    shared = service.comparisons.predict(star_scene(), list(synth.SHAPES), TextAttack("circle", size=0.15), shared=True)
    service.comparisons.vote("owner", shared.id, "neither", correct_label="star")
    assert footprint(service)["images"] == before["images"] + 1


def test_comparisons_are_bounded_and_expire_with_a_clear_message():
    from poclip.app.comparisons import Answer, Comparison, ComparisonExpired, ComparisonStore

    now = [0.0]
    store = ComparisonStore(max_records=3, max_bytes=10**9, ttl_s=60, clock=lambda: now[0])
    pic = synth.draw_scene(synth.sample_scene(random.Random(1)), 32)

    def record(i):
        answer = Answer("base", {"a": 0.6, "b": 0.4})
        return Comparison(f"c{i}", pic, pic, None, ("a", "b"), "{}", answer, answer, "base", "base model", 1.0)

    for i in range(4):
        store.put(record(i))
    assert len(store) == 3 and store.n_bytes == 3 * record(0).n_bytes
    with pytest.raises(ComparisonExpired, match="press Predict again"):
        store.get("c0")  # the least recently used went first
    store.get("c1")
    store.put(record(4))  # c2 is now the least recently used
    with pytest.raises(ComparisonExpired):
        store.get("c2")
    now[0] = 61.0
    with pytest.raises(ComparisonExpired, match="expired"):
        store.get("c1")
    small = ComparisonStore(max_records=100, max_bytes=2 * record(0).n_bytes, ttl_s=60, clock=lambda: now[0])
    for i in range(5):
        small.put(record(i))
    assert len(small) == 2 and small.n_bytes <= 2 * record(0).n_bytes


def test_annotate_flow_answer_and_undo(service):
    item = service.annotation.next_item("fast")
    assert item.labels == list(synth.SHAPES) and item.picture.size == (224, 224)
    stored = service.annotation.answer_item("fast", item.sample.id, item.labels[0])
    assert stored["rejected"] != stored["chosen"]
    assert service.annotation.labelled_by("fast") == 1
    assert service.annotation.undo("fast")["sample_id"] == item.sample.id
    assert service.annotation.labelled_by("fast") == 0
    with pytest.raises(UserError, match="not one of"):
        service.annotation.answer_item("fast", item.sample.id, "banana")


def test_rate_limit_gives_a_clear_message(tmp_path, bundled):
    svc = make_service(tmp_path, bundled, rate_limit="2/60")
    try:
        for _ in range(2):
            item = svc.annotation.next_item("quick")
            svc.annotation.answer_item("quick", item.sample.id, item.labels[0])
        item = svc.annotation.next_item("quick")
        with pytest.raises(ValidationError, match="(?i)too many|rate|slow"):
            svc.annotation.answer_item("quick", item.sample.id, item.labels[0])
        assert svc.annotation.labelled_by("quick") == 2
    finally:
        svc.close()


def true_shape(service: AppService, sample) -> str:
    return TRUTH[TextAttack.from_dict(sample.attack).to_json()]


TRUTH = truth_by_attack(300)


@pytest.mark.slow
def test_labels_retrain_promote_and_the_attacked_prediction_flips(tmp_path, bundled):
    svc = make_service(tmp_path, bundled, seed_items=220, **ONE_PERSON)
    try:
        fooled = []
        for _ in range(200):
            item = svc.annotation.next_item("alice")
            truth = true_shape(svc, item.sample)
            before = svc.comparisons.compare(item.picture, item.labels, normalize=False)
            if before.base.label == item.sample.attack["text"]:
                fooled.append((item.picture, truth))
            svc.annotation.answer_item("alice", item.sample.id, truth)
        assert len(fooled) >= 20
        svc.training.retrain(token=TOKEN)
        run = make_trainer(svc).run_pending()
        assert run.status == "succeeded", run.error
        version = svc.repo.active_version()
        assert version is not None and version.id == run.version_id
        assert svc.live_head.current.version.id == version.id
        gate = version.metrics
        # Measured: typographic accuracy 0.07 -> 0.70 on the held-out gate set after 200 labels.
        assert gate["candidate"]["typographic_accuracy"] >= gate["base"]["typographic_accuracy"] + 0.4
        assert gate["candidate"]["clean_accuracy"] >= gate["base"]["clean_accuracy"] - 0.01
        flipped = sum(svc.comparisons.compare(pic, list(synth.SHAPES), normalize=False).aligned.label == truth
                      for pic, truth in fooled)
        assert flipped / len(fooled) >= 0.5
        # t = 0 is the base model exactly.
        pic, _ = fooled[0]
        at_zero = svc.comparisons.compare(pic, list(synth.SHAPES), t=0.0, normalize=False)
        assert at_zero.aligned.probs == pytest.approx(at_zero.base.probs, abs=1e-5)
    finally:
        svc.close()


def test_a_worse_candidate_is_kept_as_rejected_with_the_reason(tmp_path, bundled):
    # The gate alone must refuse the vandal: against the starter head, the live model of a fresh app (against
    # the bare base model, the recipe's clean pictures with text can outweigh 20 bad pairs).
    svc = make_service(tmp_path, bundled, seed_items=0, starter_head=True, **ONE_PERSON)
    try:
        for i in range(20):
            rng = random.Random(f"vandal:{i}")
            scene = synth.sample_scene(rng)
            attack = random_attack(synth.SHAPES, scene.shape, rng)
            # A vandal insists the written word is the object: training on this rewards reading.
            shown = svc.comparisons.predict(synth.draw_scene(scene, 224), list(synth.SHAPES), attack,
                                            source="synthetic")
            said = [side for side in ("base", "aligned") if getattr(shown, side).label == attack.text]
            if len(said) == 2:  # both sides said the word: "both" confirms it
                svc.comparisons.vote("mallory", shown.id, "both")
            elif said:  # the side that read the word wins
                svc.comparisons.vote("mallory", shown.id, "left" if shown.shown_left == said[0] else "right")
            else:
                svc.comparisons.vote("mallory", shown.id, "neither", correct_label=attack.text)
        svc.training.retrain(token=TOKEN)
        run = make_trainer(svc).run_pending()
        assert run.status == "succeeded", run.error
        version = svc.repo.get_version(run.version_id)
        assert version.status == "rejected"
        # Rewarding the written word either fails to improve typographic accuracy or costs clean accuracy.
        assert "does not improve" in version.reason or "more than 1 point below" in version.reason
        live = svc.live_head.current
        assert svc.repo.active_version() is None and live.version is None and live.policy is not None
    finally:
        svc.close()


def test_gate_rule():
    base = {"clean_accuracy": 0.99, "typographic_accuracy": 0.05}
    assert gate({"clean_accuracy": 0.985, "typographic_accuracy": 0.9}, base, base)[0]
    ok, why = gate({"clean_accuracy": 0.97, "typographic_accuracy": 0.9}, base, base)
    assert not ok and "more than 1 point" in why
    ok, why = gate({"clean_accuracy": 0.99, "typographic_accuracy": 0.05}, base, base)
    assert not ok and "does not improve" in why


def test_text_invariance_pairs_write_other_text_from_the_style_family_on_the_same_picture():
    from poclip.app.worker import text_invariance_pairs
    from poclip.engine.preferences import Preference

    picture = synth.draw_scene(synth.sample_scene(random.Random(1), shape="heart"), 224)
    attack = TextAttack("star", size=0.15)
    judged = Preference(picture, "heart", "star", synth.SHAPES, "a photo of a {}.", attack)
    extra = text_invariance_pairs(judged, sample_id=7, k=40)
    assert len(extra) == 40 and extra == text_invariance_pairs(judged, sample_id=7, k=40)
    for pair in extra:
        assert pair.chosen == "heart" and pair.image is picture
        # a wrong word written in some style is rejected; the true word or a neutral word rejects the runner-up
        assert pair.rejected is None or (pair.rejected != "heart" and pair.rejected in synth.SHAPES
                                          and pair.rejected in pair.attack.text.lower().replace(" ", ""))
    assert any(p.attack.text == "heart" for p in extra) and len({p.attack.text for p in extra}) > 10
    assert text_invariance_pairs(Preference(picture, "heart", "star", synth.SHAPES), 7, 4) == []
    assert text_invariance_pairs(judged, 7, 0) == []


def test_a_version_trained_on_another_backbone_is_not_served_and_does_not_stop_the_app(tmp_path, bundled, tiny):
    from poclip.engine.policy import Policy, save_head

    path = save_head(Policy(tiny), tmp_path / "heads" / "other.safetensors")
    first = make_service(tmp_path, bundled, seed_items=0)
    version = first.repo.register_version(tiny.spec, str(path), {"note": "trained elsewhere"})
    first.repo.promote_version(version.id)
    first.close()
    again = make_service(tmp_path, bundled, seed_items=0)  # starts, serving the base model
    try:
        assert again.live_head.current.policy is None
        shown = again.comparisons.compare(star_scene(), list(synth.SHAPES))
        assert shown.version == "base model (no aligned version yet)"
    finally:
        again.close()


def test_the_gold_pseudo_annotator_is_not_counted_as_a_person(service):
    status = service.status()
    gold = service.repo.stats().gold_items  # placed by a keyed hash: a share of the seeded items, not a fixed count
    assert gold > 0 and status["gold_items"] == gold and (status["judgments"], status["annotators"]) == (0, 0)
    item = service.annotation.next_item("first-person")
    service.annotation.answer_item("first-person", item.sample.id, item.labels[0])
    status = service.status()
    assert (status["judgments"], status["annotators"]) == (1, 1)
    assert service.admin.data_summary()["annotators"] == 1 and "per_annotator" not in service.admin.data_summary()
    people = service.admin.data_summary(admin=True)["per_annotator"]
    assert [p.handle for p in people] == ["first-person"]
