"""The policy: base + head, the SVD strength knob, the app's fast path, head checkpoints."""

import random

import pytest
import torch
from apphelpers import all_at_once

from poclip.engine.policy import HeadError, Policy, load_head, read_head_metadata, save_head, strength_matrix
from poclip.world import synth

LABELS = list(synth.SHAPES)


def pictures(n, seed=0, size=96):
    return [synth.draw_scene(synth.sample_scene(random.Random(f"policy-test:{seed}:{i}")), size) for i in range(n)]


@pytest.fixture(scope="module")
def trained_like(tiny):
    """A linear policy whose W is a fixed, well-conditioned non-identity matrix (as after training)."""
    policy = Policy(tiny, "linear")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        policy.linear.weight.add_(0.15 * torch.randn(policy.linear.weight.shape, generator=g))
    return policy


@pytest.fixture(scope="module")
def embeddings(tiny):
    return tiny.encode_images(pictures(6))


def test_fresh_linear_head_is_the_base_model(tiny, embeddings):
    policy = Policy(tiny)
    base, aligned = policy.log_probs_for(embeddings, LABELS)
    assert torch.equal(base, tiny.log_probs(embeddings, tiny.classifier(LABELS)))
    assert torch.allclose(aligned, base, atol=1e-6)


def test_strength_zero_reproduces_the_base_logits(trained_like, embeddings, tiny):
    text = tiny.classifier(LABELS)
    base_logits = tiny.logit_scale * embeddings @ text.T
    zero = trained_like.with_strength(0.0)
    assert torch.allclose(zero.logits(embeddings, text), base_logits, atol=1e-5, rtol=0)
    assert not torch.allclose(trained_like.logits(embeddings, text), base_logits, atol=1e-2)
    base, aligned0 = trained_like.log_probs_for(embeddings, LABELS, t=0.0)
    assert torch.allclose(aligned0, base, atol=1e-5)


def test_strength_one_is_the_trained_head_and_negative_strength_reverses_it(trained_like):
    w = trained_like.linear.weight.detach().double()
    assert torch.allclose(strength_matrix(w, 1.0), w)
    m = w.T @ w
    w_neg = strength_matrix(w, -1.0)
    # W_t^T W_t = V S^(2t) V^T: t = -1 gives the inverse of the learned metric, t = 0.5 its square root.
    assert torch.allclose(w_neg.T @ w_neg, torch.linalg.inv(m), atol=1e-8)
    w_half = strength_matrix(w, 0.5)
    assert torch.allclose((w_half.T @ w_half) @ (w_half.T @ w_half), m, atol=1e-8)
    assert torch.allclose(strength_matrix(w, 2.0).T @ strength_matrix(w, 2.0), m @ m, atol=1e-8)


def test_predict_equals_encoding_then_fast_path(trained_like, tiny):
    imgs = pictures(3, seed=2)
    base_p, aligned_p = trained_like.predict(imgs, LABELS, t=0.5)
    base_lp, aligned_lp = trained_like.log_probs_for(tiny.encode_images(imgs), LABELS, t=0.5)
    assert torch.allclose(base_p, base_lp.exp()) and torch.allclose(aligned_p, aligned_lp.exp(), atol=1e-6)
    assert torch.allclose(aligned_p.sum(1), torch.ones(3), atol=1e-5)
    single, _ = trained_like.log_probs_for(tiny.encode_images(imgs[:1])[0], LABELS)
    assert single.shape == (1, len(LABELS))


def test_head_checkpoint_roundtrip_with_metadata(trained_like, tiny, embeddings, tmp_path):
    path = save_head(trained_like, tmp_path / "head.safetensors", {"loss": "dpo", "metrics": {"loss": 0.5}})
    meta = read_head_metadata(path)
    assert meta["head"] == "linear" and meta["loss"] == "dpo" and meta["backbone"] == tiny.spec
    assert meta["metrics"] == '{"loss": 0.5}' and meta["created"].endswith("Z")
    loaded = load_head(path, tiny)
    assert torch.equal(loaded.linear.weight, trained_like.linear.weight)
    assert not list(tmp_path.glob(".*tmp"))
    # The same permissions as any file the process writes (safetensors' own writer gives owner-only 0600, which a
    # replica running as another user cannot read).
    (tmp_path / "plain").write_bytes(b"")
    assert path.stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777


def test_loading_a_head_onto_other_backbone_weights_is_refused(trained_like, tmp_path):
    from poclip.engine.models import load_model

    path = save_head(trained_like, tmp_path / "head.safetensors")
    torch.manual_seed(123)
    other = load_model("poclip-tiny-rn", device=torch.device("cpu"))
    with pytest.raises(HeadError, match="other weights"):
        load_head(path, other)
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(HeadError, match="not a readable"):
        load_head(tmp_path / "junk.safetensors", other)
    with pytest.raises(HeadError, match="does not exist"):
        load_head(tmp_path / "missing.safetensors", other)


def test_bad_head_specs_are_refused(tiny):
    for spec in ("mlp", "last_blocks:0", "last_blocks:x"):
        with pytest.raises(HeadError, match="unknown head"):
            Policy(tiny, spec)
    with pytest.raises(HeadError, match="more blocks"):
        Policy(tiny, "last_blocks:99")


def test_a_head_spec_is_read_once_and_written_back_in_its_canonical_form(tiny, tmp_path):
    from poclip.engine.heads import HeadSpec, check_head
    from poclip.engine.starter import STARTER_HEAD

    assert HeadSpec.parse(" last_blocks:02 ") == HeadSpec("last_blocks", 2)
    assert [str(HeadSpec.parse(t)) for t in ("linear", " projection", "last_blocks:02")] == [
        "linear", "projection", "last_blocks:2"]
    assert HeadSpec.parse("linear").is_linear and HeadSpec.parse("last_blocks:1").is_tower
    for bad in ("linear:1", "last_blocks", "last_blocks:²", ""):
        with pytest.raises(HeadError, match=f"unknown head '{bad}'; choose linear, projection or last_blocks:K"):
            HeadSpec.parse(bad)
    with pytest.raises(HeadError, match="unknown head 'last_blocks:0'"):
        HeadSpec("last_blocks", 0)
    assert check_head(tiny, "last_blocks:1") == HeadSpec("last_blocks", 1)
    # A checkpoint names its head as the text it was always written as; the shipped starter head still loads.
    policy = Policy(tiny, HeadSpec("last_blocks", 1))
    path = save_head(policy, tmp_path / "head.safetensors")
    assert read_head_metadata(path)["head"] == policy.head == "last_blocks:1"
    assert load_head(path, tiny).spec == policy.spec
    assert read_head_metadata(STARTER_HEAD)["head"] == "last_blocks:2"


@pytest.mark.parametrize("head", ["projection", "last_blocks:1"])
def test_tower_heads_train_only_their_part_and_start_at_the_base(tiny, head):
    policy = Policy(tiny, head)
    trainable = sum(p.numel() for p in policy.trainable_parameters())
    total = sum(p.numel() for p in policy.visual.parameters())
    assert 0 < trainable < total
    assert policy.visual is not tiny.model.visual  # the reference tower is never trained
    imgs = pictures(2, seed=3)
    base, aligned = policy.predict(imgs, LABELS)
    assert torch.allclose(base, aligned, atol=1e-5)
    with pytest.raises(HeadError, match="compare"):
        policy.log_probs_for(tiny.encode_images(imgs), LABELS)
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.add_(0.05)
    _, moved = policy.predict(imgs, LABELS)
    _, back = policy.predict(imgs, LABELS, t=0.0)
    assert not torch.allclose(moved, base, atol=1e-4)
    assert torch.allclose(back, base, atol=1e-5)


def test_strength_copies_are_bounded_and_shared_by_concurrent_requests(tiny):
    # Visitors drag the slider through many values: the policy keeps the most recent few copies, not one per value.
    from poclip.engine.policy import STRENGTH_CACHE

    policy = Policy(tiny, "last_blocks:1")
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.add_(0.01)
    ts = [round(0.1 * k, 1) for k in range(-10, 10) if k != 10]

    def slide(offset):
        for t in ts[offset:] + ts[:offset]:
            policy.at_strength(t)
        return True

    finished = all_at_once(slide, 4)  # a thread that raised leaves no result
    assert finished == {k: True for k in range(4)} and len(policy._strength_cache) == STRENGTH_CACHE
    again = policy.at_strength(ts[-1])
    assert again is policy.at_strength(ts[-1])  # a recent value is served from the cache
    fresh = policy.with_strength(ts[-1])
    x = policy.inputs(pictures(2, seed=4))
    assert torch.equal(again.image_features(x), fresh.image_features(x))
