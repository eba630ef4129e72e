import logging
import time

import pytest
import torch

from poclip.engine.models import ModelUnavailable, load_model
from poclip.engine.pretrain import save_model_folder
from poclip.world import synth


def pictures(n=6):
    return [it.clean for it in synth.eval_set(n, seed=3, attack="none")]


def test_bundled_loads_offline_and_encodes_unit_norm_batches(bundled):
    images = bundled.encode_images(pictures(5), batch_size=2)
    texts = bundled.encode_texts(["a photo of a star.", "a photo of a heart."])
    assert images.shape == (5, bundled.embed_dim) and texts.shape == (2, bundled.embed_dim)
    assert torch.allclose(images.norm(dim=1), torch.ones(5), atol=1e-4)
    assert torch.allclose(texts.norm(dim=1), torch.ones(2), atol=1e-4)
    assert 1.0 < bundled.logit_scale <= 100.0
    assert "bundled" in bundled.description


def test_prompt_embeddings_are_cached(tiny):
    first = tiny.encode_texts(["a photo of a cube.", "a photo of a cone."])
    cached = len(tiny._text_cache)
    again = tiny.encode_texts(["a photo of a cone.", "a photo of a cube."])
    assert len(tiny._text_cache) == cached
    assert torch.equal(first[0], again[1])
    ensemble = tiny.classifier(["cube", "cone"], ("a photo of a {}.", "a drawing of a {}."))
    assert ensemble.shape == (2, tiny.embed_dim)
    assert torch.allclose(ensemble.norm(dim=1), torch.ones(2), atol=1e-4)


def test_random_init_config_and_saved_folder_load_through_the_same_code(tiny, tmp_path):
    save_model_folder(tiny.model, tmp_path, {"note": "test"})
    from_dir = load_model(f"local-dir:{tmp_path}", device=torch.device("cpu"))
    from_file = load_model(str(tmp_path / "open_clip_model.safetensors"), device=torch.device("cpu"))
    ref = tiny.encode_images(pictures(3))
    for loaded in (from_dir, from_file):
        # Weights are stored in fp16, so embeddings agree to fp16 precision.
        assert torch.allclose(loaded.encode_images(pictures(3)), ref, atol=2e-2)


def test_hub_spec_offline_fails_fast_with_advice():
    started = time.perf_counter()
    with pytest.raises(ModelUnavailable, match="--model bundled"):
        load_model("ViT-B-32:openai", device=torch.device("cpu"))
    assert time.perf_counter() - started < 10


def test_unreachable_hub_fails_within_ten_seconds(monkeypatch):
    from huggingface_hub import constants

    # Not offline mode: the real probe runs, against a port on this machine where nothing listens.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    started = time.perf_counter()
    with pytest.raises(ModelUnavailable, match="cannot be reached"):
        load_model("ViT-B-32:openai", device=torch.device("cpu"))
    assert time.perf_counter() - started < 10


def test_auto_falls_back_to_bundled_and_says_why(caplog):
    with caplog.at_level(logging.WARNING):
        encoder = load_model("auto", device=torch.device("cpu"))
    assert encoder.spec == "auto -> bundled"
    assert "using the bundled model because" in caplog.text


@pytest.mark.parametrize(
    "spec,message",
    [
        ("NoSuchNet:openai", "not an open_clip architecture"),
        ("ViT-B-32:no-such-tag", "known tags"),
        ("local-dir:/nonexistent/folder", "open_clip_config.json"),
        ("/nonexistent/model.safetensors", "does not exist"),
        ("ViT-B-32:/nonexistent/weights.pt", "does not exist"),
    ],
)
def test_bad_specs_get_clear_errors(spec, message):
    with pytest.raises(ModelUnavailable, match=message):
        load_model(spec, device=torch.device("cpu"))
