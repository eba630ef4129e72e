"""Tower heads: the trunk/tail split, the activation cache, and the strength knob at t = 0."""

import random

import pytest
import torch

from poclip.engine import tower
from poclip.engine.embed_cache import ActivationCache, EmbeddingCache, StoredPicture, image_hash
from poclip.engine.policy import Policy
from poclip.world import synth
from poclip.world.attacks import random_attack

HEADS = ["linear", "projection", "last_blocks:1", "last_blocks:2"]


def pictures(n, seed=0):
    return [synth.draw_scene(synth.sample_scene(random.Random(f"tower:{seed}:{i}")), 96) for i in range(n)]


@pytest.mark.parametrize("blocks", [0, 1, 2, 4])
def test_tail_on_cached_activations_equals_the_full_forward(bundled, blocks, tmp_path):
    imgs = pictures(6)
    attacks = [random_attack(synth.SHAPES, "star", k) for k in range(6)]
    cache = ActivationCache(bundled, tmp_path, blocks)
    acts = cache.embed(imgs, attacks)
    again = ActivationCache(bundled, tmp_path, blocks)  # read back from disk
    assert len(again) == 6 and torch.equal(again.embed(imgs, attacks), acts) and again.misses == 0
    from poclip.world.attacks import render

    full = bundled.encode_images([render(i, a) for i, a in zip(imgs, attacks, strict=True)])
    with torch.no_grad():
        via_tail = torch.nn.functional.normalize(tower.tail(bundled.model.visual, acts, blocks), dim=-1)
    assert torch.allclose(via_tail, full, atol=1e-6)
    with torch.no_grad():  # the training path (the attention pool's pooled query only) agrees up to rounding
        fast = torch.nn.functional.normalize(tower.tail(bundled.model.visual, acts, blocks, query_only=True), dim=-1)
    assert torch.allclose(fast, full, atol=1e-5)


def test_activation_caches_are_kept_apart_by_cut_and_attack(bundled, tmp_path):
    imgs = pictures(2)
    one, two = ActivationCache(bundled, tmp_path, 1), ActivationCache(bundled, tmp_path, 2)
    assert one.dir != two.dir and one.dir.parent == EmbeddingCache(bundled, tmp_path).dir
    a = one.embed(imgs)
    b = one.embed(imgs, [random_attack(synth.SHAPES, "star", 0)] * 2)
    assert a.shape[1:] != two.embed(imgs).shape[1:] and not torch.equal(a, b) and len(one) == 4


def test_a_stored_picture_is_opened_only_on_a_miss(bundled, tmp_path):
    img = pictures(1)[0]
    path = tmp_path / "pic.png"
    img.save(path)
    stored = StoredPicture(image_hash(img), path)
    cache = EmbeddingCache(bundled, tmp_path / "cache")
    first = cache.embed([stored])
    path.unlink()  # a cached picture is never read again
    assert torch.equal(EmbeddingCache(bundled, tmp_path / "cache").embed([stored]), first)


@pytest.mark.parametrize("head", HEADS)
def test_strength_zero_is_exactly_the_base_model_for_every_head(bundled, head):
    policy = Policy(bundled, head)
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.add_(0.03 * torch.randn_like(p))
    imgs = pictures(4, seed=1)
    base, aligned = policy.compare(imgs, synth.SHAPES, t=0.0)
    reference = bundled.log_probs(bundled.encode_images(imgs), bundled.classifier(list(synth.SHAPES)))
    assert torch.equal(aligned, base) and torch.equal(base, reference)
    _, trained = policy.compare(imgs, synth.SHAPES, t=1.0)
    _, half = policy.compare(imgs, synth.SHAPES, t=0.5)
    assert not torch.equal(trained, base) and not torch.equal(half, trained)


@pytest.mark.parametrize("head", ["projection", "last_blocks:1"])
def test_tower_strength_interpolates_weights(bundled, head):
    policy = Policy(bundled, head)
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.add_(0.01)
    half = policy.with_strength(0.5)
    base = dict(bundled.model.visual.named_parameters())
    for (name, p), (_, q) in zip(policy.visual.named_parameters(), half.visual.named_parameters(), strict=True):
        if p.requires_grad:
            assert torch.allclose(q, base[name] + 0.5 * (p - base[name]), atol=1e-7)
        else:
            assert torch.equal(q, base[name])


def test_batch_norm_statistics_stay_frozen_in_training(bundled):
    from poclip.engine.config import TrainConfig
    from poclip.engine.preferences import synth_clean, synth_preferences
    from poclip.engine.train import train

    prefs, clean = synth_preferences(24, seed=3, size=96), synth_clean(8, seed=3, size=96)
    result = train(bundled, prefs, clean, TrainConfig(head="last_blocks:1", epochs=1, batch_size=8, patience=0))
    trained = dict(result.policy.visual.named_buffers())
    for name, buf in bundled.model.visual.named_buffers():
        assert torch.equal(trained[name], buf), name


@pytest.mark.parametrize("head", ["projection", "last_blocks:1"])
def test_a_tower_head_and_its_strength_copies_share_the_frozen_trunk(bundled, head):
    # Only the tail is the head's own: a ViT-B/32 tower copied per head and per slider position would cost
    # 350 MB each.
    policy = Policy(bundled, head)
    n_tail = len(policy.trainable_parameters())
    for copy_ in (policy, policy.with_strength(0.5)):
        pairs = list(zip(copy_.visual.parameters(), bundled.model.visual.parameters(), strict=True))
        own = [mine for mine, base in pairs if mine is not base]
        assert len(own) == n_tail and all(p.requires_grad for p in own)  # the tail, and nothing else, is copied
