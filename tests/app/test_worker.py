"""The trainer loop against a real SQLite file and the bundled model: scheduling, leases and the gate."""

import math

import pytest
import torch
from apphelpers import (
    ADMIN_TOKEN,
    ONE_PERSON,
    crowd_pairs_in_store,
    judge,
    judge_seeded,
    make_service,
    make_trainer,
    seeded_samples,
    truth_by_attack,
)

import poclip.app.worker as worker_module
from poclip.app.retrain.schedule import Schedule, crowd_threshold
from poclip.app.retrain.training import run_config
from poclip.world.attacks import TextAttack

TRUTH = truth_by_attack(40)


def label_truthfully(svc, who, n):
    """``who`` answers the next ``n`` items served to them with the object's true shape."""
    for _ in range(n):
        item = svc.annotation.next_item(who)
        svc.annotation.answer_item(who, item.sample.id, TRUTH[TextAttack.from_dict(item.sample.attack).to_json()])


def finish_as_the_trainer_would(svc, *, promote: bool):
    """Claim the queued run (or a new one) and finish it as the trainer does, without training: a version
    promoted or rejected, the record's crowd pairs counted the long way, the watermark the newest judgment."""
    from poclip.engine.policy import Policy, save_head

    run = svc.repo.claim_run("test-worker", svc.repo.enqueue_run({"loss": "dpo"}).id)
    watermark = svc.repo.training_pairs(None).watermark
    record = {"crowd_pairs": crowd_pairs_in_store(svc.repo), "judged_pairs": 0, "replay_pairs": 0, "gate": "test"}
    head = save_head(Policy(svc.encoder), svc.settings.data_dir / "heads" / f"run{run.id}.safetensors")
    lease = {"run_id": run.id, "lease": run.lease}
    version = svc.repo.register_version(svc.encoder.spec, str(head), record, judgment_watermark=watermark, **lease)
    version = (svc.repo.promote_version(version.id, **lease) if promote
               else svc.repo.reject_version(version.id, "refused for the test", **lease))
    return svc.repo.finish_run(run.id, metrics=record, version_id=version.id, lease=run.lease,
                               judgment_watermark=watermark)


def test_after_a_rejection_an_idle_app_waits_for_twice_the_new_crowd_pairs_and_a_promotion_resets_it(tmp_path,
                                                                                                   bundled):
    """POCLIP_RETRAIN_EVERY_PAIRS=4: a run needs 4 new crowd pairs (20% of a small crowd is less); after a rejected
    run 8, however often the idle trainer ticks; after a promotion 4 again. Gold items give no crowd pair."""
    svc = make_service(tmp_path, bundled, seed_items=40, retrain_every_pairs=4, **ONE_PERSON)
    try:
        trainer = make_trainer(svc)
        label_truthfully(svc, "ann", 6)
        assert trainer.pair_counts().threshold == 4 and trainer.pair_counts().new_crowd_pairs >= 4
        first = finish_as_the_trainer_would(svc, promote=False)  # the scheduled run, refused by the gate
        used = first.metrics["crowd_pairs"]
        assert used == svc.pair_counts().crowd_pairs >= 4
        counts = svc.pair_counts()
        assert (counts.threshold, counts.rejections, counts.new_crowd_pairs, counts.more_needed) == (8, 1, 0, 8)
        assert svc.status()["next_retrain_after_crowd_pairs"] == 8

        for _ in range(50):  # an idle app: the trainer ticks and nothing new arrives
            trainer.tick()
        assert [r.id for r in svc.repo.list_runs()] == [first.id], "a run was queued with nothing new"

        while svc.pair_counts().new_crowd_pairs < 8:  # one label at a time: no run before the eighth new pair
            assert trainer.maybe_schedule() is None
            label_truthfully(svc, "ann", 1)
            assert svc.pair_counts().crowd_pairs == crowd_pairs_in_store(svc.repo)
        assert svc.pair_counts().crowd_pairs == used + 8
        queued = trainer.maybe_schedule()
        assert queued is not None and queued.status == "queued" and "8 new crowd pairs" in queued.config["reason"]
        assert trainer.maybe_schedule() is None and [r.status for r in svc.repo.list_runs()] == ["queued",
                                                                                                 "succeeded"]

        second = finish_as_the_trainer_would(svc, promote=True)
        assert second.id == queued.id
        counts = svc.pair_counts()
        assert (counts.threshold, counts.rejections, counts.last_run_crowd_pairs) == (4, 0, used + 8)
        while svc.pair_counts().new_crowd_pairs < 4:
            assert trainer.maybe_schedule() is None
            label_truthfully(svc, "ann", 1)
        assert trainer.maybe_schedule() is not None
    finally:
        svc.close()


@pytest.mark.slow
def test_a_targeted_per_class_poisoning_batch_never_wrecks_the_class(tmp_path, bundled, capsys):
    """Honest everywhere except on star pictures, which three handles call hearts: either star's accuracy falls
    and the gate refuses, naming star, with the per-class table, or the candidate keeps star within the margin
    (the default tower head with the invariant recipe keeps star at 0.967 under attack)."""
    svc = make_service(tmp_path, bundled, seed_items=300, augment_attacks=0)
    try:
        items = seeded_samples(svc.repo, 300)
        honest_items = 60  # about a fifth of them are held out for the gate's crowd agreement, never trained on
        for sid, shape, written in items[:honest_items]:
            judge(svc.repo, "poclip-synthetic", sid, shape, written, kind="synthetic")
        trainer = make_trainer(svc)
        trainer.request()
        honest = trainer.run_pending()
        assert svc.repo.get_version(honest.version_id).status == "active", honest.metrics["gate"]

        for who in ("mallory-1", "mallory-2", "mallory-3"):
            for i, (sid, shape, written) in enumerate(items):
                if sid <= items[honest_items - 1][0]:
                    continue
                # The worst case: the attackers answer gold items honestly, as if they knew which those are, so
                # trust does not catch them and only the gate stands in the way.
                if shape == "star" and not svc.seeding.is_gold_item(i):
                    judge(svc.repo, who, sid, "heart", "star")  # every new star is called a heart
                else:
                    judge(svc.repo, who, sid, shape, written)
        trainer.request()
        poisoned = trainer.run_pending()
        version = svc.repo.get_version(poisoned.version_id)
        reason = version.reason or ""
        with capsys.disabled():
            print("\n" + (reason or poisoned.metrics["gate"]))
        star = next(r for r in poisoned.metrics["per_class"] if r["class"] == "star")
        star_hurt = min(star["attacked_change"], star["clean_change"]) < -worker_module.CLASS_DROP_LIMIT
        if star_hurt:  # whatever else the gate found, it names star and keeps the honest version
            assert version.status == "rejected" and ("star (attacked" in reason or "star (clean" in reason)
        if version.status == "rejected":
            assert svc.repo.active_version().id == honest.version_id
        else:  # the text-invariant recipe can shrug the campaign off; star must not have been wrecked
            assert not star_hurt, star
    finally:
        svc.close()


def test_the_gate_refuses_a_better_overall_candidate_that_drops_one_class():
    def metrics(typo, star_attacked):
        per_class = {c: {"attacked": 0.6, "clean": 1.0} for c in ("circle", "square", "heart")}
        per_class["star"] = {"attacked": star_attacked, "clean": 1.0}
        return {"typographic_accuracy": typo, "clean_accuracy": 1.0, "per_class": per_class}

    live, base = metrics(0.60, 0.70), metrics(0.05, 0.05)
    ok, reason = worker_module.gate(metrics(0.70, 0.30), live, base)
    assert not ok and "per-class accuracy drops" in reason and "star (attacked -0.400)" in reason
    assert "circle" not in reason.splitlines()[0]
    ok, reason = worker_module.gate(metrics(0.70, 0.65), live, base)
    assert ok, reason


@pytest.mark.parametrize(("head", "message"), [("bogus", "unknown head"),
                                               ("last_blocks:9", "more blocks than the image tower has")])
def test_a_head_the_backbone_cannot_take_fails_at_start_with_the_reason(tmp_path, bundled, head, message):
    from poclip.engine.policy import HeadError

    with pytest.raises(HeadError, match=message):
        make_service(tmp_path, bundled, head=head)


def test_poclip_head_picks_the_trainers_head_and_empty_means_the_measured_default(tmp_path, bundled):
    from poclip.engine.config import DEFAULT_HEAD

    for head, expected in (("projection", "projection"), ("", DEFAULT_HEAD)):
        service = make_service(tmp_path / (head or "default"), bundled, head=head)
        try:
            assert str(make_trainer(service).head) == expected
        finally:
            service.close()


def test_a_real_size_tower_on_the_cpu_retrains_its_projection_by_default(tiny):
    from poclip.engine.config import DEFAULT_HEAD, REAL_SIZE_TOWER, default_head
    from poclip.engine.models import load_model

    big = load_model("ViT-B-32", device=torch.device("cpu"))
    assert sum(p.numel() for p in big.model.visual.parameters()) > REAL_SIZE_TOWER
    assert default_head(big) == "projection"
    assert default_head(tiny) == DEFAULT_HEAD


def test_the_threshold_is_the_setting_or_a_fifth_of_the_last_runs_crowd_pairs_doubled_per_rejection_to_8x():
    assert [crowd_threshold(50, used, 0) for used in (0, 100, 250, 1000, 1001)] == [50, 50, 50, 200, 201]
    assert [crowd_threshold(50, 1000, r) for r in range(6)] == [200, 400, 800, 1600, 1600, 1600]
    assert crowd_threshold(0, 1000, 2) is None  # POCLIP_RETRAIN_EVERY_PAIRS=0: never by count
    assert crowd_threshold(1, 15, 0) == 3


def test_the_timer_still_needs_ten_new_crowd_pairs():
    schedule = Schedule(every_pairs=0, every_minutes=10, now=0.0)
    assert not schedule.due(599.0, 50, None)  # not yet ten minutes
    assert not schedule.due(600.0, 9, None)  # ten minutes, nine new crowd pairs
    assert schedule.due(600.0, 10, None)
    assert not schedule.due(601.0, 10, None)  # the timer starts again from the run it queued


def test_replay_keeps_a_retrain_to_the_steps_of_its_larger_part():
    from poclip.app.worker import replay_epochs

    assert replay_epochs(8, 1000, 1000) == 4  # the measured setting: 200 labels with the augmentation
    assert replay_epochs(8, 60, 200) == 6
    assert replay_epochs(8, 5000, 1000) == 7
    assert replay_epochs(8, 100, 0) == 8 and replay_epochs(8, 0, 1000) == 8


def test_a_retrain_that_refines_the_live_head_takes_half_the_epochs_of_one_from_the_base_model():
    from poclip.app.retrain.data import TrainingData

    data = TrainingData([], [], 200, 1000, 1000, None, [])
    fresh, refining = run_config("last_blocks:2", {}, data), run_config("last_blocks:2", {}, data, refines=True)
    assert (fresh.epochs, refining.epochs) == (4, 2)
    tiny = TrainingData([], [], 2, 10, 0, None, [])
    assert run_config("linear", {"loss": "ipo"}, tiny, refines=True).epochs == 30  # the linear head's 60, halved
    assert run_config("projection", {}, TrainingData([], [], 1, 1, 0, None, []), refines=True).epochs == 6


def test_a_retrain_mixes_in_the_replayed_synthetic_pairs_and_says_how_many(tmp_path, bundled):
    svc = make_service(tmp_path, bundled, seed_items=30, replay_pairs=200)
    try:
        judge_seeded(svc.repo)
        trainer = make_trainer(svc)
        # The 12 judged items and the gold ones among the 30, less the held-out items (never trained on).
        judged = len(svc.repo.training_pairs(None, held_out=trainer.held_out).pairs)
        trainer.request()
        run = trainer.run_pending()
        assert run.status == "succeeded", run.error
        m = run.metrics
        # Each typographic judgment gives 4 augmented pairs more; 200 replayed pairs and 200 clean pictures. The
        # synthetic generator's votes and the gold answers are no crowd pairs: those are people's.
        assert (m["judged_pairs"], m["replay_pairs"], m["pairs"]) == (5 * judged, 200, 5 * judged + 200)
        assert m["crowd_pairs"] == 0
        assert m["clean"] == 300  # the judged pictures + 200 replayed, topped up to 300
        # over the steps of its larger part: this app serves no starter head, so the run starts from the base model
        assert m["epochs"] == round(8 * 200 / (5 * judged + 200))
    finally:
        svc.close()
    with pytest.raises(ValueError, match="POCLIP_REPLAY_PAIRS"):
        make_service(tmp_path / "bad", bundled, replay_pairs=-1)


BEAT_KEYS = {"phase", "step", "total", "message", "history"}


def test_a_running_retrain_shows_its_phases_steps_and_curve_in_the_run_row(tmp_path, bundled, monkeypatch):
    """What a reader in another process sees: every beat is exactly the progress keys, the phases arrive in order
    without waiting a period, the curve is there by evaluation time, and the row is written at most once a second."""
    import threading
    import time

    svc = make_service(tmp_path, bundled, seed_items=30)
    seen = []  # (thread, time, the run row's metrics right after the write)
    heartbeat = svc.repo.heartbeat

    def stored(run_id, metrics=None, **kwargs):
        started = time.monotonic()  # when the write began: a slow write on a busy machine must not shrink the gap
        heartbeat(run_id, metrics, **kwargs)
        seen.append((threading.current_thread().name, started, svc.repo.get_run(run_id).metrics))

    monkeypatch.setattr(svc.repo, "heartbeat", stored)
    try:
        judge_seeded(svc.repo)
        trainer = worker_module.Trainer(svc.settings, svc.repo, svc.encoder, svc.live_head, beat_every_s=0.05)
        trainer.request()
        run = trainer.run_pending()
        assert run.status == "succeeded", run.error
        # Once the run is over its row keeps the curve, so the Train tab still draws it.
        finished = svc.training.progress()
        assert finished.run_id == run.id and finished.phase in ("promoted", "rejected")
        assert finished.step == finished.total > 0  # optimizer steps, as while it ran
        assert 0 < len(finished.history) <= 200 and finished.history[-1]["step"] == run.metrics["history"][-1]["step"]
    finally:
        svc.close()
    rows = [metrics for _, _, metrics in seen]
    assert rows and all(set(m) == BEAT_KEYS for m in rows), rows
    phases = [m["phase"] for m in rows]
    order = ["loading pairs", "embedding", "training", "evaluating"]
    assert {"loading pairs", "embedding", "evaluating"} <= set(phases)
    assert [order.index(p) for p in phases] == sorted(order.index(p) for p in phases), phases
    evaluating = next(m for m in rows if m["phase"] == "evaluating")
    assert evaluating["step"] == evaluating["total"] > 0 and isinstance(evaluating["message"], str)
    curve = evaluating["history"]
    assert 0 < len(curve) <= 200 and curve[-1]["step"] == evaluating["step"]
    assert all(isinstance(r["step"], int) and {"loss", "rewards/margins", "kl/clean", "rewards/accuracies"} <= set(r)
               and all(isinstance(r[k], float) for k in ("loss", "rewards/margins")) for r in curve)
    beats = [t for name, t, _ in seen if name.startswith("poclip-heartbeat")]
    assert len(beats) >= 2 and min(b - a for a, b in zip(beats, beats[1:], strict=False)) >= 0.95


def test_a_beat_thins_a_long_curve_evenly_keeps_the_newest_and_fits_the_store():
    from annotation_db.validation import MAX_JSON_BYTES, canonical_json
    from poclip.app.retrain.heartbeat import beat_metrics, thin

    assert thin(list(range(150))) == list(range(150))
    thinned = thin(list(range(1000)))
    assert len(thinned) == 200 and thinned[0] == 0 and thinned[-1] == 999
    assert {b - a for a, b in zip(thinned, thinned[1:], strict=False)} <= {5, 6}  # evenly: 999 / 199 apart

    record = {"epoch": 3, "lr": 2.9e-4, "loss": -0.123456789, "rewards/chosen": 1.23456789e-5,
              "rewards/rejected": -12.3456789, "rewards/margins": 12.3456789, "rewards/accuracies": 0.984375,
              "kl/clean": 1.23456789e-7, "loss/preference": 0.5, "loss/kl": 0.1, "loss/invariance": 0.2,
              "loss/ortho": 0.0}
    curve = [{"step": s, **record} for s in range(1, 5001)] + [{"step": 5001, "loss": math.nan}]
    progress = worker_module.Progress(7, "training", 5000, 9000, curve)
    beat = beat_metrics(progress)
    assert set(beat) == BEAT_KEYS and (beat["phase"], beat["step"], beat["total"]) == ("training", 5000, 9000)
    assert len(beat["history"]) == 200 and beat["history"][-1] == {"step": 5001, "loss": None}  # JSON has no NaN
    assert beat["history"][0]["rewards/margins"] == 12.346
    assert len(canonical_json(beat).encode()) < MAX_JSON_BYTES


def test_after_a_rollback_to_the_base_model_a_retrain_is_gated_against_it_and_replaces_it(tmp_path, bundled,
                                                                                          monkeypatch):
    verdicts = []

    def accept(candidate, live, base, **kwargs):  # the real gate's inputs, recorded; the verdict forced
        verdicts.append((live, base))
        return True, "accepted for the test"

    monkeypatch.setattr(worker_module, "gate", accept)
    # A linear head on 100 gate pictures keeps the run short; what is checked is what the gate compares against.
    svc = make_service(tmp_path, bundled, seed_items=30, augment_attacks=0, starter_head=True, head="linear",
                       gate_eval_n=100)
    try:
        named = svc.admin.rollback(to="base", token=ADMIN_TOKEN)
        judge_seeded(svc.repo)
        trainer = make_trainer(svc)
        trainer.request()
        run = trainer.run_pending()
        assert run.status == "succeeded", run.error
        [(live, base)] = verdicts
        assert live == base  # "live" is what served: the base model, not the starter head this app has
        assert run.metrics["live_before"] == run.metrics["base"]
        version = svc.repo.get_version(run.version_id)
        assert (version.status, version.parent_id) == ("active", named["active_version"])
        assert svc.repo.get_version(named["active_version"]).status == "archived"  # replaced as usual
        assert svc.live_head.current.version.id == version.id
    finally:
        svc.close()


def test_a_killed_run_is_retried_once_by_the_trainer_itself(tmp_path, bundled):
    import socket
    import subprocess
    import sys

    svc = make_service(tmp_path, bundled, seed_items=30)
    try:
        trainer = make_trainer(svc)
        trainer.request()
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        killed = svc.repo.claim_run(f"{socket.gethostname()}:{dead.pid}")  # its worker process died mid-run
        run = trainer.run_pending()  # finds it dead, queues it again and runs that: nobody has to ask
        assert (run.attempt, run.worker, run.config["reason"]) == (2, trainer.worker_id, f"retry of run {killed.id}")
        assert svc.repo.get_run(killed.id).error.endswith(f"queued again as run {run.id} (attempt 2 of 2)")
        # With nothing labelled yet the retry itself fails, and a run that fails by itself stays failed.
        assert run.status == "failed" and "NotEnoughData" in run.error
        assert trainer.run_pending() is None and [r.status for r in svc.repo.list_runs()] == ["failed", "failed"]
    finally:
        svc.close()


def test_a_run_that_loses_its_lease_leaves_no_head_file_behind(tmp_path, bundled, monkeypatch):
    svc = make_service(tmp_path, bundled, seed_items=30)
    try:
        judge_seeded(svc.repo)
        trainer = make_trainer(svc)
        evaluate, lost = trainer.evaluate, []

        def evaluate_while_reaped(policy):
            # While the candidate (already written) is gated, another process takes the run away, as a reaper
            # that found its heartbeat stale would.
            if not lost:
                lost.append(svc.repo.fail_run(svc.repo.list_runs(limit=1)[0].id, "no heartbeat for over 300 s"))
            return evaluate(policy)

        monkeypatch.setattr(trainer, "evaluate", evaluate_while_reaped)
        trainer.request()
        run = trainer.run_pending()
        assert run.status == "failed" and lost and svc.repo.list_versions() == []
        assert not (tmp_path / "heads" / f"run{run.id}.safetensors").exists()
        assert list((tmp_path / "heads").glob("*.safetensors")) == []
    finally:
        svc.close()
