"""The app's back end against a real SQLite file and the bundled model (no browser)."""

import random

import pytest
import torch
from apphelpers import ADMIN_TOKEN, ONE_PERSON, ONE_PERSON_ENV, footprint, make_service, truth_by_attack

from annotation_db import ValidationError
from poclip.app.service import AdminRequired, AppService
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
    result = service.compare(star_scene(), list(synth.SHAPES), TextAttack("circle", size=0.15))
    assert result.base.probs == result.aligned.probs
    assert result.version == "base model (no aligned version yet)"
    assert abs(sum(result.base.probs.values()) - 1) < 1e-4


def test_vote_stores_exactly_the_comparison_and_bad_votes_store_nothing(service):
    shown = service.predict(star_scene(), list(synth.SHAPES), TextAttack("circle", size=0.15), source="synthetic")
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
            service.vote(**{"annotator": "ann2", **kwargs})
    assert footprint(service) == before  # no image row, file, sample, annotator or judgment

    stored = service.vote("ann", shown.id, "neither", correct_label="star")
    assert (stored["chosen"], stored["rejected"], stored["shown_left"]) == ("star", shown.base.label, "base")
    sample = service.repo.get_sample(stored["sample_id"])
    assert sample.attack == shown.attack.to_dict() and sample.labels == shown.labels
    after = footprint(service)
    assert (after["judgments"], after["images"], after["samples"]) == (before["judgments"] + 1,
                                                                       before["images"] + 1, before["samples"] + 1)
    with pytest.raises(UserError, match="already judged this picture"):  # the same person, the same picture
        service.vote("ann", shown.id, "left")
    assert footprint(service) == after


def test_a_stale_vote_stores_the_old_comparison_exactly(service):
    """Predict, then the controls change (another word, another t) and a new Predict: the old id still means
    the old picture, word, label set, sides and answers."""
    old = service.predict(star_scene(), list(synth.SHAPES), TextAttack("circle", size=0.15), t=1.0,
                          arena=True, source="synthetic", rng=random.Random(3))
    new = service.predict(star_scene(), ["star", "heart"], TextAttack("heart", size=0.3), t=0.0,
                          source="synthetic")
    assert new.id != old.id
    stored = service.vote("stale", old.id, "left")
    judgment = service.repo.judgments_of("stale")[0]
    sample = service.repo.get_sample(stored["sample_id"])
    assert sample.attack["text"] == "circle" and sample.labels == tuple(synth.SHAPES)
    assert (judgment.shown_left, judgment.said_right) == (old.shown_left, "left")
    assert judgment.chosen == old.left.label and stored["t"] == 1.0


def test_refused_by_the_rate_limit_leaves_nothing_behind(tmp_path, bundled):
    svc = make_service(tmp_path, bundled, rate_limit="1/60", seed_items=0)
    try:
        first = svc.predict(star_scene(), list(synth.SHAPES), TextAttack("circle", size=0.15), source="synthetic")
        svc.vote("quick", first.id, "neither", correct_label="star")
        before = footprint(svc)
        other = synth.draw_scene(synth.sample_scene(random.Random(8), shape="heart"), 224)
        second = svc.predict(other, list(synth.SHAPES), TextAttack("arrow", size=0.15), source="synthetic")
        with pytest.raises(ValidationError, match="slow down"):
            svc.vote("quick", second.id, "neither", correct_label="heart")
        assert footprint(svc) == before  # the new picture was not stored
    finally:
        svc.close()


def test_an_upload_is_stored_only_when_its_uploader_agreed(service):
    private = service.predict(star_scene(), list(synth.SHAPES), TextAttack("circle", size=0.15))
    before = footprint(service)
    with pytest.raises(UserError, match="Others may see"):
        service.vote("owner", private.id, "neither", correct_label="star")
    assert footprint(service) == before
    shared = service.predict(star_scene(), list(synth.SHAPES), TextAttack("circle", size=0.15), shared=True)
    service.vote("owner", shared.id, "neither", correct_label="star")
    assert footprint(service)["images"] == before["images"] + 1


def test_comparisons_are_bounded_and_expire_with_a_clear_message():
    from poclip.app.comparisons import ComparisonExpired, ComparisonStore
    from poclip.app.service import Answer, Comparison

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
    item = service.next_item("fast")
    assert item.labels == list(synth.SHAPES) and item.picture.size == (224, 224)
    stored = service.answer_item("fast", item.sample.id, item.labels[0])
    assert stored["rejected"] != stored["chosen"]
    assert service.labelled_by("fast") == 1
    assert service.undo("fast")["sample_id"] == item.sample.id
    assert service.labelled_by("fast") == 0
    with pytest.raises(UserError, match="not one of"):
        service.answer_item("fast", item.sample.id, "banana")


def test_rate_limit_gives_a_clear_message(tmp_path, bundled):
    svc = make_service(tmp_path, bundled, rate_limit="2/60")
    try:
        for _ in range(2):
            item = svc.next_item("quick")
            svc.answer_item("quick", item.sample.id, item.labels[0])
        item = svc.next_item("quick")
        with pytest.raises(ValidationError, match="(?i)too many|rate|slow"):
            svc.answer_item("quick", item.sample.id, item.labels[0])
        assert svc.labelled_by("quick") == 2
    finally:
        svc.close()


def test_admin_actions_need_the_token(service):
    for action in (lambda **kw: service.retrain(**kw), lambda **kw: service.rollback(**kw),
                   lambda **kw: service.backup(**kw), lambda **kw: service.export_parquet(**kw)):
        with pytest.raises(AdminRequired):
            action()
        with pytest.raises(AdminRequired):
            action(token="wrong")
    assert service.repo.list_runs() == []
    run = service.retrain(token=TOKEN)
    assert run["status"] == "queued"
    assert service.is_admin(hf_orgs=["someone-else"]) is False


def true_shape(service: AppService, sample) -> str:
    return TRUTH[TextAttack.from_dict(sample.attack).to_json()]


TRUTH = truth_by_attack(300)


@pytest.mark.slow
def test_labels_retrain_promote_and_the_attacked_prediction_flips(tmp_path, bundled):
    svc = make_service(tmp_path, bundled, seed_items=220, **ONE_PERSON)
    try:
        fooled = []
        for _ in range(200):
            item = svc.next_item("alice")
            truth = true_shape(svc, item.sample)
            before = svc.compare(item.picture, item.labels, normalize=False)
            if before.base.label == item.sample.attack["text"]:
                fooled.append((item.picture, truth))
            svc.answer_item("alice", item.sample.id, truth)
        assert len(fooled) >= 20
        svc.retrain(token=TOKEN)
        run = svc.trainer.run_pending()
        assert run.status == "succeeded", run.error
        version = svc.repo.active_version()
        assert version is not None and version.id == run.version_id
        assert svc.live.version.id == version.id
        gate = version.metrics
        # Measured: typographic accuracy 0.07 -> 0.70 on the held-out gate set after 200 labels.
        assert gate["candidate"]["typographic_accuracy"] >= gate["base"]["typographic_accuracy"] + 0.4
        assert gate["candidate"]["clean_accuracy"] >= gate["base"]["clean_accuracy"] - 0.01
        flipped = sum(svc.compare(pic, list(synth.SHAPES), normalize=False).aligned.label == truth
                      for pic, truth in fooled)
        assert flipped / len(fooled) >= 0.5
        # t = 0 is the base model exactly.
        pic, _ = fooled[0]
        at_zero = svc.compare(pic, list(synth.SHAPES), t=0.0, normalize=False)
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
            shown = svc.predict(synth.draw_scene(scene, 224), list(synth.SHAPES), attack, source="synthetic")
            said = [side for side in ("base", "aligned") if getattr(shown, side).label == attack.text]
            if len(said) == 2:  # both sides said the word: "both" confirms it
                svc.vote("mallory", shown.id, "both")
            elif said:  # the side that read the word wins
                svc.vote("mallory", shown.id, "left" if shown.shown_left == said[0] else "right")
            else:
                svc.vote("mallory", shown.id, "neither", correct_label=attack.text)
        svc.retrain(token=TOKEN)
        run = svc.trainer.run_pending()
        assert run.status == "succeeded", run.error
        version = svc.repo.get_version(run.version_id)
        assert version.status == "rejected"
        # Rewarding the written word either fails to improve typographic accuracy or costs clean accuracy.
        assert "does not improve" in version.reason or "more than 1 point below" in version.reason
        assert svc.repo.active_version() is None and svc.live.version is None and svc.live.policy is not None
    finally:
        svc.close()


def test_gate_rule():
    base = {"clean_accuracy": 0.99, "typographic_accuracy": 0.05}
    assert gate({"clean_accuracy": 0.985, "typographic_accuracy": 0.9}, base, base)[0]
    ok, why = gate({"clean_accuracy": 0.97, "typographic_accuracy": 0.9}, base, base)
    assert not ok and "more than 1 point" in why
    ok, why = gate({"clean_accuracy": 0.99, "typographic_accuracy": 0.05}, base, base)
    assert not ok and "does not improve" in why


def test_too_few_pairs_fails_the_run_with_the_reason(service):
    service.retrain(token=TOKEN)
    run = service.trainer.run_pending()
    assert run.status == "failed" and "at least 10" in run.error
    assert service.repo.list_versions() == []


def test_live_head_swap_keeps_in_flight_requests_on_the_old_head(tmp_path, bundled):
    from poclip.engine.policy import Policy, save_head

    svc = make_service(tmp_path, bundled)
    try:
        policy = Policy(bundled)
        with torch.no_grad():
            policy.linear.weight.mul_(0.5)
        path = save_head(policy, tmp_path / "heads" / "manual.safetensors")
        version = svc.repo.register_version(bundled.spec, str(path), {"note": "manual"})
        old = svc.live
        svc.promote(version.id, token=TOKEN)
        assert svc.live.version.id == version.id and old.policy is None  # the old object is untouched
        result = svc.compare(star_scene(), list(synth.SHAPES))
        assert result.version == f"version {version.id}"
    finally:
        svc.close()


def test_new_pairs_count_and_scheduler(tmp_path, bundled):
    svc = make_service(tmp_path, bundled, retrain_every_pairs=5)
    try:
        for _ in range(5):
            item = svc.next_item("sched")
            svc.answer_item("sched", item.sample.id, item.labels[0])
        assert svc.trainer.new_pairs() >= 5
        assert svc.status()["next_retrain_at"] == 0
        run = svc.trainer.maybe_schedule()
        assert run is not None and run.status == "queued"
    finally:
        svc.close()


@pytest.mark.slow
def test_standalone_worker_process_trains_the_queued_run(tmp_path, bundled):
    import json
    import os
    import subprocess
    import sys

    from poclip.settings import REPO_DIR

    svc = make_service(tmp_path, bundled, seed_items=40, trainer="off", **ONE_PERSON)
    try:
        for _ in range(20):
            item = svc.next_item("walt")
            svc.answer_item("walt", item.sample.id, true_shape(svc, item.sample))
        queued = svc.retrain(token=TOKEN)
        env = {**os.environ, "POCLIP_DATA_DIR": str(tmp_path), "POCLIP_MODEL": "bundled", "POCLIP_GATE_N": "300",
               "POCLIP_RETRAIN_EVERY_PAIRS": "0", "POCLIP_STARTER_HEAD": "0", **ONE_PERSON_ENV}
        proc = subprocess.run([sys.executable, "-m", "poclip", "worker", "--once", "--json"], cwd=REPO_DIR, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        runs = json.loads(proc.stdout)["runs"]
        assert [r["run"] for r in runs] == [queued["run_id"]] and runs[0]["status"] == "succeeded"
        version = svc.repo.get_version(runs[0]["version"])
        # The app process follows whatever the worker decided.
        svc.trainer.sync_live()
        assert (svc.live.version is not None) == (version.status == "active")
    finally:
        svc.close()


def test_text_invariance_pairs_write_other_text_from_the_style_family_on_the_same_picture():
    from poclip.app.worker import text_invariance_pairs
    from poclip.engine.train import Preference

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
        assert again.live.policy is None
        assert again.compare(star_scene(), list(synth.SHAPES)).version == "base model (no aligned version yet)"
    finally:
        again.close()


def test_two_retrain_clicks_queue_one_run(service):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda _: service.retrain(token=TOKEN), range(4)))
    queued = [r for r in service.repo.list_runs() if r.status == "queued"]
    assert len(queued) == 1 and {r["run_id"] for r in runs} == {queued[0].id}


def test_the_gold_pseudo_annotator_is_not_counted_as_a_person(service):
    status = service.status()
    gold = service.repo.stats().gold_items  # placed by a keyed hash: a share of the seeded items, not a fixed count
    assert gold > 0 and status["gold_items"] == gold and (status["judgments"], status["annotators"]) == (0, 0)
    item = service.next_item("first-person")
    service.answer_item("first-person", item.sample.id, item.labels[0])
    status = service.status()
    assert (status["judgments"], status["annotators"]) == (1, 1)
    assert service.data_summary()["annotators"] == 1 and "per_annotator" not in service.data_summary()
    people = service.data_summary(admin=True)["per_annotator"]
    assert [p.handle for p in people] == ["first-person"]


def test_rollback_after_a_manual_promote_returns_to_what_was_live(tmp_path, bundled):
    from poclip.engine.policy import Policy, save_head

    svc = make_service(tmp_path, bundled, seed_items=0)
    try:
        ids = []
        for k in range(3):
            path = save_head(Policy(bundled), tmp_path / "heads" / f"v{k}.safetensors")
            parent = ids[0] if ids else None  # versions 2 and 3 were both trained from version 1
            ids.append(svc.repo.register_version(bundled.spec, str(path), {"loss": "dpo"}, parent_id=parent).id)
        svc.promote(ids[0], token=TOKEN)
        svc.promote(ids[2], token=TOKEN)
        svc.promote(ids[1], token=TOKEN)  # manual: version 3 was live, version 2's parent is version 1
        assert svc.rollback(token=TOKEN) == {"active_version": ids[2]}
        assert svc.live.version.id == ids[2]
    finally:
        svc.close()
