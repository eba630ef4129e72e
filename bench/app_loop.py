"""The product loop, measured end to end through the app's public API on the bundled model.

From an empty data directory: start the app as its own process (``python app.py``; its trainer thread runs each
retrain in a child process), label 200 synthetic attacked pictures through /next_item and /answer (answering
truthfully, as a careful person would), wait while the app prepares them (as it does between people's labels),
measure /predict from a few visitors while the app is idle, retrain through /retrain while the same visitors keep
predicting, wait for the verdict, measure the app process's memory once it serves the outcome, label 20 more and
retrain again with nobody predicting (``retrain_quiet_wall_seconds``), then evaluate the serving head on 1,000
held-out synthetic pictures and measure /predict under 8 concurrent clients.

    python bench/app_loop.py --json

Bars (issues 5 and 17): retrain request to verdict <= 60 s on a quiet 2-core machine (the second retrain: with
visitors predicting, ``retrain_wall_seconds``, serving takes the cores first); /predict p50 during the retrain at
most 2x idle; the app process's memory after the retrain at most 300 MB above before; typographic
accuracy >= 0.85 with clean accuracy no more than one point below the base model.

With ``--focus FAMILY`` the app's items are all written in that attack family (``POCLIP_ANNOTATE_FAMILIES``), 300
of them are labelled, and the bars add what a crowd teaching that family should achieve: the run is promoted, and
on held-out pictures the family's accuracy rises at least 3 points over the starter head with no other family
falling more than 1 point (``held_out_families``: family -> base, starter, active; ``crowd_agreement``: candidate,
live, base).

:func:`measure` runs the steps in :data:`STEPS` in order; each adds its keys to the one result object, so a new
figure is one more step.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from visitors import (  # noqa: E402
    REPO,
    Annotator,
    child_pids,
    predict_load,
    rss_mb,
    scratch_dir,
    seeded_truth,
    start_app,
    stop,
)

sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from annotation_db import Repository, open_repository  # noqa: E402
from poclip.app.service import repository_config  # noqa: E402
from poclip.settings import Settings  # noqa: E402
from poclip.world.styles import ATTACK_FAMILIES  # noqa: E402

TOKEN = "bench-admin"
VERDICTS = ("promoted", "rejected", "failed")  # how a run ends, as /status says
RETRAIN_BAR_S = 60.0
LATENCY_BAR = 2.0  # /predict p50 during a retrain, times idle
MEMORY_BAR_MB = 300.0
MORE_LABELS = 20  # labelled after the first retrain, before the quiet one (so it trains a new candidate)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=None, help="items labelled (default 200; 300 with --focus)")
    parser.add_argument("--focus", choices=[f for f in ATTACK_FAMILIES if f != "held_out_font"],
                        help="label items of this attack family only, and judge what the crowd taught")
    parser.add_argument("--eval-n", type=int, default=1000)
    parser.add_argument("--family-n", type=int, default=500, help="held-out pictures per attack family")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients of the final /predict load")
    parser.add_argument("--requests", type=int, default=10, help="predict calls per client")
    parser.add_argument("--visitors", type=int, default=4,
                        help="visitors predicting while idle and during the retrain (each waits --pause after "
                             "every answer)")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds a visitor looks at an answer")
    parser.add_argument("--idle-requests", type=int, default=15, help="predict calls per visitor while idle")
    parser.add_argument("--warmup", type=int, default=600,
                        help="predict calls before the idle figures, so the app's bounded caches (its 512 kept "
                             "comparisons) are full before its memory is measured")
    parser.add_argument("--json", action="store_true", help="print one JSON object (the default output)")
    args = parser.parse_args()
    if args.labels is None:
        args.labels = 300 if args.focus else 200
    torch.set_num_threads(2)
    with scratch_dir("poclip-bench-") as data_dir:
        result = measure(args, data_dir)
    print(json.dumps(result, indent=2 if not args.json else None))
    return 0 if result.get("bars_met") else 1


@dataclass
class Loop:
    """The app under measure: its process, URL, settings and a store handle on its database (what the script
    uses to know which item it was served, and to read run records)."""

    args: argparse.Namespace
    data_dir: Path
    settings: Settings
    proc: object
    url: str
    repo: Repository
    person: Annotator | None = None

    def status(self) -> dict:
        return self.person.client.predict(api_name="/status")

    def probes(self) -> list[tuple[Path, tuple]]:
        """One attacked picture per visitor, as different visitors would send (the /predict inputs after it)."""
        from poclip.world import synth
        from poclip.world.attacks import random_attack

        probes = []
        for k in range(max(self.args.clients, self.args.visitors)):
            rng = random.Random(f"bench-probe:{k}")
            scene = synth.sample_scene(rng)
            path = self.data_dir / f"probe{k}.png"
            synth.draw_scene(scene, 224).save(path)
            a = random_attack(synth.SHAPES, scene.shape, rng)
            # word, font, size, fill, outline, x, y, opacity, rotation, label set, custom labels, t, arena, share,
            # left and right model
            probes.append((path, (a.text, a.font, a.size, a.fill, a.stroke, a.x, a.y, 1.0, 0.0, "Synthetic shapes",
                                  "", 1.0, False, False, "base", "aligned")))
        return probes

    def visitors(self, **load) -> dict:
        """/predict from the paced visitors (browser-like clients, through the public HTTP API)."""
        probes = self.probes()
        return predict_load(self.url, self.args.visitors, self.args.idle_requests, lambda k: probes[k],
                            server_pid=self.proc.pid, client="browser", pause_s=self.args.pause, **load)


def measure(args: argparse.Namespace, data_dir: Path) -> dict:
    """Start the app, run :data:`STEPS`, stop the app; returns the result with its bars."""
    # One simulated person labels everything and the visitors predict, all from one address: the per-person and
    # per-address limits (predictions included) and the abuse defaults (labels count after 3 gold items, one
    # person decides at most a quarter) are off here.
    settings = Settings(data_dir=data_dir, model_spec="bundled", admin_token=TOKEN, rate_limit="off",
                        client_rate_limit="off", client_new_annotators="off", client_predictions="off",
                        min_gold_seen=0, max_annotator_share=1.0, retrain_every_pairs=0, backup_every_minutes=0,
                        seed_items=args.labels + 40, trainer="thread", peers=(),
                        annotate_families=(args.focus,) if args.focus else Settings.annotate_families)
    env = {**os.environ, **settings.to_env()}
    started = time.perf_counter()
    proc, url = start_app("app", [sys.executable, "app.py"], env, data_dir)
    result: dict = {"data_dir_empty_at_start": True, "startup_seconds": round(time.perf_counter() - started, 2),
                    "train_threads": settings.train_threads, "cpu_count": os.cpu_count()}
    loop = Loop(args, data_dir, settings, proc, url, open_repository(settings, repository_config(settings)))
    try:
        for step in STEPS:
            step(loop, result)
    finally:
        stop(proc)
        loop.repo.close()
    result["bars"] = bars(result) | (focus_bars(result, args.focus) if args.focus else {})
    result["bars_met"] = all(result["bars"].values())
    return result


# ----- the steps ------------------------------------------------------------------------------------------------


def label(loop: Loop, result: dict) -> None:
    """``labelled``, ``labelling_seconds``, ``answer_latency_ms_p50``: one careful person labels everything."""
    loop.person = Annotator(loop.url, "bench-annotator", loop.repo, seeded_truth(loop.args.labels + 40,
                                                                               loop.settings.annotate_families))
    t0 = time.perf_counter()
    loop.person.next_item()
    latency = []
    for _ in range(loop.args.labels):
        t = time.perf_counter()
        loop.person.answer()
        latency.append(time.perf_counter() - t)
    result["labelled"] = loop.args.labels
    result["labelling_seconds"] = round(time.perf_counter() - t0, 2)
    result["answer_latency_ms_p50"] = round(1000 * statistics.median(latency), 1)


def idle(loop: Loop, result: dict) -> None:
    """``prepare_seconds`` (the child that caches what every retrain reuses, from its log), ``warmup`` (``--warmup``
    calls at once from the visitors, unpaced), then ``predict_p50_ms_idle`` and ``rss_mb_before`` once no child
    runs."""
    result["waited_for_prepare_seconds"], result["crowd_pairs"] = wait_for_preparation(loop)
    result["prepare_seconds"] = prepared_figures(loop)
    if loop.args.warmup:
        probes, calls = loop.probes(), -(-loop.args.warmup // loop.args.visitors)
        warm = predict_load(loop.url, loop.args.visitors, calls, lambda k: probes[k], client="browser")
        result["warmup"] = {"requests": warm["requests"], "errors": warm["errors"], "rss_mb": rss_mb(loop.proc.pid)}
    row = loop.visitors()
    result["predict_idle"] = row
    result["predict_p50_ms_idle"] = row["p50_ms"]
    result["rss_mb_before"] = rss_mb(loop.proc.pid)


def wait_for_preparation(loop: Loop) -> tuple[float, int]:
    """Wait until the app's idle preparation caught up with the crowd's pairs; returns the seconds waited and the
    crowd pairs. The app prepares while idle: at start, then each time the crowd's pairs grew by
    PREPARE_EVERY_PAIRS. Labels come here far faster than people give them, so the bench waits as the app would
    between people's labels."""
    from poclip.app.child_trainer import PREPARE_EVERY_PAIRS
    from poclip.app.pair_counts import count_pairs

    crowd = count_pairs(loop.repo, 0).crowd_pairs
    t0 = time.perf_counter()
    while (child_pids(loop.proc.pid) or (prepared_figures(loop) or {}).get("crowd_pairs", -1)
           <= crowd - PREPARE_EVERY_PAIRS) and time.perf_counter() - t0 < 900:
        time.sleep(0.5)
    return round(time.perf_counter() - t0, 2), crowd


def prepared_figures(loop: Loop) -> dict | None:
    """The last preparing child's figures (seconds per part, ``crowd_pairs``), from the last line of its log."""
    log = loop.data_dir / "logs" / "prepare.log"
    lines = log.read_text().strip().splitlines() if log.exists() else []
    try:
        return json.loads(lines[-1]).get("prepared") if lines else None
    except ValueError:  # still running: its last line is not the result yet
        return None


def retrain(loop: Loop, result: dict) -> None:
    """``retrain_wall_seconds`` (/retrain to the verdict in /status), ``predict_p50_ms_during_retrain``,
    ``promoted``, ``live_version``, ``rss_mb_after`` (once the app serves the outcome), ``run``,
    ``retrain_phases_s`` (the run record's, and ``other``: what the wall time holds beyond them) and
    ``retrain_phases_cpu_s`` (the training process's CPU time per phase)."""
    verdict: dict = {}
    peak = [rss_mb(loop.proc.pid) or 0.0]
    t0 = time.perf_counter()
    loop.person.client.predict(TOKEN, "dpo", api_name="/retrain")

    def watch() -> None:
        status = loop.status()
        while status["trainer"]["phase"] not in VERDICTS and time.perf_counter() - t0 < 900:
            peak[0] = max(peak[0], rss_mb(loop.proc.pid) or 0.0)
            time.sleep(0.25)
            status = loop.status()
        verdict.update(status=status, seconds=time.perf_counter() - t0)

    watcher = threading.Thread(target=watch)
    watcher.start()
    row = loop.visitors(until=lambda: bool(verdict))
    watcher.join()
    result["retrain_wall_seconds"] = round(verdict["seconds"], 2)
    result["predict_during_retrain"] = row
    result["predict_p50_ms_during_retrain"] = row["p50_ms"]
    run = loop.repo.list_runs(limit=1)[0]
    version = loop.repo.get_version(run.version_id) if run.version_id else None
    result["promoted"] = version is not None and version.status == "active"
    deadline = time.perf_counter() + 60
    status = verdict["status"]
    while result["promoted"] and status["live_version"] != version.id and time.perf_counter() < deadline:
        time.sleep(0.25)
        status = loop.status()
    result["live_version"] = status["live_version"]
    loop.visitors(until=lambda: True)  # a request each on whatever head serves now
    result["rss_mb_peak_during_retrain"] = peak[0]
    result["rss_mb_after"] = rss_mb(loop.proc.pid)
    metrics = run.metrics or {}
    result["run"] = {"status": run.status, "train_seconds": metrics.get("train_seconds"),
                     "embed_seconds": metrics.get("embed_seconds"), "gate": metrics.get("gate"),
                     "process": metrics.get("process"), "error": run.error}
    # What the gate saw, family by family on its own 500 pictures: the candidate (promoted or not) beside the live head.
    result["gate_families"] = {
        family: {"live": (metrics.get("live_before") or {}).get("family_accuracy", {}).get(family), "candidate": a}
        for family, a in ((metrics.get("candidate") or {}).get("family_accuracy") or {}).items()}
    phases = dict(metrics.get("phases_s") or {})
    phases["other"] = round(verdict["seconds"] - sum(phases.values()), 2)
    result["retrain_phases_s"] = phases
    # The child's CPU seconds per phase: about what each takes on an idle core, whatever else the machine ran.
    result["retrain_phases_cpu_s"] = metrics.get("phases_cpu_s")


def retrain_quiet(loop: Loop, result: dict) -> None:
    """``retrain_quiet_wall_seconds`` and ``retrain_quiet_phases_s``: once :data:`MORE_LABELS` more labels came and
    the app prepared them while idle, a retrain with nobody predicting meanwhile (the bar's quiet machine: the
    retrain alone on the cores), from the request to the run's end in the store."""
    for _ in range(MORE_LABELS):
        loop.person.answer()
    result["labelled"] += MORE_LABELS
    result["waited_for_prepare_seconds_quiet"], result["crowd_pairs_quiet"] = wait_for_preparation(loop)
    t0 = time.perf_counter()
    loop.person.client.predict(TOKEN, "dpo", api_name="/retrain")
    run = loop.repo.list_runs(limit=1)[0]
    while run.status in ("queued", "running") and time.perf_counter() - t0 < 900:
        time.sleep(0.25)
        run = loop.repo.get_run(run.id)
    result["retrain_quiet_wall_seconds"] = round(time.perf_counter() - t0, 2)
    result["retrain_quiet_phases_s"] = (run.metrics or {}).get("phases_s")
    result["retrain_quiet_gate"] = (run.metrics or {}).get("gate")
    result["promoted_quiet"] = run.version_id is not None and loop.repo.get_version(run.version_id).status == "active"


def held_out(loop: Loop, result: dict) -> None:
    """``held_out``: the base model and the serving head on ``--eval-n`` held-out synthetic pictures (seed 2024)."""
    from poclip.engine.evaluate import embed_synth_eval, evaluate_policy
    from poclip.engine.models import load_model
    from poclip.engine.policy import load_head
    from poclip.engine.starter import load_starter

    encoder = load_model("bundled")
    active = loop.repo.active_version()
    serving = load_head(active.head_path, encoder) if active else load_starter(encoder)
    data = embed_synth_eval(encoder, loop.args.eval_n, seed=2024)
    base = evaluate_policy(None, data, encoder=encoder)
    live = evaluate_policy(serving, data, encoder=encoder) if serving is not None else base
    keys = ("clean_accuracy", "typographic_accuracy", "attack_success_rate", "kl_drift")
    result["held_out"] = {"n": loop.args.eval_n, "seed": 2024, "base": {k: base[k] for k in keys},
                          "active": {k: live[k] for k in keys}}
    # Every attack family on --family-n held-out pictures (seed 2024, which no training stream or gate uses).
    starter = load_starter(encoder)
    families, errors = {}, {}
    for family in ATTACK_FAMILIES:
        data = embed_synth_eval(encoder, loop.args.family_n, seed=2024, family=family)
        families[family] = {name: evaluate_policy(policy, data, encoder=encoder)["typographic_accuracy"]
                            for name, policy in (("base", None), ("starter", starter), ("active", serving))}
        errors[family] = starter_errors(starter, data)
    result["held_out_families"] = families
    result["starter_errors"] = errors
    if loop.args.focus:  # the most a crowd's pairs can add to the focus family: every reading error fixed
        row = errors[loop.args.focus]
        result["focus_reading_gain_bound"] = round(row["reads_writing"] / row["n"], 3)
    run = loop.repo.list_runs(limit=1)[0]  # the last retrain (the quiet one), whose candidate is the newest
    agreement = (run.metrics or {}).get("crowd_agreement") or {}
    result["crowd_agreement"] = {name: a["share"] for name, a in agreement.items()}
    result["crowd_agreement_intervals"] = agreement


def starter_errors(starter, data) -> dict[str, int]:
    """The starter head's errors on a held-out family: ``wrong``, of which ``reads_writing`` answer a word written
    on the picture (what a judgment's pair, the true label over the written word, teaches against) and ``other``
    answer a class nothing wrote (the writing hides the shape: a picture a crowd label cannot teach it to read)."""
    text = starter.encoder.classifier(data.labels, (data.template,))
    x = data.inputs(starter)[1]
    with torch.no_grad():
        predicted = torch.cat([starter.logits(x[i : i + 512], text).argmax(1) for i in range(0, len(x), 512)])
    wrong = (predicted != data.truth).nonzero().flatten().tolist()
    reads = sum(data.labels[predicted[i]] in re.findall(r"[a-z]+", data.attacks[i].text.lower()) for i in wrong)
    return {"n": data.n, "wrong": len(wrong), "reads_writing": reads, "other": len(wrong) - reads}


def predict_burst(loop: Loop, result: dict) -> None:
    """``predict``: ``--clients`` concurrent gradio_client clients, ``--requests`` calls each, no pause."""
    probes = loop.probes()
    result["predict"] = predict_load(loop.url, loop.args.clients, loop.args.requests, lambda k: probes[k],
                                     server_pid=loop.proc.pid)


STEPS: tuple[Callable[[Loop, dict], None], ...] = (label, idle, retrain, retrain_quiet, held_out, predict_burst)


def focus_bars(result: dict, focus: str) -> dict[str, bool]:
    """The bars of a crowd teaching ``focus``: promoted, the family up 3 points on the starter, none other down 1."""
    families = result["held_out_families"]
    gain = families[focus]["active"] - families[focus]["starter"]
    others = {f: row["active"] - row["starter"] for f, row in families.items() if f != focus}
    worst = min(others, key=others.get)
    return {"promoted (either retrain)": result["promoted"] or result["promoted_quiet"],
            f"{focus} >= starter + 0.03 (got {gain:+.3f})": gain >= 0.03 - 1e-9,
            f"no other family below starter - 0.01 (worst {worst} {others[worst]:+.3f})":
                others[worst] >= -0.01 - 1e-9}


def bars(result: dict) -> dict[str, bool]:
    """Each bar and whether the run met it."""
    idle_p50, during_p50 = result["predict_p50_ms_idle"], result["predict_p50_ms_during_retrain"]
    base, active = result["held_out"]["base"], result["held_out"]["active"]
    return {
        f"retrain_quiet_wall_seconds <= {RETRAIN_BAR_S:g}": result["retrain_quiet_wall_seconds"] <= RETRAIN_BAR_S,
        f"predict p50 during retrain <= {LATENCY_BAR:g}x idle": during_p50 is not None and idle_p50 is not None
        and during_p50 <= LATENCY_BAR * idle_p50,
        f"app memory after retrain <= {MEMORY_BAR_MB:g} MB above before":
            result["rss_mb_after"] is not None and result["rss_mb_after"] - result["rss_mb_before"] <= MEMORY_BAR_MB,
        "a verdict": result["run"]["status"] == "succeeded",
        "typographic_accuracy >= 0.85": active["typographic_accuracy"] >= 0.85,
        "clean drop <= 1 point": active["clean_accuracy"] >= base["clean_accuracy"] - 0.01,
        "no predict errors": not sum(result[key]["errors"] for key in ("warmup", "predict_idle",
                                                                       "predict_during_retrain", "predict")
                                     if key in result),
    }


if __name__ == "__main__":
    raise SystemExit(main())
