"""bench/gpu.py: without a CUDA device it says why and exits 0; with ``--device cpu`` it measures the encoder, a
retrain and the served app as on a GPU; a model that fails records its errors; the bars read the right figures."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from poclip.settings import REPO_DIR

GPU_BENCH = REPO_DIR / "bench" / "gpu.py"


def run_bench(tmp_path, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict, dict, str]:
    """Run bench/gpu.py with ``--json --out``; returns (exit code, printed JSON, written JSON, stderr)."""
    out = tmp_path / "gpu.json"
    # One torch thread: on a shared, loaded machine two threads made the tiny retrain several times slower.
    proc = subprocess.run([sys.executable, str(GPU_BENCH), "--json", "--out", str(out), *args], cwd=REPO_DIR,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, capture_output=True, text=True,
                          timeout=600)
    printed = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {}
    return proc.returncode, printed, json.loads(out.read_text()) if out.is_file() else {}, proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_without_cuda_it_says_why_and_exits_0(tmp_path):
    code, printed, written, err = run_bench(tmp_path, env={"CUDA_VISIBLE_DEVICES": ""})
    assert code == 0, err
    assert printed == written
    assert "CUDA" in printed["skipped"] and printed["torch"] == torch.__version__
    assert "results" not in printed


@pytest.mark.slow
def test_a_cpu_smoke_run_reports_the_encoder_the_retrain_and_the_served_app(tmp_path):
    code, result, written, err = run_bench(tmp_path, "--device", "cpu", "--models", "bundled", "--pairs", "24",
                                           "--clean", "24", "--clients", "1,2", "--requests", "3")
    assert code == 0, err
    assert result == written and "skipped" not in result
    assert (result["device"], result["models"], result["clients"]) == ("cpu", ["bundled"], [1, 2])
    row = result["results"]["bundled"]
    assert row["precision"] == "float32" and row["load_s"] > 0
    encoder, retrain, serving = row["encoder"], row["retrain"], row["serving"]
    assert encoder["batch1_ms"] > 0 and encoder["batch32_images_per_s"] > 0
    assert encoder["batch32_tower_only_images_per_s"] > 0
    assert (retrain["head"], retrain["pairs"], retrain["clean"]) == ("last_blocks:2", 24, 24)
    assert retrain["cache_fill_s"] > 0 and retrain["train_s"] > 0 and retrain["steps"] > 0
    assert retrain["total_s"] == pytest.approx(retrain["cache_fill_s"] + retrain["train_s"], abs=0.002)
    assert set(serving) == {"predict_1_client", "predict_2_clients", "seconds"}
    for name, clients in (("predict_1_client", 1), ("predict_2_clients", 2)):
        load = serving[name]
        assert (load["clients"], load["requests"], load["errors"]) == (clients, 3 * clients, 0), load
        assert load["requests_per_s"] > 0 and load["p50_ms"] > 0 and load["p95_ms"] >= load["p50_ms"]
        assert load["rps_over_encoder_batch32"] == pytest.approx(
            load["requests_per_s"] / encoder["batch32_images_per_s"], abs=0.001)
    assert all(part["seconds"] > 0 for part in (encoder, retrain, serving)) and result["seconds"] > 0
    assert result["bars"] == {}  # no ViT model ran, so no ViT bar


@pytest.mark.slow
def test_a_model_that_fails_records_its_errors_and_the_app_log(tmp_path):
    code, result, _, err = run_bench(tmp_path, "--device", "cpu", "--models", "no-such-model", "--clients", "1",
                                     "--requests", "1")
    assert code == 1
    row = result["results"]["no-such-model"]
    assert "Unknown model spec" in row["encoder"]["error"] and "Unknown model spec" in row["retrain"]["error"]
    assert row["serving"]["error"].startswith("RuntimeError: app exited") and "no-such-model" in row["serving"]["error"]
    assert result["bars"] == {}


def test_the_bars_read_the_8_client_ratio_and_the_retrain_totals():
    spec = importlib.util.spec_from_file_location("gpu_bench", GPU_BENCH)
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    results = {"ViT-B-32": {"retrain": {"total_s": 42.0},
                            "serving": {"predict_8_clients": {"rps_over_encoder_batch32": 0.75}}},
               "ViT-L-14": {"retrain": {"error": "OutOfMemoryError: ..."}},
               "bundled": {"retrain": {"total_s": 1.0}}}
    assert gpu.bars(results) == {
        "ViT-B-32: requests/s (8 clients) over batch-32 encoder images/s >= 0.8": {"value": 0.75, "bar": 0.8,
                                                                                  "met": False},
        "ViT-B-32: retrain total_s < 60": {"value": 42.0, "bar": 60, "met": True},
        "ViT-L-14: retrain total_s < 300": {"value": None, "bar": 300, "met": False},
    }
    assert "ViT-B-32: requests/s (8 clients) over batch-32 encoder images/s >= 0.8" not in gpu.bars(
        {"ViT-B-32": {"retrain": {"total_s": 42.0}}})  # --no-serve: no serving bar
