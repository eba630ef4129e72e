"""Command line: ``python -m poclip COMMAND ...`` (``python -m poclip --help`` lists the commands).

Each command prints a short summary on stdout, or one JSON object with ``--json``; progress goes to stderr. Every
argument is checked before anything is loaded: a mistake ends the command at once with one ``error: ...`` line on
stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from poclip.argtypes import DATA_FORMS, DataSource, Parser, at_least, data_source, existing_file, positive, template
from poclip.errors import UserError
from poclip.settings import settings_table

STARTED = time.perf_counter()  # a training child reports its start-up (imports included) from here


def _pretrain(args: argparse.Namespace) -> dict:
    from poclip.engine.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(out=Path(args.out), steps=args.steps, batch_size=args.batch_size,
                         pool_size=args.pool_size, seed=args.seed, workers=args.workers)
    return pretrain(cfg)


def _encoder_and_head(model: str | None, head: str | None):
    """Load the backbone (by default the one the head was trained on) and the head, if any."""
    from poclip.engine.models import load_model
    from poclip.engine.policy import load_head, read_head_metadata

    if head is None:
        return load_model(model or "bundled"), None
    meta = read_head_metadata(head)
    encoder = load_model(model or meta["backbone"])
    return encoder, load_head(head, encoder)


def _cache(args: argparse.Namespace, encoder):
    from poclip.engine.embed_cache import EmbeddingCache

    return EmbeddingCache(encoder, args.cache_dir) if getattr(args, "cache_dir", None) else None


def _load_dataset(data: DataSource, split: str):
    """An ``imagefolder``, ``disk`` (``save_to_disk``) or ``hf`` source as a ``datasets.Dataset``."""
    import datasets

    if data.kind == "disk":
        loaded = datasets.load_from_disk(data.where)
        return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    if data.kind == "imagefolder":
        return datasets.load_dataset("imagefolder", data_dir=data.where, split=split)
    return datasets.load_dataset(data.where, split=split)


def _check_eval(args: argparse.Namespace) -> None:
    # The real photos take any head and t; the synthetic set alone evaluates one attack setting of the base model.
    if args.data.kind == "distill-wild" or (args.data.kind == "synth" and args.head is None and args.t is None):
        return
    if args.attack != "random":
        raise UserError("--head, --t and dataset evaluation report clean and attacked accuracy: use --attack random")
    if args.data.kind != "synth" and args.family != "paper":
        raise UserError("--family applies to --data synth; datasets are attacked in the paper's style")


def _eval(args: argparse.Namespace) -> dict:
    _check_eval(args)
    from poclip.engine.evaluate import embed_dataset_eval, embed_synth_eval, evaluate_policy, evaluate_synth

    encoder, policy = _encoder_and_head(args.model, args.head)
    t = 1.0 if args.t is None else args.t
    if args.data.kind == "distill-wild":
        from poclip.engine.photo_eval import evaluate_photos, format_table

        result = evaluate_photos(encoder, policy, t, args.template)
        result["head"] = args.head
        print(format_table(result), file=sys.stderr)
        return result
    if args.data.kind == "synth" and policy is None and args.t is None:
        result = evaluate_synth(encoder, n=args.n, seed=args.seed, attack=args.attack, batch_size=args.batch_size)
        result["model"] = encoder.spec
        return result
    if args.data.kind == "synth":
        data = embed_synth_eval(encoder, args.n, args.seed, _cache(args, encoder), family=args.family)
    else:
        dataset = _load_dataset(args.data, args.split)
        data = embed_dataset_eval(encoder, dataset, args.label_column, args.image_column, args.n, args.seed,
                                  args.template, _cache(args, encoder), keep_images=policy is not None)
    result = evaluate_policy(policy, data, t, encoder=encoder)
    result.update(data=str(args.data), seed=args.seed, attack="random", family=args.family, model=encoder.spec,
                  head=args.head)
    if policy is not None:
        base = evaluate_policy(None, data, encoder=encoder)
        result["base"] = {k: base[k] for k in ("clean_accuracy", "typographic_accuracy", "attack_success_rate")}
    return result


def _train(args: argparse.Namespace) -> dict:
    from poclip.engine.config import RECIPES, TrainConfig
    from poclip.options import set_values

    # Options left unset keep TrainConfig's defaults (and the recipe's invariance), so they are defined once.
    chosen = {"invariance": float(RECIPES[args.recipe]["invariance"]), **set_values(args, TrainConfig)}
    cfg = TrainConfig(show_progress=not args.no_progress, **chosen)
    cfg.check()  # a bad head spec is refused before the model loads

    from poclip.engine.evaluate import embed_synth_eval, evaluate_policy
    from poclip.engine.models import load_model
    from poclip.engine.policy import Policy
    from poclip.engine.preferences import synth_clean, synth_preferences
    from poclip.engine.train import train

    encoder = load_model(args.model)
    prefs = synth_preferences(args.pairs, cfg.seed, styles=str(RECIPES[args.recipe]["styles"]))
    clean = synth_clean(args.pairs if args.clean is None else args.clean, cfg.seed)
    policy = Policy(encoder, cfg.head)
    cache = policy.make_cache(args.cache_dir)
    result = train(encoder, prefs, clean, cfg, out=args.out, cache=cache, policy=policy)
    report = {
        "model": encoder.spec, "head": cfg.head, "loss": cfg.loss, "recipe": args.recipe, "beta": cfg.resolved_beta,
        "lambda": cfg.resolved_lambda, "invariance": cfg.invariance, "ortho": cfg.ortho, "lr": cfg.resolved_lr,
        "epochs": cfg.resolved_epochs, "batch_size": cfg.resolved_batch_size, "pairs": len(prefs),
        "clean": len(clean), "out": str(result.path) if result.path else None, "steps": result.steps,
        "embed_seconds": result.embed_seconds, "train_seconds": result.train_seconds,
        "metrics": {k: round(v, 5) for k, v in result.metrics.items()},
    }
    if args.eval_n:
        data = embed_synth_eval(encoder, args.eval_n, args.eval_seed, _cache(args, encoder))
        aligned = evaluate_policy(result.policy, data)
        base = evaluate_policy(None, data, encoder=encoder)
        keys = ("clean_accuracy", "typographic_accuracy", "attack_success_rate", "kl_drift")
        report["eval"] = {"n": args.eval_n, "seed": args.eval_seed, "base": {k: base[k] for k in keys},
                          "aligned": {k: aligned[k] for k in keys}}
    return report


def _sweep_t(args: argparse.Namespace) -> dict:
    if args.t_max < args.t_min:
        raise UserError(f"--t-max ({args.t_max}) must not be below --t-min ({args.t_min})")
    from poclip.engine.evaluate import embed_synth_eval, evaluate_policy, sweep_strength

    encoder, policy = _encoder_and_head(args.model, args.head)
    data = embed_synth_eval(encoder, args.n, args.seed, _cache(args, encoder), family=args.family)
    count = int(round((args.t_max - args.t_min) / args.t_step)) + 1
    ts = [round(args.t_min + k * args.t_step, 6) for k in range(count)]
    rows = sweep_strength(policy, data, ts)
    base = evaluate_policy(None, data, encoder=encoder)
    result = {"model": encoder.spec, "head": args.head, "n": args.n, "seed": args.seed, "sweep": rows,
              "base": {k: base[k] for k in ("clean_accuracy", "typographic_accuracy", "attack_success_rate")}}
    if args.plot:
        from poclip.engine.plots import plot_sweep

        result["plot"] = str(plot_sweep(rows, args.plot, "t", {"clean_accuracy": "clean",
                                                                "typographic_accuracy": "attacked"},
                                        f"Strength sweep ({args.head})"))
    return result


def _disentangle(args: argparse.Namespace) -> dict:
    from poclip.engine.disentangle import DisentangleConfig, run_disentangle
    from poclip.engine.models import load_model

    encoder = load_model(args.model)
    cfg = DisentangleConfig(pairs=args.pairs, clean=args.pairs, n_eval=args.n, eval_seed=args.seed)
    result = run_disentangle(encoder, cfg, _cache(args, encoder))
    result.pop("policy")
    result["model"] = encoder.spec
    if args.plot:
        from poclip.engine.plots import plot_sweep

        result["plot"] = str(plot_sweep(result["sweep"], args.plot, "t",
                                        {"attribute_accuracy": "tone accuracy", "shape_accuracy": "shape accuracy"},
                                        "Concept disentanglement (tone), t sweep", chance=0.5))
    return result


def _starter(args: argparse.Namespace) -> dict:
    from poclip.engine.models import load_model
    from poclip.engine.starter import CLEAN, PAIRS, SEED, build_starter

    encoder = load_model(args.model)
    result = build_starter(encoder, args.out, PAIRS if args.pairs is None else args.pairs,
                           CLEAN if args.clean is None else args.clean, SEED if args.seed is None else args.seed,
                           args.cache_dir)
    return {"model": encoder.spec, **result}


def _examples(args: argparse.Namespace) -> dict:
    import random

    from poclip.world import synth

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for k, shape in enumerate(synth.SHAPES[: args.n]):
        path = out / f"synthetic_{shape}.png"
        synth.draw_scene(synth.sample_scene(random.Random(f"example:{k}"), shape=shape), 224).save(path)
        written.append(str(path))
    return {"written": written}


def _worker(args: argparse.Namespace) -> dict:
    import os

    from poclip.settings import Settings

    settings = Settings.from_env()  # a bad variable is refused before the model loads
    if args.nice and hasattr(os, "nice"):  # not on Windows
        os.nice(args.nice)  # before any thread starts: Linux keeps a niceness per thread, and new ones inherit it
    # Before torch loads OpenMP: its threads sleep at a barrier instead of spinning. Where the cores are busy
    # (serving, other work) spinning tripled a training step's CPU time and made it slower than one thread.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from annotation_db import open_repository
    from poclip.app.service import repository_config
    from poclip.app.worker import run_worker

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return run_worker(settings, open_repository(settings, repository_config(settings)), interval_s=args.interval,
                      once=args.once, run_id=args.run_id, prepare=args.prepare, parent=args.parent, started=STARTED)


def _defenses_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="bundled", help="the backbone to build them on (the app's POCLIP_MODEL)")
    p.add_argument("--cache-dir", required=True, help="where the builds are kept (the app reads DATA_DIR/defenses)")
    p.add_argument("--only", default="", help="comma-separated defenses (default: every peer)")
    p.add_argument("--nice", type=at_least(0), default=0, help="lower this process's CPU priority by this much")


def _defenses(args: argparse.Namespace) -> dict:
    import os

    if args.nice and hasattr(os, "nice"):
        os.nice(args.nice)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the worker: sleep, not spin, beside the app

    from poclip.engine.defenses import build_peers, check_peers
    from poclip.engine.models import load_model

    names = check_peers([n.strip() for n in args.only.split(",") if n.strip()] or None)  # before the model loads
    built = build_peers(load_model(args.model), args.cache_dir, names)
    return {"model": args.model, "built": built}


def _pretrain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="assets/models/bundled")
    p.add_argument("--steps", type=at_least(1), default=4000)
    p.add_argument("--batch-size", type=at_least(1), default=128)
    p.add_argument("--pool-size", type=at_least(1), default=160_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=at_least(0), default=2)


def _eval_args(p: argparse.ArgumentParser) -> None:
    from poclip.world.styles import ATTACK_FAMILIES
    from poclip.world.synth import DEFAULT_TEMPLATE

    p.add_argument("--model", default=None,
                   help="model spec (bundled, ViT-B-32:openai, local-dir:PATH, ...); default: the head's "
                        "backbone, else bundled")
    p.add_argument("--data", type=data_source, default=DataSource("synth"), help=DATA_FORMS)
    p.add_argument("--n", type=at_least(1), default=1000)
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--attack", default="random", choices=["none", "random"])
    p.add_argument("--batch-size", type=at_least(1), default=128)
    p.add_argument("--head", type=existing_file, default=None, help="an aligned head checkpoint (.safetensors)")
    p.add_argument("--t", type=float, default=None, help="strength of the head (default 1)")
    p.add_argument("--split", default="train", help="dataset split (datasets only)")
    p.add_argument("--label-column", default="label")
    p.add_argument("--image-column", default="image")
    p.add_argument("--template", type=template, default=DEFAULT_TEMPLATE)
    p.add_argument("--family", default="paper", choices=list(ATTACK_FAMILIES),
                   help="which text the synthetic pictures carry (default: the paper's attack)")
    p.add_argument("--cache-dir", default=None, help="embedding cache folder (default: in memory)")


def _train_args(p: argparse.ArgumentParser) -> None:
    from poclip.engine.config import DEFAULT_RECIPE, RECIPES, TrainConfig
    from poclip.options import add_flags

    p.add_argument("--model", default="bundled", help="model spec (bundled, ViT-B-32:openai, local-dir:PATH, ...)")
    p.add_argument("--pairs", type=at_least(1), default=1000, help="synthetic preference pairs")
    p.add_argument("--clean", type=at_least(0), default=None, help="clean regularization pictures (default = --pairs)")
    add_flags(p, TrainConfig)
    p.add_argument("--recipe", default=DEFAULT_RECIPE, choices=list(RECIPES),
                   help="invariant: pairs from the text-style family plus the text-invariance term; paper: the "
                        "paper's pairs (one wrong word) and objective")
    p.add_argument("--out", default=None, help="write the head here (.safetensors)")
    p.add_argument("--cache-dir", default=None,
                   help="cache folder for embeddings and tower activations (default: in memory)")
    p.add_argument("--eval-n", type=at_least(0), default=500, help="held-out pictures to evaluate on (0 = skip)")
    p.add_argument("--eval-seed", type=int, default=2024)
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _sweep_t_args(p: argparse.ArgumentParser) -> None:
    from poclip.world.styles import ATTACK_FAMILIES

    p.add_argument("--head", type=existing_file, required=True)
    p.add_argument("--model", default=None, help="default: the backbone the head was trained on")
    p.add_argument("--n", type=at_least(1), default=1000)
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--t-min", type=float, default=-2.0)
    p.add_argument("--t-max", type=float, default=1.5)
    p.add_argument("--t-step", type=positive, default=0.25)
    p.add_argument("--family", default="paper", choices=list(ATTACK_FAMILIES), help="the text on the pictures")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--plot", default=None, help="write a PNG plot here")


def _disentangle_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="bundled")
    p.add_argument("--pairs", type=at_least(1), default=1000)
    p.add_argument("--n", type=at_least(1), default=1000)
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--plot", default=None, help="write a PNG plot here")


def _starter_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="bundled")
    p.add_argument("--out", default="assets/heads/starter.safetensors")
    # Unset: the shipped head's own (poclip.engine.starter.PAIRS, CLEAN, SEED).
    p.add_argument("--pairs", type=at_least(1), default=None)
    p.add_argument("--clean", type=at_least(0), default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--cache-dir", default=None)


def _examples_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="assets/examples")
    p.add_argument("--n", type=at_least(1), default=6)


def _worker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--once", action="store_true", help="run the queued run (if any) and exit")
    p.add_argument("--interval", type=positive, default=2.0, help="seconds between polls")
    p.add_argument("--run", dest="run_id", type=at_least(1), default=None,
                   help="execute this queued run, then exit (the app's trainer starts a child process with it for "
                        "each run)")
    p.add_argument("--prepare", action="store_true", help="put what every retrain reuses (the gate's pictures, the "
                   "replayed pairs) into the embedding cache, then exit (the loop does this first)")
    p.add_argument("--parent", type=at_least(1), default=None,
                   help="stop the run and exit when the process with this pid (the app) exits")
    p.add_argument("--nice", type=at_least(0), default=0, help="lower this process's CPU priority by this much")


class Command(NamedTuple):
    """A sub-command: its one-line help, what declares its arguments, what runs it."""

    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], dict | str]
    json: bool = True  # whether it takes --json (its result is an object, not text)


COMMANDS: dict[str, Command] = {
    "pretrain": Command("train the bundled CLIP on the synthetic world", _pretrain_args, _pretrain),
    "eval": Command("zero-shot accuracy, clean or under typographic attack, base or aligned", _eval_args, _eval),
    "train": Command("train an alignment head on synthetic typographic pairs", _train_args, _train),
    "sweep-t": Command("clean and attacked accuracy of a head across strengths t", _sweep_t_args, _sweep_t),
    "disentangle": Command("concept disentanglement (colour tone), t sweep", _disentangle_args, _disentangle),
    "starter": Command("train the starter head a fresh app serves", _starter_args, _starter),
    "examples": Command("write the example pictures shown in the app", _examples_args, _examples),
    "worker": Command("run the trainer as its own process against DATABASE_URL", _worker_args, _worker),
    "defenses": Command("build the peer defenses (prompts, ablation, prefix, ocr_mask, paint) on a backbone, "
                        "cached for the app and bench/peers.py", _defenses_args, _defenses),
    "settings": Command("print the environment variables the app reads, as a Markdown table (README)",
                        lambda p: None, lambda args: settings_table(), json=False),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser: every command with its one-line help (listed by ``--help``).

    Args:
        only: declare the arguments of this command alone (the one being run; "" for none): another command's
            declarations may import the engine, which takes seconds. None declares every command's arguments.
    """
    parser = Parser(prog="python -m poclip", description=__doc__.split("\n\n")[0],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help)
        p.set_defaults(run=command.run, json=False)
        if only in (None, name):
            command.arguments(p)
            if command.json:
                p.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    return parser


def _command(argv: Sequence[str]) -> str | None:
    # The first word that is not an option names the command (the only top-level options are flags).
    return next((arg for arg in argv if not arg.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    """Run one command. Returns the exit status: 0, or 2 after one ``error: ...`` line on stderr."""
    from poclip.summary import summary

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser(_command(argv) or "").parse_args(argv)
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr)
        result = args.run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if isinstance(result, str):
        print(result)
    else:
        print(json.dumps(result) if args.json else summary(result))
    return 0
