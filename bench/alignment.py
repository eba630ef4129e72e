"""Benchmark: the generalization table (attack families x heads and recipes), the strength sweep, and speed.

    python bench/alignment.py --json bench/results/alignment.json     # the published numbers
    python bench/alignment.py --speed-only                            # only the retrain / predict timings

One run, same data and seeds for every column: 1,000 training pairs and 1,000 clean pictures from the
training streams (``pairs:0:i``, ``clean:0:i``), 1,000 held-out evaluation pictures (``eval:2024:i``, never
seen in training) written on with each attack family of :data:`poclip.world.styles.ATTACK_FAMILIES`
(text seeds ``eval-text:...``, disjoint from training; the held-out font and the neutral evaluation words are
never used by training). Columns: the base model, the linear head (CE / DPO / KTO on the paper's pairs, DPO with
the invariant recipe), the projection head with the invariant recipe, and the tower head :data:`TOWER_HEAD` (DPO /
KTO on the paper's pairs, DPO on the style family without and with the text-invariance term, KTO with both), and
``last_blocks:1`` with DPO, the invariant recipe and its former settings (lr 1e-3, 10 epochs of 128), and
``last_blocks:3`` with DPO and the invariant recipe (one block more than the default). ``--pairs`` and
``--clean`` change how much training data every column gets, for a data-scaling point. Train
seconds are the loop on warm caches (inputs cached, as in the app), on ``--threads`` CPU threads; speed figures are
medians of repeated runs in this process. The machine is shared, so seconds are noisy; accuracies are deterministic.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from poclip.engine.config import DEFAULT_HEAD, RECIPES, TrainConfig  # noqa: E402
from poclip.engine.embed_cache import EmbeddingCache  # noqa: E402
from poclip.engine.evaluate import embed_synth_eval, evaluate_policy, sweep_strength  # noqa: E402
from poclip.engine.models import load_model  # noqa: E402
from poclip.engine.policy import Policy  # noqa: E402
from poclip.engine.preferences import synth_clean, synth_preferences  # noqa: E402
from poclip.engine.train import train  # noqa: E402
from poclip.world import synth  # noqa: E402
from poclip.world.styles import ATTACK_FAMILIES  # noqa: E402

TOWER_HEAD = "last_blocks:2"  # the tower columns: the last two residual blocks and the attention pool
# column -> (config, recipe). "paper" = the paper's pairs (one wrong word) and objective; "family" = pairs from
# the text-style family, no invariance term; "invariant" = both ingredients (the default recipe).
COLUMNS: dict[str, tuple[TrainConfig, str]] = {
    "linear CE": (TrainConfig(head="linear", loss="ce", invariance=0.0), "paper"),
    "linear DPO": (TrainConfig(head="linear", loss="dpo", invariance=0.0), "paper"),
    "linear KTO": (TrainConfig(head="linear", loss="kto", invariance=0.0), "paper"),
    "linear DPO invariant": (TrainConfig(head="linear", loss="dpo"), "invariant"),
    "projection DPO invariant": (TrainConfig(head="projection", loss="dpo"), "invariant"),
    "tower DPO": (TrainConfig(head=TOWER_HEAD, loss="dpo", invariance=0.0), "paper"),
    "tower KTO": (TrainConfig(head=TOWER_HEAD, loss="kto", invariance=0.0), "paper"),
    "tower DPO family": (TrainConfig(head=TOWER_HEAD, loss="dpo", invariance=0.0), "family"),
    "tower DPO invariant": (TrainConfig(head=TOWER_HEAD, loss="dpo"), "invariant"),
    "last_blocks:1 DPO invariant": (TrainConfig(head="last_blocks:1", loss="dpo", lr=1e-3, epochs=10, batch_size=128),
                                    "invariant"),
    "tower KTO invariant": (TrainConfig(head=TOWER_HEAD, loss="kto"), "invariant"),
    # One block more than the default: better figures, a retrain over the 60 s budget on 2 cores.
    "last_blocks:3 DPO invariant": (TrainConfig(head="last_blocks:3", loss="dpo"), "invariant"),
}
# TrainConfig()'s head and recipe; the checks below are the issue's bars on it
DEFAULT_COLUMN = next(name for name, (c, r) in COLUMNS.items() if c.head == DEFAULT_HEAD and r == "invariant"
                      and c.loss == "dpo")
SWEEP_TS = [-1.0, -0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5]


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def fill(cache, prefs, clean):
    """Every head input a retrain needs (texted pairs, their clean selves, clean pictures bare and texted)."""
    cache.embed([p.image for p in prefs], [p.attack for p in prefs])
    cache.embed([p.image for p in prefs])
    cache.embed([c.image for c in clean])
    cache.embed([c.image for c in clean], [c.attack for c in clean])
    return cache


def _score(policy, data: dict, encoder) -> dict:
    row = {}
    for family, d in data.items():
        r = evaluate_policy(policy, d, encoder=encoder)
        row[family] = r["typographic_accuracy"]
        if family == "paper":
            row.update(clean_accuracy=r["clean_accuracy"], kl_drift=r["kl_drift"],
                       attack_success_rate=r["attack_success_rate"])
    return row


def generalization_table(encoder, args) -> dict:
    pairs = {"paper": synth_preferences(args.pairs, args.train_seed, styles="paper"),
             "family": synth_preferences(args.pairs, args.train_seed, styles="family")}
    pairs["invariant"] = pairs["family"]
    clean = synth_clean(args.clean, args.train_seed)
    started = time.perf_counter()
    embed_cache = EmbeddingCache(encoder)
    data = {f: embed_synth_eval(encoder, args.n, args.eval_seed, embed_cache, family=f) for f in args.families}
    print(f"embedded {len(data)} x {args.n} evaluation pictures in {time.perf_counter() - started:.1f} s",
          file=sys.stderr)
    table = {"base": {**_score(None, data, encoder), "train_seconds": 0.0}}
    caches, policies, results = {}, {}, {}
    for name in args.columns:
        cfg, recipe = COLUMNS[name]
        cfg = replace(cfg, seed=args.train_seed)
        prefs = pairs[RECIPES[recipe]["styles"]] if recipe in RECIPES else pairs[recipe]
        cut = Policy(encoder, cfg.head)
        cache = caches.setdefault(cut.cut, cut.make_cache())
        warm = time.perf_counter()  # fill the cache outside the timed run, as a retrain in the app finds it
        fill(cache, prefs, clean)
        warm = time.perf_counter() - warm
        result = train(encoder, prefs, clean, cfg, cache=cache)
        row = _score(result.policy, data, encoder)
        table[name] = {**row, "train_seconds": round(result.train_seconds, 2),
                       "prepare_seconds": round(result.embed_seconds, 2), "cache_fill_seconds": round(warm, 2),
                       "steps": result.steps}
        policies[name], results[name] = result.policy, result
        print(f"{name}: paper {row['paper']:.3f} clean {row['clean_accuracy']:.3f} in {result.train_seconds:.1f} s",
              file=sys.stderr)
    sweeps = {name: sweep_strength(policies[name], data["paper"], SWEEP_TS)
              for name in ("linear DPO", DEFAULT_COLUMN) if name in policies}
    return {"table": table, "sweeps": sweeps, "data": data, "pairs": pairs, "clean": clean, "caches": caches}


def checks(table: dict) -> dict:
    """The issue's bars on the default column, as booleans with the measured numbers."""
    d, base = table.get(DEFAULT_COLUMN), table["base"]
    if d is None:
        return {}
    ce = table.get("linear CE", {}).get("kl_drift")
    fam = [f for f in ATTACK_FAMILIES if f in d and f not in ("paper",)]
    out = {
        "paper-style typographic >= 0.92": d["paper"] >= 0.92,
        "clean drop <= 0.5 point": d["clean_accuracy"] >= base["clean_accuracy"] - 0.005,
        "true word >= clean - 2 points": d.get("true_word", 1) >= d["clean_accuracy"] - 0.02,
        "true word never below base": d.get("true_word", 1) >= base.get("true_word", 0),
        "neutral word >= clean - 3 points": d.get("neutral_word", 1) >= d["clean_accuracy"] - 0.03,
        "several words >= 0.85": d.get("several_words", 1) >= 0.85,
        # A font training never used may be easier than the training fonts; only a drop would be a failure.
        "held-out font at most 3 points below training fonts": d.get("held_out_font", d["paper"]) >= d["paper"] - 0.03,
        "retrain <= 60 s": d["train_seconds"] <= 60,
        "families measured": fam,
    }
    if ce is not None:
        out["KL drift <= CE's / 4"] = d["kl_drift"] <= ce / 4
    return out


def speed(encoder, args, bench: dict | None) -> dict:
    """Median retrain seconds of the default head and recipe on warm caches, and predict timings."""
    cfg = replace(TrainConfig(), seed=args.train_seed)
    policy = Policy(encoder, cfg.head)
    if bench is None:
        prefs, clean = synth_preferences(args.pairs, args.train_seed), synth_clean(args.clean, args.train_seed)
        cache = fill(policy.make_cache(), prefs, clean)
    else:
        prefs, clean, cache = bench["pairs"]["invariant"], bench["clean"], bench["caches"][policy.cut]
    retrain = median_seconds(lambda: train(encoder, prefs, clean, cfg, cache=cache), args.repeats)
    linear = replace(cfg, head="linear")
    lcache = fill(Policy(encoder, "linear").make_cache(), prefs, clean)
    retrain_linear = median_seconds(lambda: train(encoder, prefs, clean, linear, cache=lcache), args.repeats)
    pictures = [p.image for p in prefs[:256]]
    encode = median_seconds(lambda: encoder.encode_images(pictures), args.repeats)
    labels = list(synth.SHAPES)
    trained = train(encoder, prefs[:64], clean[:64], replace(cfg, epochs=1), cache=cache).policy
    image = [prefs[0].image]
    trained.compare(image, labels, t=0.5)  # warm up (the slider's strength copy is cached, as in the app)
    bare, both = [], []
    for _ in range(args.vit_repeats):  # interleaved so both see the same machine state
        bare.append(median_seconds(lambda: encoder.encode_images(image), 1))
        both.append(median_seconds(lambda: trained.compare(image, labels, t=0.5), 1))
    return {
        "retrain_head": cfg.head, "retrain_seconds_median": round(retrain, 3),
        "retrain_linear_seconds_median": round(retrain_linear, 3),
        "retrain_pairs": len(prefs), "retrain_clean": len(clean),
        "bundled_images_per_second": round(len(pictures) / encode, 1),
        "bundled_bare_encode_ms": round(1000 * statistics.median(bare), 2),
        "bundled_base_and_aligned_ms": round(1000 * statistics.median(both), 2),
    }


def crowd_retrain(encoder, args) -> dict:
    """A retrain as the app runs one (:class:`poclip.app.worker.Trainer`), on the app's default head for this
    backbone and device (:func:`~poclip.engine.config.default_head`), into a fresh on-disk cache.

    First what the app prepares once while idle (``prepare_gate_s``: the gate's pictures with each of its attack
    families; ``prepare_replay_s``: the replayed synthetic pairs and clean pictures); then the run on ``--crowd``
    labels: each judgment with its ``POCLIP_AUGMENT`` (4) text variants and its clean picture, plus the replay
    (``embed_s``: the crowd's pictures through the tower, ``train_s``: the loop, ``gate_s``: candidate, live and
    base scored on the gate's pictures). ``run_s`` is request to verdict on the prepared cache; ``train_step_s``
    is one training step of each tower head on a batch of 64, for what the other heads would cost.
    """
    import tempfile

    from poclip.app.retrain.data import synthetic, text_invariance_pairs
    from poclip.app.retrain.evaluation import GateEvaluation
    from poclip.app.retrain.training import replay_epochs
    from poclip.app.seeding import annotation_text
    from poclip.app.worker import prepare_retrain
    from poclip.engine.config import default_head
    from poclip.engine.preferences import CleanImage, Preference
    from poclip.settings import Settings

    defaults = Settings()
    head = default_head(encoder)
    out: dict = {"head": head, "crowd_labels": args.crowd, "replay_pairs": defaults.replay_pairs,
                 "gate_pictures_per_family": defaults.gate_eval_n, "gate_families": len(defaults.gate_families)}
    with tempfile.TemporaryDirectory() as cache_dir:
        policy = Policy(encoder, head)
        gate = GateEvaluation(encoder, defaults.gate_eval_n, Path(cache_dir), defaults.gate_families)
        prepared = prepare_retrain(policy, gate, defaults.replay_pairs, Path(cache_dir))  # as the app, when idle
        out.update(prepare_gate_s=prepared["gate"], prepare_replay_s=prepared["replay"])

        prefs, clean = [], []
        for i in range(args.crowd):  # the app's annotation items, labelled truthfully
            scene, text = annotation_text(10_000 + i)
            picture = synth.draw_scene(scene)
            judged = Preference(picture, scene.shape, text.wrong[0] if text.wrong else None, tuple(synth.SHAPES),
                                attack=text.attack)
            prefs += [judged, *text_invariance_pairs(judged, 10_000 + i, defaults.augment_attacks)]
            clean.append(CleanImage(picture, tuple(synth.SHAPES)))
        more_replay, more_clean = synthetic(defaults.replay_pairs, len(clean))
        cfg = TrainConfig(head=head)
        cfg = replace(cfg, epochs=replay_epochs(cfg.resolved_epochs, len(prefs), len(more_replay)))
        started = time.perf_counter()
        result = train(encoder, prefs + more_replay, clean + more_clean, cfg, cache=policy.make_cache(cache_dir))
        gate_started = time.perf_counter()
        gate.evaluate(result.policy)  # the candidate
        gate.evaluate(None)  # the live model: no head yet on this backbone; the base's figures are prepared
        gate.base_metrics()
        out.update(pairs=len(prefs) + len(more_replay), epochs=cfg.epochs, steps=result.steps,
                   embed_s=round(result.embed_seconds, 1), train_s=round(result.train_seconds, 1),
                   gate_s=round(time.perf_counter() - gate_started, 1),
                   run_s=round(time.perf_counter() - started, 1))
    pixels = encoder.pixels([p.image for p in synthetic(64)[0]])
    text = encoder.classifier(list(synth.SHAPES))
    steps = {}
    for name in ("last_blocks:2", "last_blocks:1", "projection"):
        candidate = Policy(encoder, name)
        x = encoder.trunk_activations(pixels, candidate.spec.blocks)
        optimizer = torch.optim.AdamW(candidate.trainable_parameters(), lr=1e-5)

        def step(policy=candidate, x=x, optimizer=optimizer) -> None:
            loss = policy.logits(x, text, training=True).logsumexp(1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        steps[name] = round(median_seconds(step, 3), 3)
    out["train_step_s"] = steps
    return out


def markdown(result: dict) -> str:
    table = result["generalization"]
    columns = list(table)
    families = [f for f in ATTACK_FAMILIES if f in table["base"]]
    lines = ["| attack family | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for f in [*families, "clean_accuracy", "kl_drift", "train_seconds"]:
        fmt = "{:.4f}" if f == "kl_drift" else ("{:.1f}" if f == "train_seconds" else "{:.3f}")
        lines.append(f"| {f} | " + " | ".join(fmt.format(table[c].get(f, float("nan"))) for c in columns) + " |")
    if result.get("sweeps"):
        names = list(result["sweeps"])
        lines += ["", "| t | " + " | ".join(f"{n} clean / paper-style" for n in names) + " |",
                  "|---|" + "---|" * len(names)]
        for k, t in enumerate(SWEEP_TS):
            rows = [result["sweeps"][n][k] for n in names]
            cells = [f"{r['clean_accuracy']:.3f} / {r['typographic_accuracy']:.3f}" for r in rows]
            lines.append(f"| {t:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--clean", type=int, default=1000)
    parser.add_argument("--n", type=int, default=1000, help="held-out evaluation pictures per attack family")
    parser.add_argument("--train-seed", type=int, default=0)
    parser.add_argument("--eval-seed", type=int, default=2024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vit-repeats", type=int, default=15)
    parser.add_argument("--columns", default=",".join(COLUMNS), help="comma-separated subset of the columns")
    parser.add_argument("--families", default=",".join(ATTACK_FAMILIES), help="comma-separated attack families")
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--speed-only", action="store_true",
                        help="only the timings (with a backbone other than the bundled one: a crowd retrain as the "
                             "app runs it, on its default head for the backbone on the CPU)")
    parser.add_argument("--crowd", type=int, default=200, help="crowd labels of the --speed-only crowd retrain")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--plot-dir", default=None, help="write the t-sweep plots here")
    args = parser.parse_args()
    args.columns = [c.strip() for c in args.columns.split(",") if c.strip()]
    args.families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [c for c in args.columns if c not in COLUMNS] + [f for f in args.families if f not in ATTACK_FAMILIES]
    if unknown or "paper" not in args.families:
        parser.error(f"unknown columns/families {unknown} (the paper family is always needed)")
    torch.set_num_threads(args.threads)
    encoder = load_model(args.model, device=torch.device("cpu"))
    if args.speed_only and encoder.model_spec.name != "bundled":
        # A real-size backbone: the retrain the app would run, and what its time goes to.
        result = {"model": encoder.spec, "threads": args.threads, "crowd_retrain": crowd_retrain(encoder, args)}
        print(json.dumps(result, indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        return 0
    if args.speed_only:
        result = {"model": encoder.spec, "threads": args.threads, "speed": speed(encoder, args, None)}
        print(json.dumps(result, indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        return 0
    bench = generalization_table(encoder, args)
    result = {
        "model": encoder.spec, "pairs": args.pairs, "clean": args.clean, "n_eval": args.n,
        "eval_seed": args.eval_seed, "train_seed": args.train_seed, "threads": args.threads,
        "default": {"column": DEFAULT_COLUMN, "head": TrainConfig().head, "recipe": "invariant",
                    "loss": TrainConfig().loss, "invariance": TrainConfig().invariance},
        "generalization": bench["table"], "sweeps": bench["sweeps"], "checks": checks(bench["table"]),
        "configs": {name: {"head": c.head, "loss": c.loss, "recipe": r, "beta": c.resolved_beta,
                           "lambda": c.resolved_lambda, "invariance": c.invariance, "lr": c.resolved_lr,
                           "epochs": c.resolved_epochs, "batch_size": c.resolved_batch_size}
                    for name, (c, r) in COLUMNS.items() if name in args.columns},
    }
    if not args.no_speed:
        result["speed"] = speed(encoder, args, bench)
    print(markdown(result))
    print(json.dumps({k: result[k] for k in ("checks", *(("speed",) if "speed" in result else ()))}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.plot_dir:
        from poclip.engine.plots import plot_sweep

        for name, rows in result["sweeps"].items():
            plot_sweep(rows, Path(args.plot_dir) / f"sweep_{name.lower().replace(' ', '_')}.png", "t",
                       {"clean_accuracy": "clean", "typographic_accuracy": "attacked"}, f"{name}: strength sweep")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
