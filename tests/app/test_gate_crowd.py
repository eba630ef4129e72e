"""The promotion gate measures what people taught: the held-out crowd split, crowd agreement with its Wilson
interval, the rule on crowd and synthetic figures, and a real retrain that records the gate's table."""

import pytest
from apphelpers import judge, make_service, make_trainer, seeded_samples

from poclip.app.retrain.crowd import Agreement, HeldOutSplit, wilson
from poclip.app.retrain.data import collect
from poclip.app.retrain.gate import MIN_HELD_OUT, format_gate_table, gate, gate_table
from poclip.world.attacks import TextAttack

SYNTHETIC = {"typographic_accuracy": 0.80, "clean_accuracy": 0.95,
             "per_class": {c: {"attacked": 0.8, "clean": 0.95} for c in ("circle", "square", "star", "heart")}}
BASE = {"typographic_accuracy": 0.10, "clean_accuracy": 0.96, "per_class": {}}


def crowd(candidate_k, live_k, n=120, base_k=40):
    return {"candidate": Agreement.of(candidate_k, n), "live": Agreement.of(live_k, n), "base": Agreement.of(base_k, n)}


def test_a_candidate_that_improves_crowd_agreement_and_keeps_the_synthetic_figures_is_promoted():
    # 90 of 120 (low 0.667) against the live model's 60 of 120 (0.500); synthetic figures unchanged.
    ok, reason = gate(SYNTHETIC, SYNTHETIC, BASE, crowd=crowd(90, 60))
    assert ok, reason
    assert reason.startswith("rule A") and "crowd agreement 0.500 -> 0.750 on 120 held-out pairs" in reason
    rows = gate_table(SYNTHETIC, SYNTHETIC, BASE, crowd(90, 60))
    assert [r["pass"] for r in rows] == [True, False, True, True, True, True, True]  # typographic did not improve
    assert rows[0]["live"] == 0.5 and rows[0]["candidate"] == 0.75 and rows[0]["base"] == pytest.approx(0.3333)
    # One point of synthetic typographic accuracy may go; two may not.
    assert gate({**SYNTHETIC, "typographic_accuracy": 0.79}, SYNTHETIC, BASE, crowd=crowd(90, 60))[0]
    ok, reason = gate({**SYNTHETIC, "typographic_accuracy": 0.78}, SYNTHETIC, BASE, crowd=crowd(90, 60))
    assert not ok and "more than 0.01 below the live model's (rule A)" in reason


def test_a_candidate_that_improves_the_synthetic_figures_but_lowers_crowd_agreement_is_refused():
    better = {**SYNTHETIC, "typographic_accuracy": 0.90}
    ok, reason = gate(better, SYNTHETIC, BASE, crowd=crowd(45, 60))
    assert not ok
    assert "crowd agreement 0.500 -> 0.375 on 120 held-out pairs falls by more than 0.02 (rule B)" in reason
    # The same synthetic win with crowd agreement held (one pair fewer is within the tolerance) is promoted ...
    ok, reason = gate(better, SYNTHETIC, BASE, crowd=crowd(59, 60))
    assert ok and reason.startswith("rule B"), reason
    # ... and so is one with too few held-out pairs to tell, as the gate did before it had any.
    few = MIN_HELD_OUT - 1
    assert gate(better, SYNTHETIC, BASE, crowd=crowd(0, few, n=few, base_k=0))[0]
    # Too few pairs never promote on crowd agreement, however good it looks.
    ok, reason = gate(SYNTHETIC, SYNTHETIC, BASE, crowd=crowd(few, 0, n=few, base_k=0))
    assert not ok and f"(at least {MIN_HELD_OUT} needed)" in reason


FAMILIES = {"paper": 0.80, "several_words": 0.60, "label_patch": 0.70}


def with_families(metrics, **changed):
    per_family = {**FAMILIES, **changed}
    return {**metrics, "family_accuracy": per_family, "family_mean": round(sum(per_family.values()) / 3, 4)}


def test_with_attack_families_the_gate_judges_their_mean_and_guards_each_one():
    live = with_families(SYNTHETIC)
    # A crowd that taught several words: 6 points there lift the mean by 2, and rule B promotes.
    ok, reason = gate(with_families(SYNTHETIC, several_words=0.66), live, BASE, crowd=crowd(60, 60))
    assert ok and reason.startswith("rule B") and "mean of 3 attack families) 0.700 -> 0.720" in reason, reason
    # The same gain paid for with 3 points of label patches is refused, naming the family.
    ok, reason = gate(with_families(SYNTHETIC, several_words=0.66, label_patch=0.67), live, BASE, crowd=crowd(60, 60))
    assert not ok and "versus the live model on: label_patch (-0.030)" in reason, reason
    rows = gate_table(with_families(SYNTHETIC, label_patch=0.67), live, BASE, crowd(60, 60))
    guard = next(r for r in rows if r["key"] == "family_guard")
    assert guard["metric"] == "worst attack-family change vs live (label_patch)" and guard["candidate"] == -0.03
    assert not guard["pass"] and guard["rule"] == "A, B"


def test_a_crowd_win_that_wrecks_a_class_is_refused_with_the_per_class_table():
    hurt = {**SYNTHETIC, "per_class": {**SYNTHETIC["per_class"], "star": {"attacked": 0.5, "clean": 0.95}}}
    ok, reason = gate(hurt, SYNTHETIC, BASE, crowd=crowd(100, 60))
    assert not ok and "star (attacked -0.300)" in reason and "circle" not in reason.splitlines()[0]
    assert "fail" in format_gate_table(gate_table(hurt, SYNTHETIC, BASE, crowd(100, 60))).splitlines()[-1]


def test_the_wilson_interval_matches_known_values():
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)  # z^2 / (n + z^2)
    assert wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson(0, 0) == (0.0, 0.0)
    assert Agreement.of(90, 120).as_dict() == {"k": 90, "n": 120, "share": 0.75, "low": 0.6656, "high": 0.8189}


def test_the_held_out_split_is_about_a_fifth_stable_and_keyed_by_the_secret():
    keys = [(f"{i:064x}", {"text": "cat", "x": i % 7}) for i in range(1000)]
    split = HeldOutSplit(b"k" * 32, 0.2)
    held = [split.is_held_out(sha, attack) for sha, attack in keys]
    assert 160 <= sum(held) <= 240
    # A restart (a new object from the same secret) holds out the same items; attack keys' order does not matter.
    again = HeldOutSplit(b"k" * 32, 0.2)
    assert [again.is_held_out(sha, {"x": a["x"], "text": a["text"]}) for sha, a in keys] == held
    other = [HeldOutSplit(b"o" * 32, 0.2).is_held_out(sha, attack) for sha, attack in keys]
    assert other != held  # another deployment's secret draws another split
    assert not any(HeldOutSplit(b"k" * 32, 0.0).is_held_out(sha, attack) for sha, attack in keys)


def judge_all(repo, n):
    """The synthetic generator answers the first ``n`` seeded items truthfully."""
    for sid, shape, written in seeded_samples(repo, n)[:n]:
        judge(repo, "poclip-synthetic", sid, shape, written, kind="synthetic")


def test_held_out_items_are_never_trained_on_and_the_split_survives_a_restart(tmp_path, bundled):
    svc = make_service(tmp_path, bundled, seed_items=60)
    try:
        judge_all(svc.repo, 60)
        split = make_trainer(svc).held_out
        batch = svc.repo.training_pairs(held_out=split)
        everything = svc.repo.training_pairs()
        held = {p.sample_id for p in batch.held_out}
        assert held and not held & {p.sample_id for p in batch.pairs}
        assert held | {p.sample_id for p in batch.pairs} == {p.sample_id for p in everything.pairs}
        assert not any(p.is_gold for p in batch.held_out)  # gold scores the annotators; it is never held out
        assert all(split(p) for p in batch.held_out) and not any(split(p) for p in batch.pairs if not p.is_gold)
        # What the trainer trains on leaves the held-out pictures out.
        data = collect(svc.repo, lambda _: None, augment_attacks=0, replay_pairs=0, held_out=split)
        assert data.judged_pairs == len(batch.pairs) and len(data.held_out) == len(held)
        trained = {(p.image.sha256, p.attack.to_json() if p.attack else None) for p in data.prefs}
        assert not trained & {(p.image_sha256, TextAttack.from_dict(p.attack).to_json()) for p in batch.held_out}
    finally:
        svc.close()
    again = make_service(tmp_path, bundled, seed_items=60)  # a restart: new store, new trainer, same secret
    try:
        assert {p.sample_id for p in again.repo.training_pairs(held_out=make_trainer(again).held_out).held_out} \
            == held
    finally:
        again.close()


def test_a_real_retrain_records_the_gate_table_and_crowd_agreement(tmp_path, bundled):
    svc = make_service(tmp_path, bundled, seed_items=60, augment_attacks=0, gate_eval_n=200,
                       gate_families=("paper", "several_words"))
    try:
        judge_all(svc.repo, 60)
        trainer = make_trainer(svc)
        trainer.request()
        run = trainer.run_pending()
        assert run.status == "succeeded", run.error
        record = run.metrics
        held = len(svc.repo.training_pairs(held_out=trainer.held_out).held_out)
        assert record["held_out_pairs"] == held > 0
        assert set(record["crowd_agreement"]) == {"candidate", "live", "base"}
        for agreement in record["crowd_agreement"].values():
            assert agreement["n"] == held and 0 <= agreement["low"] <= agreement["share"] <= agreement["high"] <= 1
        assert [r["metric"].split(" (")[0] for r in record["gate_table"]] == [
            "crowd agreement improves", "typographic accuracy", "crowd agreement does not fall",
            "typographic accuracy", "clean accuracy", "worst attack-family change vs live",
            "worst per-class change vs live"]
        assert record["gate_table"][1]["metric"] == "typographic accuracy (mean of 2 attack families) improves"
        for who in ("candidate", "live_before", "base"):
            families = record[who]["family_accuracy"]
            assert set(families) == {"paper", "several_words"} and all(0 <= a <= 1 for a in families.values())
            assert record[who]["family_mean"] == pytest.approx(sum(families.values()) / 2, abs=1e-4)
        assert record["base"]["family_accuracy"]["several_words"] < 0.5  # the base model reads the words
        assert {"gate", "candidate", "live_before", "base", "per_class", "pairs"} <= set(record)
        version = svc.repo.get_version(run.version_id)
        assert (version.status == "active") == (record["gate"].startswith("rule"))
    finally:
        svc.close()


def test_the_gate_measures_a_head_once_and_keeps_its_figures_beside_the_pictures(tmp_path, bundled):
    import json

    import torch

    from poclip.app.retrain.evaluation import GateEvaluation
    from poclip.engine.starter import load_starter

    gate_eval = GateEvaluation(bundled, 40, tmp_path, ("paper", "several_words"))
    starter = load_starter(bundled)
    first = gate_eval.evaluate(starter)
    kept = list(tmp_path.rglob("gate-metrics/*.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text()) == first
    assert first["family_accuracy"]["several_words"] > 0.5 > gate_eval.base_metrics()["family_accuracy"][
        "several_words"]

    # another process (a new GateEvaluation on the same folder) reads the figures instead of measuring again
    again = GateEvaluation(bundled, 40, tmp_path, ("paper", "several_words"))
    measure = again._metrics
    again._metrics = lambda policy: measure(None) if policy is None else pytest.fail("measured a kept head")
    assert again.evaluate(starter) == first

    # other tensors are another head: measured, and kept in a file of their own
    moved = load_starter(bundled)
    with torch.no_grad():
        moved.trainable_parameters()[0].mul_(0.0)
    assert gate_eval.evaluate(moved) != first
    assert len(list(tmp_path.rglob("gate-metrics/*.json"))) == 2

    # a damaged file costs a measurement, not the run, and is written whole again
    kept[0].write_text('{"typographic')
    assert gate_eval.evaluate(starter) == first
    assert json.loads(kept[0].read_text()) == first

    # other gate pictures (another number or family) never read these figures
    other = GateEvaluation(bundled, 40, tmp_path, ("paper", "label_patch"))
    assert set(other.evaluate(starter)["family_accuracy"]) == {"paper", "label_patch"}

    # where nothing can be kept (here a file stands where the folder goes), the head is measured all the same
    blocked = tmp_path / "blocked"
    GateEvaluation(bundled, 40, blocked, ("paper", "several_words")).families()
    folder = kept[0].parent.relative_to(tmp_path)
    (blocked / folder).parent.mkdir(parents=True, exist_ok=True)
    (blocked / folder).write_text("not a folder")
    assert GateEvaluation(bundled, 40, blocked, ("paper", "several_words")).evaluate(starter) == first
