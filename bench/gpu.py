"""GPU benchmark: what the image tower, the served app and a retrain do on a CUDA device.

    python bench/gpu.py --json                                   # ViT-B-32 and ViT-L-14 on the GPU
    python bench/gpu.py --json --models ViT-B-32 --no-serve      # the tower and a retrain only
    python bench/gpu.py --json --device cpu --models bundled     # the same measurements on CPU (a smoke run)

For each model (a bare open_clip architecture name loads random weights: the real compute, no download):

- ``encoder``: the bare image encoder on the device, in this process: median latency at batch 1, and images/s at
  batch 32 through ``encode_images`` (preprocessing included, as the app encodes) and through the tower alone on
  pixels already on the device; ``precision`` says how the frozen tower ran (autocast on CUDA unless
  ``POCLIP_PRECISION=fp32``);
- ``serving``: ``/predict`` against ``python app.py`` started as its own process (trainer off, ``POCLIP_DEVICE``
  set to the device) with 1, 8 and 32 browser-like clients sending the same picture (``bench/serve.py``'s rows:
  requests/s, p50, p95, errors), each row with its requests/s over the encoder's batch-32 images/s;
- ``retrain``: a ``last_blocks:2`` retrain with the default recipe on ``--pairs`` synthetic preference pairs and
  ``--clean`` clean pictures: ``cache_fill_s`` computes every head input once (the trunk's activations),
  ``train_s`` is ``train()`` on that warm cache (``prepare_s`` + ``loop_s``), ``total_s`` both.

Every part records the seconds it took; a part that fails records its error and the run goes on (exit 1).

Bars: ViT-B-32 requests/s with 8 clients >= 0.8 x its batch-32 encoder rate; ViT-B-32 retrain total < 60 s;
ViT-L-14 retrain total < 300 s (only for the models in the run).

Without a CUDA device (and without ``--device cpu``) it prints why, as ``{"skipped": ...}``, and exits 0.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import PICTURE, row_name, serve_rows  # noqa: E402
from visitors import scratch_dir  # noqa: E402

RETRAIN_HEAD = "last_blocks:2"


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    """``(fn(), seconds)``, the device's queue drained before and after."""
    sync(device)
    started = time.perf_counter()
    result = fn()
    sync(device)
    return result, time.perf_counter() - started


def part(fn, *args) -> dict:
    """``fn(*args)``'s figures plus the seconds it took; ``{"error": ...}`` instead when it raises."""
    started = time.perf_counter()
    try:
        row = fn(*args)
    except Exception as exc:  # recorded, so that the other parts' figures still come out
        row = failure(exc)
    return {**row, "seconds": round(time.perf_counter() - started, 2)}


def failure(exc: Exception) -> dict:
    """A part's error as it goes in the JSON; the traceback goes to stderr."""
    traceback.print_exc()
    return {"error": f"{type(exc).__name__}: {exc}"}


def encoder_speed(encoder, repeats: int) -> dict:
    """Batch-1 latency and batch-32 throughput of the image encoder (medians)."""
    from poclip.world.images import open_image

    device = encoder.device
    picture = open_image(PICTURE)
    batch = [picture] * 32
    pixels = encoder.pixels(batch).to(device)  # already on the device: the tower's pass alone
    for _ in range(2):  # warm-up: CUDA context, kernel selection, allocator
        encoder.encode_images(batch)
        encoder.encode_pixels(pixels)
    one = [timed(lambda: encoder.encode_images([picture]), device)[1] for _ in range(repeats)]
    rounds = max(3, repeats // 4)
    images = [32 / timed(lambda: encoder.encode_images(batch), device)[1] for _ in range(rounds)]
    tower = [32 / timed(lambda: encoder.encode_pixels(pixels), device)[1] for _ in range(rounds)]
    return {"batch1_ms": round(1000 * statistics.median(one), 2),
            "batch32_images_per_s": round(statistics.median(images), 1),
            "batch32_tower_only_images_per_s": round(statistics.median(tower), 1)}


def retrain_speed(encoder, args: argparse.Namespace) -> dict:
    """One default-recipe ``last_blocks:2`` retrain: the input cache filled, then ``train()`` on it (as the
    app's trainer finds it after its first retrain)."""
    from alignment import fill

    from poclip.engine.config import TrainConfig
    from poclip.engine.policy import Policy
    from poclip.engine.preferences import synth_clean, synth_preferences
    from poclip.engine.train import train

    device = encoder.device
    started = time.perf_counter()
    prefs, clean = synth_preferences(args.pairs), synth_clean(args.clean)
    data_s = time.perf_counter() - started
    cfg = TrainConfig(head=RETRAIN_HEAD)
    policy = Policy(encoder, cfg.head)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    cache, fill_s = timed(lambda: fill(policy.make_cache(), prefs, clean), device)
    result, train_s = timed(lambda: train(encoder, prefs, clean, cfg, cache=cache), device)
    row = {"head": cfg.head, "pairs": len(prefs), "clean": len(clean), "steps": result.steps,
           "data_s": round(data_s, 2), "cache_fill_s": round(fill_s, 3), "train_s": round(train_s, 3),
           "prepare_s": round(result.embed_seconds, 3), "loop_s": round(result.train_seconds, 3),
           "total_s": round(fill_s + train_s, 3)}
    if device.type == "cuda":
        row["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return row


def serving(spec: str, args: argparse.Namespace, work: Path, encoder_rate: float | None) -> dict:
    """``bench/serve.py``'s /predict rows for ``python app.py`` on ``spec`` (browser clients), each with its
    requests/s over the encoder's batch-32 images/s."""
    load = argparse.Namespace(client=["browser"], clients=args.clients, single=args.requests,
                              requests=args.requests)
    rows = serve_rows("app", spec, load, work)
    for row in rows.values():
        row["rps_over_encoder_batch32"] = round(row["requests_per_s"] / encoder_rate, 3) if encoder_rate else None
    return rows


def measure_model(spec: str, args: argparse.Namespace, device: torch.device, work: Path) -> dict:
    """The encoder, retrain and serving parts for one model; a failing part leaves the others' figures."""
    from poclip.engine.models import load_model

    started = time.perf_counter()
    row: dict = {}
    try:
        encoder = load_model(spec, device=device)
    except Exception as exc:
        row["encoder"] = row["retrain"] = failure(exc)
    else:
        row["load_s"] = round(time.perf_counter() - started, 2)
        # The frozen tower's autocast precision (POCLIP_PRECISION; float32 on the CPU)
        row["precision"] = str(encoder.amp_dtype or torch.float32).removeprefix("torch.")
        row["encoder"] = part(encoder_speed, encoder, args.repeats)
        row["retrain"] = part(retrain_speed, encoder, args)
        del encoder
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the app's process gets the device's memory
    if args.serve:
        row["serving"] = part(serving, spec, args, work, row["encoder"].get("batch32_images_per_s"))
    row["seconds"] = round(time.perf_counter() - started, 2)
    return row


def bar(value: float | None, limit: float, at_least: bool) -> dict:
    """One bar: ``value >= limit`` (``at_least``) or ``value < limit``; a missing value is not met."""
    met = value is not None and (value >= limit if at_least else value < limit)
    return {"value": value, "bar": limit, "met": met}


def bars(results: dict) -> dict:
    """The issue's bars for the models in the run (by architecture). A part that failed, or a figure not
    measured (no 8-client row), has value None and is not met; a part not run has no bar."""
    out = {}
    for spec, row in results.items():
        arch = spec.partition(":")[0]
        if arch == "ViT-B-32" and "serving" in row:
            rate = row["serving"].get(row_name("browser", 8), {}).get("rps_over_encoder_batch32")
            out[f"{spec}: requests/s (8 clients) over batch-32 encoder images/s >= 0.8"] = bar(rate, 0.8, True)
        limit = {"ViT-B-32": 60, "ViT-L-14": 300}.get(arch)
        if limit is not None:
            out[f"{spec}: retrain total_s < {limit}"] = bar(row["retrain"].get("total_s"), limit, False)
    return out


def emit(result: dict, args: argparse.Namespace) -> None:
    """Print the JSON (on one line with ``--json``) and write it to ``--out``."""
    text = json.dumps(result, indent=None if args.json else 2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="torch device: cuda (default), cuda:N, or cpu")
    parser.add_argument("--models", default="ViT-B-32,ViT-L-14", help="backbone specs, comma-separated")
    parser.add_argument("--clients", default="1,8,32", type=lambda text: [int(n) for n in text.split(",")],
                        help="numbers of concurrent /predict clients, comma-separated")
    parser.add_argument("--requests", type=int, default=20,
                        help="/predict calls per client (half as many above 8 clients, as bench/serve.py)")
    parser.add_argument("--pairs", type=int, default=1000, help="synthetic preference pairs of the retrain")
    parser.add_argument("--clean", type=int, default=1000, help="clean pictures of the retrain")
    parser.add_argument("--repeats", type=int, default=20, help="encodes at batch 1 (a quarter as many at 32)")
    parser.add_argument("--serve", action=argparse.BooleanOptionalAction, default=True,
                        help="measure /predict of python app.py (--no-serve: skip it)")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    parser.add_argument("--json", action="store_true", help="print the JSON on one line")
    args = parser.parse_args()

    device = torch.device(args.device)
    versions = {"torch": torch.__version__, "cuda": torch.version.cuda}
    if device.type == "cuda" and not torch.cuda.is_available():
        emit({"skipped": "no CUDA device: torch.cuda.is_available() is False", **versions,
              "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}, args)
        return 0
    os.environ["POCLIP_DEVICE"] = args.device  # start_server passes this environment on to the app
    models = list(dict.fromkeys(s.strip() for s in args.models.split(",") if s.strip()))
    started = time.perf_counter()
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "device_spec": args.device, **versions, "models": models, "pairs": args.pairs, "clean": args.clean,
              "clients": args.clients if args.serve else [], "results": {}}
    with scratch_dir("poclip-gpu-") as work:
        for spec in models:
            result["results"][spec] = measure_model(spec, args, device, work)
    result["bars"] = bars(result["results"])
    result["seconds"] = round(time.perf_counter() - started, 2)
    emit(result, args)
    return 1 if any("error" in p for row in result["results"].values() for p in row.values()
                    if isinstance(p, dict)) else 0


if __name__ == "__main__":
    raise SystemExit(main())
