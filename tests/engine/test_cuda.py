"""The engine and the app on a CUDA GPU: same answers as the CPU up to reduced precision, t = 0 exactly the base
model, heads trained there load anywhere. Run where a GPU is present; skipped with the reason elsewhere."""

import pytest
import torch
from apphelpers import judge_seeded, make_service, make_trainer

from poclip.engine.config import TrainConfig
from poclip.engine.defenses import PEERS
from poclip.engine.models import load_model
from poclip.engine.policy import Policy, load_head, save_head
from poclip.engine.preferences import synth_clean, synth_preferences
from poclip.engine.train import train
from poclip.settings import Settings
from poclip.world import synth

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU: torch.cuda.is_available() is False on this machine")

LABELS = list(synth.SHAPES)


@pytest.fixture(scope="module")
def on_gpu():
    return load_model("bundled", Settings(device="cuda"))


@pytest.fixture(scope="module")
def on_cpu():
    return load_model("bundled", Settings(device="cpu"))


@pytest.fixture(scope="module")
def pictures():
    return [item.attacked for item in synth.eval_set(64, seed=31)]


def test_the_gpu_encoder_agrees_with_the_cpu_up_to_its_reduced_precision(on_gpu, on_cpu, pictures):
    assert on_gpu.device.type == "cuda" and on_gpu.amp_dtype in (torch.bfloat16, torch.float16)
    text_gpu, text_cpu = on_gpu.classifier(LABELS), on_cpu.classifier(LABELS)
    gpu = on_gpu.log_probs(on_gpu.encode_images(pictures), text_gpu).exp()
    cpu = on_cpu.log_probs(on_cpu.encode_images(pictures), text_cpu).exp()
    assert gpu.device.type == "cpu"  # what crosses the engine's boundaries
    assert (gpu.argmax(1) == cpu.argmax(1)).float().mean() >= 0.95
    assert (gpu - cpu).abs().max() < 0.08
    full = load_model("bundled", Settings(device="cuda", precision="fp32"))
    assert full.amp_dtype is None
    exact = full.log_probs(full.encode_images(pictures), full.classifier(LABELS)).exp()
    assert (exact - cpu).abs().max() < 1e-3


@pytest.mark.parametrize("head", ["linear", "last_blocks:1"])
def test_a_head_trains_on_the_gpu_keeps_t0_exact_and_loads_on_the_cpu(on_gpu, on_cpu, pictures, head, tmp_path):
    prefs, clean = synth_preferences(48, 5), synth_clean(48, 5)
    result = train(on_gpu, prefs, clean, TrainConfig(head=head, epochs=2))
    policy = result.policy
    assert result.steps > 0 and all(v.device.type == "cpu" for v in policy.head_state().values())
    base, at_zero = policy.compare(pictures, LABELS, t=0.0)
    assert torch.equal(base, at_zero)  # the strength knob's zero is the base model, bit for bit
    path = save_head(policy, tmp_path / "head.safetensors")
    assert load_head(path, on_gpu).head == policy.head
    on_cpu_policy = Policy(on_cpu, head)
    on_cpu_policy.load_head_state(policy.head_state())
    gpu_aligned = policy.predict(pictures, LABELS)[1]
    cpu_aligned = on_cpu_policy.predict(pictures, LABELS)[1]
    assert (gpu_aligned.argmax(1) == cpu_aligned.argmax(1)).float().mean() >= 0.95


def test_every_peer_defense_builds_and_scores_on_the_gpu(on_gpu, pictures, tmp_path):
    for name, kind in PEERS.items():
        if name == "ocr_mask":
            continue  # Tesseract runs on the CPU whatever the device; its model part is the base model's
        defense = kind(on_gpu).build(tmp_path)
        probs = defense.log_probs(pictures[:16], LABELS).exp()
        assert probs.shape == (16, len(LABELS)) and torch.allclose(probs.sum(1), torch.ones(16), atol=1e-4), name


def test_the_app_serves_and_retrains_on_the_gpu(tmp_path, on_gpu):
    svc = make_service(tmp_path, on_gpu, starter_head=True, seed_items=30, device="cuda")
    try:
        item = synth.eval_set(1, seed=8)[0]
        shown = svc.comparisons.compare(item.attacked, LABELS)
        assert abs(sum(shown.aligned.probs.values()) - 1) < 1e-4
        judge_seeded(svc.repo)
        trainer = make_trainer(svc)
        trainer.request()
        run = trainer.run_pending()
        assert run.status == "succeeded", run.error
        assert run.metrics["candidate"] and run.metrics["gate_table"]
    finally:
        svc.close()
