"""Serving speed: what one image tower can do, what the app delivers through its API, and Gradio's own floor.

    python bench/serve.py --json

For each backbone (the bundled model, and ViT-B-32 with random weights: the same compute as the real one,
no download), in one run and side by side:

- the bare image encoder, in this process: median latency at batch 1, and images/s at batch 32;
- ``/predict`` against ``python app.py`` started as its own process (trainer off): p50 latency with 1 client,
  then requests/s, p50, p95 and errors with 8 and with 32 concurrent clients, every client sending the *same*
  picture (visitors clicking the same example). Two kinds of client, each in its own rows: ``browser`` does what
  the page does (the picture uploaded once, then a plain HTTP call per Predict and the returned picture
  fetched), ``gradio_client`` uploads the picture again with every call, as a script does;
- the floor: a trivial Gradio handler with the same inputs and outputs as ``/predict`` (an uploaded picture
  and the attack controls in; a picture, two labels, two headings and a text out) that does no work.

Bars (issue 11): ViT-B-32 requests/s with 8 clients >= 0.8 x its batch-32 encoder rate; bundled ``/predict``
p50 with 1 client <= 1.3 x the floor's; 0 errors with 32 clients. The machine is shared and noisy: compare
rows of one run, not runs.

Each load row also says how much CPU one request cost the server process and this process (the clients),
since here both share the cores the image tower needs: ``gradio_client`` costs about 110 ms of CPU per call,
more than the floor's whole request, so the throughput bar is measured with the ``browser`` client. Rows
``server_bound_requests_per_s`` divide the cores by the server's own CPU per request: the rate the server would
reach if the visitors ran elsewhere, as they do on a Space. ``--models ViT-B-32 --clients 8 --no-floor``
measures just the throughput bar.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from visitors import REPO, predict_load, scratch_dir, start_app, stop  # noqa: E402

sys.path.insert(0, str(REPO))

PICTURE = REPO / "assets" / "examples" / "synthetic_star.png"
# The /predict inputs after the picture (see visitors.predict_load).
PREDICT_ARGS = ("circle", "sans-bold", 0.15, "#ffffff", "#000000", 0.5, 0.5, 1.0, 0.0, "Synthetic shapes", "", 1.0,
                False, False, "base", "aligned")


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
                    gr.Dropdown(["Synthetic shapes"]), gr.Textbox(), gr.Slider(-2, 2), gr.Checkbox(), gr.Checkbox(),
                    gr.Dropdown(["base"]), gr.Dropdown(["aligned"])]
        outputs = [gr.Image(type="filepath"), gr.Label(), gr.Label(), gr.Markdown(), gr.Markdown(), gr.Textbox()]
        gr.Button().click(predict, [image, *controls], outputs, api_name="predict")
    demo.queue(default_concurrency_limit=8, max_size=256).launch(server_name="127.0.0.1", server_port=port,
                                                                  quiet=True)


# ----- measuring ----------------------------------------------------------------------------------------------


def start_server(kind: str, spec: str, data_dir: Path, app_dir: Path = REPO):
    """``python app.py`` (trainer off, nothing seeded) or the floor app, in its own process."""
    env = {**os.environ, "POCLIP_MODEL": spec, "POCLIP_DATA_DIR": str(data_dir), "POCLIP_TRAINER": "off",
           "POCLIP_SEED_ITEMS": "0", "POCLIP_BACKUP_EVERY_MINUTES": "0", "POCLIP_RATE_LIMIT": "off",
           # Up to 32 simulated visitors, all from 127.0.0.1: one address's prediction rate would throttle them.
           "POCLIP_CLIENT_PREDICTIONS": "off", "POCLIP_PEERS": "off"}
    cmd = [sys.executable, "app.py"] if kind == "app" else [sys.executable, __file__, "--serve-trivial"]
    return start_app(kind, cmd, env, data_dir, cwd=app_dir)


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
        for client in args.client:
            for n in args.clients:  # every client sends the same picture, as visitors clicking one example do
                calls = args.single if n == 1 else args.requests if n <= 8 else max(2, args.requests // 2)
                row = predict_load(url, n, calls, lambda _k: (PICTURE, PREDICT_ARGS), server_pid=proc.pid,
                                   client=client)
                if row.get("server_cpu_ms_per_request"):
                    row["server_bound_requests_per_s"] = round(
                        1000 * os.cpu_count() / row["server_cpu_ms_per_request"], 2)
                rows[row_name(client, n)] = row
        return rows
    finally:
        stop(proc)


def row_name(client: str, n: int) -> str:
    return f"{'' if client == 'browser' else client + '_'}predict_{n}_client{'s' if n > 1 else ''}"


def ratios_and_bars(result: dict, clients: list[str]) -> tuple[dict, dict]:
    """A run's derived figures, per backbone and client kind: /predict p50 with 1 client over the floor's (same
    client), requests/s with 8 clients (and the server-bound rate) over the batch-32 encoder's; and the bars."""
    ratios, bars = {}, {}
    for spec, row in result["backbones"].items():
        ratios[spec] = {}
        encoder_rate = row["encoder"]["batch32_images_per_s"]
        for client in clients:
            tag = "" if client == "browser" else f"{client}_"
            floor_p50 = result.get("floor", {}).get(row_name(client, 1), {}).get("p50_ms")
            for prefix, rows in (("", row), ("baseline_", row.get("baseline"))):
                one, eight = (rows or {}).get(row_name(client, 1)), (rows or {}).get(row_name(client, 8))
                if one and floor_p50:
                    ratios[spec][f"{prefix}{tag}p50_1_client_over_floor"] = round(one["p50_ms"] / floor_p50, 2)
                if eight:
                    ratios[spec][f"{prefix}{tag}rps_8_clients_over_encoder_batch32"] = round(
                        eight["requests_per_s"] / encoder_rate, 3)
                    if "server_bound_requests_per_s" in eight:
                        ratios[spec][f"{prefix}{tag}server_bound_rps_8_clients_over_encoder_batch32"] = round(
                            eight["server_bound_requests_per_s"] / encoder_rate, 3)
            if row_name(client, 32) in row:
                errors = row[row_name(client, 32)]["errors"]
                bars[f"{spec}: 0 errors with 32 {client} clients, same picture"] = errors == 0
            p50, rate = ratios[spec].get(f"{tag}p50_1_client_over_floor"), ratios[spec].get(
                f"{tag}rps_8_clients_over_encoder_batch32")
            if spec == "bundled" and p50 is not None:
                bars[f"bundled /predict p50 (1 {client} client) <= 1.3x floor"] = p50 <= 1.3
            if spec == "ViT-B-32" and rate is not None:
                bars[f"ViT-B-32 requests/s (8 {client} clients) >= 0.8x encoder at batch 32"] = rate >= 0.8
    return ratios, bars


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="bundled,ViT-B-32", help="backbone specs, comma-separated")
    parser.add_argument("--clients", default="1,8,32", type=lambda text: [int(n) for n in text.split(",")],
                        help="numbers of concurrent clients to measure, comma-separated")
    parser.add_argument("--client", default="browser,gradio_client", type=lambda text: text.split(","),
                        help="client kinds to measure, comma-separated: browser, gradio_client")
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
    parser.add_argument("--serve-trivial", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_trivial:
        serve_trivial(int(os.environ["GRADIO_SERVER_PORT"]))
        return 0

    with scratch_dir("poclip-serve-") as work:
        return measure(args, work)


def measure(args: argparse.Namespace, work: Path) -> int:
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
    ratios, bars = ratios_and_bars(result, args.client)
    result["ratios"], result["bars"] = ratios, bars
    result["load_average_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
