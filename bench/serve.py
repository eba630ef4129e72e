"""Serving speed: what one image tower can do, what the app delivers through its API, and Gradio's own floor.

    python bench/serve.py --json

For each backbone (the bundled model, and ViT-B-32 with random weights: the same compute as the real one,
no download), in one run and side by side:

- the bare image encoder, in this process: median latency at batch 1, and images/s at batch 32;
- ``/predict`` through ``gradio_client`` against ``python app.py`` started as its own process (trainer off):
  p50 latency with 1 client, then requests/s, p50, p95 and errors with 8 and with 32 concurrent clients,
  every client sending the *same* picture (visitors clicking the same example);
- the floor: a trivial Gradio handler with the same inputs and outputs as ``/predict`` (an uploaded picture
  and the attack controls in; a picture, two labels, two headings and a text out) that does no work.

Bars (issue 11): ViT-B-32 requests/s with 8 clients >= 0.8 x its batch-32 encoder rate; bundled ``/predict``
p50 with 1 client <= 1.3 x the floor's; 0 errors with 32 clients. The machine is shared and noisy: compare
rows of one run, not runs.

Each load row also says how much CPU one request cost the server process and this process (the clients:
``gradio_client`` uploads, waits on the event stream and downloads the picture), since here both share the
cores the image tower needs. ``--models ViT-B-32 --clients 8 --no-floor`` measures just the throughput bar.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

PICTURE = REPO / "assets" / "examples" / "synthetic_star.png"
# The /predict inputs after the picture: word, font, size, fill, outline, x, y, opacity, rotation, label set,
# custom labels, strength t, arena mode.
PREDICT_ARGS = ("circle", "sans-bold", 0.15, "#ffffff", "#000000", 0.5, 0.5, 1.0, 0.0, "Synthetic shapes", "", 1.0,
                False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# ----- the floor: a Gradio app that does nothing --------------------------------------------------------------


def serve_trivial(port: int) -> None:
    """The floor app: same components as the Compare tab's /predict, a handler that does no work."""
    import gradio as gr

    def predict(image, *_controls):
        labels = {"star": 0.9, "circle": 0.1}
        return image, labels, labels, "### Base CLIP", "### PO-CLIP", "base"

    with gr.Blocks() as demo:
        image = gr.Image(type="filepath")
        controls = [gr.Textbox(), gr.Dropdown(["sans-bold"]), gr.Slider(0, 0.5), gr.ColorPicker(), gr.ColorPicker(),
                    gr.Slider(0, 1), gr.Slider(0, 1), gr.Slider(0, 1), gr.Slider(-90, 90),
                    gr.Dropdown(["Synthetic shapes"]), gr.Textbox(), gr.Slider(-2, 2), gr.Checkbox()]
        outputs = [gr.Image(type="filepath"), gr.Label(), gr.Label(), gr.Markdown(), gr.Markdown(), gr.Textbox()]
        gr.Button().click(predict, [image, *controls], outputs, api_name="predict")
    demo.queue(default_concurrency_limit=8, max_size=256).launch(server_name="127.0.0.1", server_port=port,
                                                                  quiet=True)


# ----- measuring ----------------------------------------------------------------------------------------------


def start_server(kind: str, spec: str, data_dir: Path, app_dir: Path = REPO) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "POCLIP_MODEL": spec, "POCLIP_DATA_DIR": str(data_dir), "POCLIP_TRAINER": "off",
           "POCLIP_SEED_ITEMS": "0", "POCLIP_BACKUP_EVERY_MINUTES": "0", "POCLIP_RATE_LIMIT": "off",
           "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1"}
    cmd = [sys.executable, "app.py"] if kind == "app" else [sys.executable, __file__, "--serve-trivial", str(port)]
    log = open(data_dir / f"{kind}.log", "w")  # noqa: SIM115 - kept open for the server's lifetime
    proc = subprocess.Popen(cmd, cwd=app_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{kind} server exited: {(data_dir / f'{kind}.log').read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url + "gradio_api/info", timeout=2).read()
            return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"{kind} server did not start within 300 s")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc``; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(url: str, clients: int, requests: int, picture: Path, server_pid: int | None = None) -> dict:
    """``clients`` threads, each with its own gradio_client, each sending ``requests`` /predict calls."""
    from gradio_client import Client, handle_file

    pool = [Client(url, verbose=False) for _ in range(clients)]
    for c in pool[:1]:
        c.predict(handle_file(str(picture)), *PREDICT_ARGS, api_name="/predict")  # warm-up, not counted
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def worker(c: Client) -> None:
        start.wait()
        for _ in range(requests):
            t = time.perf_counter()
            try:
                c.predict(handle_file(str(picture)), *PREDICT_ARGS, api_name="/predict")
                with lock:
                    latencies.append(time.perf_counter() - t)
            except Exception as exc:  # counted and reported, never hidden
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:300])

    threads = [threading.Thread(target=worker, args=(c,)) for c in pool]
    before = batch_counts(pool[0])
    server_cpu, client_cpu = cpu_seconds(server_pid) if server_pid else None, time.process_time()
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    client_cpu = time.process_time() - client_cpu
    if server_cpu is not None:
        server_cpu = cpu_seconds(server_pid) - server_cpu
    after = batch_counts(pool[0])
    row = {
        "clients": clients, "requests": len(latencies) + len(errors), "errors": len(errors),
        "requests_per_s": round(len(latencies) / wall, 2),
        "p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
        "p95_ms": round(1000 * percentile(latencies, 0.95), 1) if latencies else None,
        "error_examples": sorted(set(errors))[:3],
        "client_cpu_ms_per_request": round(1000 * client_cpu / max(1, len(latencies) + len(errors)), 1),
    }
    if server_cpu is not None:
        row["server_cpu_ms_per_request"] = round(1000 * server_cpu / max(1, len(latencies) + len(errors)), 1)
    if before and after and after["batches"] > before["batches"]:
        row["mean_image_batch"] = round((after["pictures"] - before["pictures"])
                                        / (after["batches"] - before["batches"]), 2)
    return row


def batch_counts(client) -> dict | None:
    """The app's image-batch counters from /status (None for apps without them: the floor, older code)."""
    try:
        return client.predict(api_name="/status").get("image_batches")
    except Exception:  # no /status endpoint
        return None


def encoder_speed(spec: str, repeats: int) -> dict:
    import torch

    from poclip.engine.models import load_model
    from poclip.world.images import open_image

    encoder = load_model(spec, device=torch.device("cpu"))
    picture = open_image(PICTURE)
    encoder.encode_images([picture])  # warm-up
    one = []
    for _ in range(repeats):
        t = time.perf_counter()
        encoder.encode_images([picture])
        one.append(time.perf_counter() - t)
    batch = [picture] * 32
    encoder.encode_images(batch)
    rates = []
    for _ in range(max(2, repeats // 4)):
        t = time.perf_counter()
        encoder.encode_images(batch)
        rates.append(32 / (time.perf_counter() - t))
    return {"batch1_ms": round(1000 * statistics.median(one), 2),
            "batch32_images_per_s": round(statistics.median(rates), 1)}


def serve_rows(kind: str, spec: str, args: argparse.Namespace, work: Path, app_dir: Path = REPO) -> dict:
    data_dir = work / f"{kind}-{spec.replace(':', '_')}-{app_dir.name}"
    data_dir.mkdir()
    proc, url = start_server(kind, spec, data_dir, app_dir)
    try:
        rows = {}
        for n in args.clients:
            calls = args.single if n == 1 else args.requests if n <= 8 else max(2, args.requests // 2)
            rows[f"predict_{n}_client{'s' if n > 1 else ''}"] = load(url, n, calls, PICTURE, proc.pid)
        return rows
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="bundled,ViT-B-32", help="backbone specs, comma-separated")
    parser.add_argument("--clients", default="1,8,32", type=lambda text: [int(n) for n in text.split(",")],
                        help="numbers of concurrent clients to measure, comma-separated")
    parser.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure the trivial handler (the floor)")
    parser.add_argument("--single", type=int, default=20, help="sequential /predict calls for the 1-client p50")
    parser.add_argument("--requests", type=int, default=8, help="/predict calls per client with 8 clients "
                                                                "(half as many with 32)")
    parser.add_argument("--repeats", type=int, default=20, help="bare encodes at batch 1")
    parser.add_argument("--baseline", default=None, metavar="DIR",
                        help="also serve each backbone from this checkout (e.g. a git worktree of an older commit), "
                             "in the same run, as the 'baseline' rows")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--serve-trivial", type=int, default=None, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_trivial:
        serve_trivial(args.serve_trivial)
        return 0

    work = Path(tempfile.mkdtemp(prefix="poclip-serve-"))
    result: dict = {"cpu_count": os.cpu_count(), "load_average_at_start": round(os.getloadavg()[0], 2),
                    "picture": PICTURE.name, "backbones": {}}
    if args.floor:
        result["floor"] = serve_rows("trivial", "none", args, work)
    for spec in [s.strip() for s in args.models.split(",") if s.strip()]:
        row = {"encoder": encoder_speed(spec, args.repeats)}
        if args.baseline:
            row["baseline"] = serve_rows("app", spec, args, work, Path(args.baseline).resolve())
        row.update(serve_rows("app", spec, args, work))
        result["backbones"][spec] = row
    floor_p50 = result.get("floor", {}).get("predict_1_client", {}).get("p50_ms")
    ratios, bars = {}, {}
    for spec, row in result["backbones"].items():
        ratios[spec] = {}
        for prefix, rows in (("", row), ("baseline_", row.get("baseline"))):
            if rows and floor_p50 and "predict_1_client" in rows:
                ratios[spec][f"{prefix}p50_1_client_over_floor"] = round(
                    rows["predict_1_client"]["p50_ms"] / floor_p50, 2)
            if rows and "predict_8_clients" in rows:
                ratios[spec][f"{prefix}rps_8_clients_over_encoder_batch32"] = round(
                    rows["predict_8_clients"]["requests_per_s"] / row["encoder"]["batch32_images_per_s"], 3)
        if "predict_32_clients" in row:
            bars[f"{spec}: 0 errors with 32 clients, same picture"] = row["predict_32_clients"]["errors"] == 0
    if "p50_1_client_over_floor" in ratios.get("bundled", {}):
        bars["bundled /predict p50 (1 client) <= 1.3x floor"] = ratios["bundled"]["p50_1_client_over_floor"] <= 1.3
    if "rps_8_clients_over_encoder_batch32" in ratios.get("ViT-B-32", {}):
        bars["ViT-B-32 requests/s (8 clients) >= 0.8x encoder at batch 32"] = (
            ratios["ViT-B-32"]["rps_8_clients_over_encoder_batch32"] >= 0.8)
    result["ratios"], result["bars"] = ratios, bars
    result["load_average_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
