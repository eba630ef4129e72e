"""The app's back end against a real SQLite file and the bundled model (no browser)."""

import random

import pytest
import torch
from apphelpers import ADMIN_TOKEN, make_service, truth_by_attack

from annotation_db import ValidationError
from poclip.app.service import AdminRequired, AppService, UserError
from poclip.app.worker import gate
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


def test_vote_stores_one_judgment_and_bad_votes_store_nothing(service):
    before = service.repo.stats().judgments
    stored = service.vote("ann", star_scene(), list(synth.SHAPES), TextAttack("circle", size=0.15), "neither",
                          correct_label="star")
    assert stored["chosen"] == "star" and stored["rejected"] != "star"
    assert service.repo.stats().judgments == before + 1
    for kwargs, message in [({"verdict": "sideways"}, "must be one of"),
                            ({"verdict": "neither", "correct_label": None}, "Pick the right label"),
                            ({"verdict": "left", "shown_left": "nobody"}, "shown_left")]:
        args = {"verdict": "left", "shown_left": "base", "correct_label": None, **kwargs}
        with pytest.raises(UserError, match=message):
            service.vote("ann2", star_scene(), list(synth.SHAPES), None, **args)
    assert service.repo.stats().judgments == before + 1
    with pytest.raises(ValidationError):  # the same person on the same sample again
        service.vote("ann", star_scene(), list(synth.SHAPES), TextAttack("circle", size=0.15), "neither",
                     correct_label="star")


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
    svc = make_service(tmp_path, bundled, seed_items=220)
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
    svc = make_service(tmp_path, bundled, seed_items=0)
    try:
        for i in range(20):
            rng = random.Random(f"vandal:{i}")
            scene = synth.sample_scene(rng)
            attack = random_attack(synth.SHAPES, scene.shape, rng)
            # A vandal insists the written word is the object: training on this rewards reading.
            svc.vote("mallory", synth.draw_scene(scene, 224), list(synth.SHAPES), attack, "neither",
                     correct_label=attack.text)
        svc.retrain(token=TOKEN)
        run = svc.trainer.run_pending()
        assert run.status == "succeeded", run.error
        version = svc.repo.get_version(run.version_id)
        assert version.status == "rejected"
        # Rewarding the written word either fails to improve typographic accuracy or costs clean accuracy.
        assert "does not improve" in version.reason or "more than 1 point below" in version.reason
        assert svc.repo.active_version() is None and svc.live.policy is None
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

    svc = make_service(tmp_path, bundled, seed_items=40, trainer="off")
    try:
        for _ in range(20):
            item = svc.next_item("walt")
            svc.answer_item("walt", item.sample.id, true_shape(svc, item.sample))
        queued = svc.retrain(token=TOKEN)
        env = {**os.environ, "POCLIP_DATA_DIR": str(tmp_path), "POCLIP_MODEL": "bundled", "POCLIP_GATE_N": "300",
               "POCLIP_RETRAIN_EVERY_PAIRS": "0", "POCLIP_STARTER_HEAD": "0"}
        proc = subprocess.run([sys.executable, "-m", "poclip", "worker", "--once"], cwd=REPO_DIR, env=env,
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
