"""Evaluation of aligned policies: synthetic world and Hugging Face image datasets, attacks on the fly."""

import pytest
import torch
from imagefolders import make_imagefolder

from poclip.engine.embed_cache import EmbeddingCache
from poclip.engine.evaluate import (
    embed_dataset_eval,
    embed_synth_eval,
    evaluate_policy,
    evaluate_synth,
    evaluate_synth_policy,
    sweep_strength,
    typographic_accuracy,
)
from poclip.engine.policy import Policy
from poclip.world import synth


@pytest.fixture(scope="module")
def data(bundled):
    return embed_synth_eval(bundled, 40, seed=77)


def test_the_base_policy_matches_the_foundation_evaluation(bundled, data):
    ours = evaluate_policy(Policy(bundled), data)
    theirs = evaluate_synth(bundled, n=40, seed=77, attack="random")
    assert ours["typographic_accuracy"] == ours["accuracy"] == theirs["accuracy"]
    assert ours["clean_accuracy"] == theirs["clean_accuracy"]
    assert ours["attack_success_rate"] == theirs["attack_success_rate"]
    assert ours["kl_drift"] == pytest.approx(0.0, abs=1e-6)
    assert set(ours["per_class"]) == set(synth.SHAPES)
    assert ours["per_class"]["circle"] == {"clean": theirs_clean(bundled, "circle"),
                                           "attacked": theirs["per_class"]["circle"]}


def test_a_tower_head_is_scored_on_the_sets_own_pictures(bundled, data):
    # The set draws its pictures on demand; iterating it must stop at its length (it once drew forever).
    assert len(list(data.pictures)) == data.n == 40
    with pytest.raises(IndexError):
        data.pictures[40]
    tower = evaluate_policy(Policy(bundled, "projection"), data)  # an untrained tower head is the base model
    base = evaluate_policy(None, data, encoder=bundled)
    assert tower["clean_accuracy"] == base["clean_accuracy"]
    assert tower["typographic_accuracy"] == base["typographic_accuracy"]


def test_typographic_accuracy_alone_equals_the_full_evaluations(bundled, data):
    from poclip.engine.starter import load_starter

    starter = load_starter(bundled)
    for policy in (None, starter):
        full = evaluate_policy(policy, data, encoder=bundled)["typographic_accuracy"]
        assert typographic_accuracy(policy, data, encoder=bundled) == full
    # the starter reads past the writing, the base model does not: two different figures, each matched above
    assert typographic_accuracy(starter, data) > typographic_accuracy(None, data, encoder=bundled) + 0.5
    with pytest.raises(ValueError, match="encoder"):
        typographic_accuracy(None, data)


def theirs_clean(encoder, label):
    return evaluate_synth(encoder, n=40, seed=77, attack="none")["per_class"][label]


def test_kl_drift_is_the_mean_kl_from_the_reference_on_clean_pictures(bundled, data):
    policy = Policy(bundled)
    with torch.no_grad():
        policy.linear.weight.mul_(1.1)  # a sharper softmax: same argmax, nonzero KL
    r = evaluate_policy(policy, data)
    text = bundled.classifier(list(synth.SHAPES))
    ref = bundled.log_probs(data.clean, text)
    pol = torch.log_softmax(1.21 * bundled.logit_scale * data.clean @ text.T, dim=-1)
    expected = (ref.exp() * (ref - pol)).sum(1).mean().item()
    assert r["kl_drift"] == pytest.approx(expected, rel=1e-3) and r["kl_drift"] > 0
    assert r["clean_accuracy"] == evaluate_policy(None, data, encoder=bundled)["clean_accuracy"]


def test_sweep_and_gate_helper(bundled, data):
    policy = Policy(bundled)
    rows = sweep_strength(policy, data, [-1.0, 0.0, 1.0])
    assert [r["t"] for r in rows] == [-1.0, 0.0, 1.0]
    assert len({r["typographic_accuracy"] for r in rows}) == 1  # an identity head does nothing at any t
    cache = EmbeddingCache(bundled)
    gate = evaluate_synth_policy(policy, n=20, seed=5, cache=cache)
    assert {"clean_accuracy", "typographic_accuracy", "attack_success_rate", "kl_drift"} <= set(gate)
    assert cache.misses == 40
    evaluate_synth_policy(policy, n=20, seed=5, cache=cache)
    assert cache.misses == 40 and cache.hits == 40


def test_any_datasets_image_folder_with_attacks_on_the_fly(bundled, tmp_path):
    import datasets

    dataset = datasets.load_dataset("imagefolder", data_dir=str(make_imagefolder(tmp_path / "imgs")), split="train")
    data = embed_dataset_eval(bundled, dataset, n=None, seed=3)
    assert data.labels == ["circle", "square", "star"] and data.n == 9
    assert (data.written != data.truth).all()
    result = evaluate_policy(Policy(bundled), data)
    assert result["n"] == 9 and set(result["per_class"]) == {"circle", "square", "star"}
    again = embed_dataset_eval(bundled, dataset, n=4, seed=3)
    assert again.n == 4 and torch.equal(again.truth, data.truth[:4])
    with pytest.raises(ValueError, match="no column 'species'"):
        embed_dataset_eval(bundled, dataset, label_column="species")
