"""The trainer: metrics, determinism, the embedding cache, atomic checkpoints, bad input."""

import dataclasses
import math

import pytest
import torch

from poclip.engine.config import TrainConfig
from poclip.engine.embed_cache import EmbeddingCache, entry_key
from poclip.engine.policy import load_head, read_head_metadata
from poclip.engine.preferences import CleanImage, Preference, TrainingDataError, synth_clean, synth_preferences
from poclip.engine.train import train, train_head
from poclip.world import synth

METRICS = {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "kl/clean",
           "loss/preference", "loss/kl", "loss/invariance", "loss/ortho"}
FAST = TrainConfig(head="linear", epochs=3, batch_size=16, lr=0.02, patience=0)


@pytest.fixture(scope="module")
def prefs():
    return synth_preferences(48, seed=0, size=96, styles="paper")


@pytest.fixture(scope="module")
def clean():
    return synth_clean(32, seed=0, size=96)


@pytest.fixture(scope="module")
def cache(tiny, prefs, clean):
    c = EmbeddingCache(tiny)
    c.embed([p.image for p in prefs], [p.attack for p in prefs])
    c.embed([p.image for p in prefs])
    c.embed([x.image for x in clean])
    return c


def test_synthetic_pairs_prefer_the_true_shape_over_the_written_word(prefs):
    assert all(p.chosen != p.rejected and p.attack.text == p.rejected for p in prefs)
    assert {p.chosen for p in prefs} <= set(synth.SHAPES) and prefs[0].labels == synth.SHAPES
    again = synth_preferences(2, seed=0, size=96, styles="paper")
    assert again[1].attack == prefs[1].attack and again[1].image.tobytes() == prefs[1].image.tobytes()
    assert synth_preferences(1, seed=1, size=96, styles="paper")[0].attack != prefs[0].attack


def test_dpo_loss_starts_at_log_2_and_every_step_logs_the_metrics(tiny, prefs, clean, cache):
    seen = []
    result = train(tiny, prefs, clean, FAST, cache=cache, progress=lambda s, n, m: seen.append((s, n, m)))
    first = result.history[0]
    assert METRICS <= set(first)
    # the first step's loss is measured before any update: DPO log 2, KL 0, W^T W = I
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert first["kl/clean"] == pytest.approx(0.0, abs=1e-6)
    assert [s for s, _, _ in seen] == list(range(1, result.steps + 1))
    assert all(n == result.steps for _, n, _ in seen) and METRICS <= set(seen[-1][2])
    assert METRICS <= set(result.metrics) and "val/loss" in result.metrics


def test_fixed_seed_gives_identical_weights(tiny, prefs, clean, cache):
    threads = torch.get_num_threads()
    a = train(tiny, prefs, clean, FAST, cache=cache).policy.linear.weight
    assert torch.get_num_threads() == threads  # the linear head trains on one thread, then gives them back
    b = train(tiny, prefs, clean, FAST, cache=cache).policy.linear.weight
    c = train(tiny, prefs, clean, dataclasses.replace(FAST, seed=1), cache=cache).policy.linear.weight
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.fixture(scope="module")
def reader(bundled):
    """A model that reads (random-init embeddings are all alike, so nothing can be learned from them)."""
    return bundled


@pytest.fixture(scope="module")
def reader_cache(reader, prefs, clean):
    c = EmbeddingCache(reader)
    c.embed([p.image for p in prefs], [p.attack for p in prefs])
    c.embed([x.image for x in clean])
    return c


def _run(reader, prefs, clean, reader_cache, loss):
    cfg = dataclasses.replace(FAST, epochs=10, loss=loss, reg_lambda=1.0, beta=1.0 if loss == "ipo" else None)
    return train(reader, prefs, clean, cfg, cache=reader_cache)


@pytest.fixture(scope="module")
def ce_run(reader, prefs, clean, reader_cache):
    return _run(reader, prefs, clean, reader_cache, "ce")


@pytest.mark.parametrize("loss", ["dpo", "ipo", "kto", "robust", "conservative", "hinge", "ce"])
def test_every_loss_trains_the_chosen_label_up(reader, prefs, clean, reader_cache, ce_run, loss):
    result = ce_run if loss == "ce" else _run(reader, prefs, clean, reader_cache, loss)
    assert result.history[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert result.metrics["rewards/margins"] > 0.1 and result.metrics["rewards/accuracies"] >= 0.6
    if loss != "ce":  # the reference and the clean KL keep every PO loss closer to the base model than CE
        assert result.metrics["val/kl/clean"] < ce_run.metrics["val/kl/clean"]


def test_retrain_embeds_only_new_pictures_and_reads_the_disk_cache(tiny, prefs, clean, tmp_path):
    cache = EmbeddingCache(tiny, tmp_path / "emb")
    first = train(tiny, prefs[:40], clean[:20], FAST, cache=cache)
    # each texted pair also needs its clean self, and each clean picture its texted version, for the
    # text-invariance term
    assert (first.cache_misses, first.cache_hits) == (40 + 40 + 20 + 20, 0)
    second = train(tiny, prefs, clean, FAST, cache=cache)
    assert (second.cache_misses, second.cache_hits) == (8 + 8 + 12 + 12, 120)
    reopened = EmbeddingCache(tiny, tmp_path / "emb")
    assert len(reopened) == 160
    third = train(tiny, prefs, clean, FAST, cache=reopened)
    assert (third.cache_misses, third.cache_hits) == (0, 160)
    paper = train(tiny, prefs, clean, dataclasses.replace(FAST, invariance=0.0), cache=reopened)
    assert (paper.cache_misses, paper.cache_hits) == (0, 80)  # the paper's objective needs no clean selves
    assert torch.equal(third.policy.linear.weight, second.policy.linear.weight)
    # the attack is part of the key: the same picture clean and attacked are two entries
    p = prefs[0]
    assert entry_key(p.image, p.attack) != entry_key(p.image) and entry_key(p.image, p.attack) in reopened


def test_keys_of_cached_pictures_train_like_the_pictures(tiny, prefs, clean, cache):
    keyed = [dataclasses.replace(p, image=entry_key(p.image, p.attack), attack=None) for p in prefs]
    paper = dataclasses.replace(FAST, invariance=0.0)  # a key alone has no clean self to be invariant to
    a = train(tiny, prefs, clean, paper, cache=cache).policy.linear.weight
    b = train(tiny, keyed, clean, paper, cache=cache).policy.linear.weight
    assert torch.equal(a, b)
    with pytest.raises(KeyError, match="not in the cache"):
        train(tiny, [dataclasses.replace(keyed[0], image="0" * 32)], clean, FAST, cache=cache)


def test_checkpoint_is_written_with_metadata_and_loads(tiny, prefs, clean, cache, tmp_path):
    out = tmp_path / "heads" / "h.safetensors"
    result = train_head(tiny, prefs, clean, out, FAST, cache_dir=tmp_path / "emb")
    meta = read_head_metadata(out)
    assert result.path == out
    assert meta["loss"] == "dpo" and meta["beta"] == "0.5" and meta["lambda"] == "0.3" and meta["head"] == "linear"
    assert meta["n_pairs"] == "48" and meta["data_fingerprint"] == result.data_fingerprint
    assert meta["backbone"] == tiny.spec and "rewards/accuracies" in meta["metrics"] and meta["created"]
    assert torch.equal(load_head(out, tiny).linear.weight, result.policy.linear.weight)
    assert sorted(p.name for p in out.parent.iterdir()) == ["h.safetensors"]


def test_a_crash_mid_training_leaves_the_old_checkpoint_intact(tiny, prefs, clean, cache, tmp_path):
    out = tmp_path / "h.safetensors"

    def crash(step, total, metrics):
        if step == 3:
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        train(tiny, prefs, clean, FAST, out=out, cache=cache, progress=crash)
    assert list(tmp_path.iterdir()) == []
    train(tiny, prefs, clean, FAST, out=out, cache=cache)
    before = out.read_bytes()
    with pytest.raises(RuntimeError, match="power cut"):
        train(tiny, prefs, clean, dataclasses.replace(FAST, seed=5), out=out, cache=cache, progress=crash)
    assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["h.safetensors"]


def test_data_fingerprint_changes_with_the_data(tiny, prefs, clean, cache):
    a = train(tiny, prefs, clean, dataclasses.replace(FAST, epochs=1), cache=cache).data_fingerprint
    b = train(tiny, prefs[:-1], clean, dataclasses.replace(FAST, epochs=1), cache=cache).data_fingerprint
    flipped = [*prefs[:-1], dataclasses.replace(prefs[-1], chosen=prefs[-1].rejected, rejected=prefs[-1].chosen)]
    c = train(tiny, flipped, clean, dataclasses.replace(FAST, epochs=1), cache=cache).data_fingerprint
    assert len({a, b, c}) == 3


def test_mixed_label_sets_and_bare_clean_pictures(tiny, prefs, clean, cache):
    small = [Preference(p.image, p.chosen, p.rejected, (p.chosen, p.rejected), "a drawing of a {}.", p.attack)
             for p in prefs[:16]]
    bare = [c.image for c in clean[:8]]
    result = train(tiny, [*prefs[:16], *small], [*bare, CleanImage(clean[9].image, ("star", "heart"))], FAST,
                   cache=cache)
    assert all(math.isfinite(h["loss"]) for h in result.history)


def test_beta_moving_average_changes_the_result(tiny, prefs, clean, cache):
    plain = train(tiny, prefs, clean, FAST, cache=cache).policy.linear.weight
    averaged = train(tiny, prefs, clean, dataclasses.replace(FAST, average="beta"), cache=cache).policy.linear.weight
    assert not torch.equal(plain, averaged) and torch.isfinite(averaged).all()


@pytest.mark.parametrize("head", ["projection", "last_blocks:1"])
def test_tower_heads_train_on_pixels_with_the_same_losses(tiny, prefs, clean, cache, head, tmp_path):
    cfg = dataclasses.replace(FAST, head=head, epochs=1, batch_size=16, lr=1e-3)
    with pytest.raises(ValueError, match="make_cache"):
        train(tiny, prefs[:32], clean[:16], cfg, cache=cache)
    result = train(tiny, prefs[:32], clean[:16], cfg, out=tmp_path / "tower.safetensors")
    assert result.steps == 2 and result.history[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    loaded = load_head(result.path, tiny)
    imgs = [p.image for p in prefs[:2]]
    assert torch.allclose(loaded.predict(imgs, synth.SHAPES)[1], result.policy.predict(imgs, synth.SHAPES)[1])


def test_bad_input_gets_a_clear_error(tiny, prefs, clean, cache):
    p = prefs[0]
    cases = [
        ([], "no preference pairs"),
        ([dataclasses.replace(p, chosen="unicorn")], "must both be in the label set"),
        ([dataclasses.replace(p, rejected=p.chosen)], "same label"),
        ([dataclasses.replace(p, labels=("circle",))], "at least two distinct labels"),
        ([dataclasses.replace(p, template="a photo")], "has no {}"),
        ([dataclasses.replace(p, image=42)], "PIL image, a stored picture or a cache key"),
    ]
    for data, message in cases:
        with pytest.raises(TrainingDataError, match=message):
            train(tiny, data, clean, FAST, cache=cache)
    for bad, message in [({"loss": "orpo"}, "loss must be one of"), ({"head": "mlp"}, "unknown head"),
                         ({"optimizer": "sgd"}, "optimizer"), ({"val_fraction": 1.0}, "val_fraction")]:
        with pytest.raises(ValueError, match=message):
            train(tiny, prefs, clean, dataclasses.replace(FAST, **bad), cache=cache)


def test_true_and_neutral_word_pairs_reject_the_reference_runner_up(tiny, cache):
    family = synth_preferences(40, seed=5, size=96)
    none = [k for k, p in enumerate(family) if p.rejected is None]
    assert none
    cfg = dataclasses.replace(FAST, epochs=1)
    result = train(tiny, family, [], cfg)
    again = train(tiny, family, [], cfg)
    assert result.data_fingerprint == again.data_fingerprint
    from poclip.engine.prepare import prepare

    data = prepare(result.policy.with_strength(0.0), family, [], result.policy.make_cache())
    for k in none:
        ref = data.pairs["ref"][k].clone()
        ref[data.pairs["chosen"][k]] = float("-inf")
        assert int(data.pairs["rejected"][k]) == int(ref.argmax())


def test_every_objective_term_is_logged_and_the_paper_recipe_has_no_invariance(tiny, prefs, clean, cache):
    inv = train(tiny, prefs, clean, dataclasses.replace(FAST, invariance=1.0), cache=cache)
    paper = train(tiny, prefs, clean, dataclasses.replace(FAST, invariance=0.0), cache=cache)
    assert METRICS <= set(inv.history[-1]) and METRICS <= set(paper.history[-1])
    assert inv.history[0]["loss/invariance"] > 0  # the texted pictures differ from their clean selves
    step = inv.history[-1]
    total = step["loss/preference"] + 0.3 * step["loss/kl"] + 1.0 * step["loss/invariance"] + 1e-3 * step["loss/ortho"]
    assert step["loss"] == pytest.approx(total, rel=1e-4)
    assert not torch.equal(inv.policy.linear.weight, paper.policy.linear.weight)


def test_learning_rate_epochs_and_batch_default_per_head_kind():
    assert TrainConfig(head="linear").resolved_lr == 0.05 and TrainConfig(head="projection").resolved_lr == 1e-3
    assert TrainConfig(head="last_blocks:2").resolved_epochs < TrainConfig(head="linear").resolved_epochs
    assert TrainConfig(head="last_blocks:2").resolved_lr == 3e-4  # the measured default head's settings
    assert (TrainConfig().head, TrainConfig().resolved_batch_size, TrainConfig().resolved_epochs) == (
        "last_blocks:2", 64, 8)
    assert TrainConfig(head="linear").resolved_batch_size == 128
    assert TrainConfig(head="linear", lr=0.1, batch_size=7).resolved_lr == 0.1
    assert TrainConfig(head="linear", batch_size=7).resolved_batch_size == 7
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0).check()


def test_clean_pictures_with_text_add_invariance_rows_without_a_label(tiny, prefs, clean):
    # Pairs given as cache keys have no clean self, so any invariance comes from the texted clean pictures alone.
    from poclip.engine.objective import Objective
    from poclip.engine.policy import Policy
    from poclip.engine.prepare import prepare

    policy, cache = Policy(tiny, "linear"), EmbeddingCache(tiny)
    cache.embed([p.image for p in prefs], [p.attack for p in prefs])
    keyed = [dataclasses.replace(p, image=entry_key(p.image, p.attack), attack=None) for p in prefs]
    assert all(c.attack is not None for c in clean)  # synth_clean writes text from the style family
    bare = [dataclasses.replace(c, attack=None) for c in clean]
    with torch.no_grad():
        policy.linear.weight.add_(0.2 * torch.randn_like(policy.linear.weight))  # text now moves the answer
    for items, expected in ((clean, len(clean)), (bare, 0)):
        data = prepare(policy, keyed, items, cache)
        assert int(data.pairs["inv"].sum()) == 0 and int(data.clean["inv"].sum()) == expected
        invariance = Objective(policy, FAST, data.text_bank).terms(data.pairs, data.clean)["invariance"]
        assert (float(invariance.detach()) > 0) == (expected > 0)
