"""The trainer loop against a real SQLite file and the bundled model: scheduling, leases and the gate."""

import math
import types

import pytest
from apphelpers import judge, make_service, make_trainer, seeded_samples

import poclip.app.worker as worker_module


class FakeTime:
    """Stands in for the worker module's ``time``: the clock moves only when the test says so."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_idle_app_after_a_rejected_candidate_starts_no_new_run_for_10_minutes(tmp_path, bundled, monkeypatch):
    fake = FakeTime()
    monkeypatch.setattr(worker_module, "time", types.SimpleNamespace(time=fake.time, monotonic=fake.monotonic,
                                                                      sleep=fake.sleep))
    monkeypatch.setattr(worker_module, "gate", lambda *a, **k: (False, "refused for the test"))
    svc = make_service(tmp_path, bundled, seed_items=30, retrain_every_pairs=10, augment_attacks=0)
    try:
        for sid, shape, written in seeded_samples(svc.repo, 30)[:12]:
            judge(svc.repo, "poclip-synthetic", sid, shape, written, kind="synthetic")
        trainer = make_trainer(svc)
        trainer.tick()  # 12 new judgments >= 10: scheduled, trained, rejected
        [first] = svc.repo.list_runs()
        assert first.status == "succeeded"
        assert svc.repo.get_version(first.version_id).status == "rejected"
        for _ in range(300):  # ten idle minutes, one tick per two seconds
            fake.sleep(2.0)
            trainer.tick()
            assert [r.id for r in svc.repo.list_runs()] == [first.id], "a new run started with nothing new"
        assert len(svc.repo.list_versions()) == 1
        # New data does schedule again: ten more judgments after the rejected run's.
        for sid, shape, written in seeded_samples(svc.repo, 30)[12:22]:
            judge(svc.repo, "poclip-synthetic", sid, shape, written, kind="synthetic")
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


def test_replay_keeps_a_retrain_to_the_steps_of_its_larger_part():
    from poclip.app.worker import replay_epochs

    assert replay_epochs(8, 1000, 1000) == 4  # the measured setting: 200 labels with the augmentation
    assert replay_epochs(8, 60, 200) == 6
    assert replay_epochs(8, 5000, 1000) == 7
    assert replay_epochs(8, 100, 0) == 8 and replay_epochs(8, 0, 1000) == 8


def test_a_retrain_mixes_in_the_replayed_synthetic_pairs_and_says_how_many(tmp_path, bundled):
    svc = make_service(tmp_path, bundled, seed_items=30, replay_pairs=200)
    try:
        for sid, shape, written in seeded_samples(svc.repo, 30)[:12]:
            judge(svc.repo, "poclip-synthetic", sid, shape, written, kind="synthetic")
        trainer = make_trainer(svc)
        # The 12 judged items and the gold ones among the 30, less the held-out items (never trained on).
        judged = len(svc.repo.training_pairs(None, held_out=trainer.held_out).pairs)
        trainer.request()
        run = trainer.run_pending()
        assert run.status == "succeeded", run.error
        m = run.metrics
        # Each typographic judgment gives 4 augmented pairs more; 200 replayed pairs and 200 clean pictures.
        assert (m["crowd_pairs"], m["replay_pairs"], m["pairs"]) == (5 * judged, 200, 5 * judged + 200)
        assert m["clean"] == 300  # the judged pictures + 200 replayed, topped up to 300
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
        for sid, shape, written in seeded_samples(svc.repo, 30)[:12]:
            judge(svc.repo, "poclip-synthetic", sid, shape, written, kind="synthetic")
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
