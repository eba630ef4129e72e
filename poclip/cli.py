"""Command line: ``python -m poclip {pretrain,eval,train,sweep-t,disentangle,examples} ...``.

Each command prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


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


def _load_dataset(data: str, split: str):
    """``imagefolder:DIR``, ``disk:DIR`` (``save_to_disk``) or ``hf:NAME`` as a ``datasets.Dataset``."""
    import datasets

    kind, _, where = data.partition(":")
    if kind == "disk":
        loaded = datasets.load_from_disk(where)
        return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    if kind == "imagefolder":
        return datasets.load_dataset("imagefolder", data_dir=where, split=split)
    if kind == "hf":
        return datasets.load_dataset(where, split=split)
    raise SystemExit(f"--data {data!r}: use synth, distill-wild, imagefolder:DIR, disk:DIR or hf:NAME")


def _eval(args: argparse.Namespace) -> dict:
    from poclip.engine.evaluate import embed_dataset_eval, embed_synth_eval, evaluate_policy, evaluate_synth

    encoder, policy = _encoder_and_head(args.model, args.head)
    if args.data == "distill-wild":
        from poclip.engine.photo_eval import evaluate_photos, format_table

        result = evaluate_photos(encoder, policy, 1.0 if args.t is None else args.t, args.template)
        result["head"] = args.head
        print(format_table(result), file=sys.stderr)
        return result
    if args.data == "synth" and policy is None and args.t is None:
        result = evaluate_synth(encoder, n=args.n, seed=args.seed, attack=args.attack, batch_size=args.batch_size)
        result["model"] = encoder.spec
        return result
    if args.attack != "random":
        raise SystemExit("--head, --t and dataset evaluation report clean and attacked accuracy: use --attack random")
    if args.data == "synth":
        data = embed_synth_eval(encoder, args.n, args.seed, _cache(args, encoder), family=args.family)
    else:
        if args.family != "paper":
            raise SystemExit("--family applies to --data synth; datasets are attacked in the paper's style")
        dataset = _load_dataset(args.data, args.split)
        data = embed_dataset_eval(encoder, dataset, args.label_column, args.image_column, args.n, args.seed,
                                  args.template, _cache(args, encoder), keep_images=policy is not None)
    t = 1.0 if args.t is None else args.t
    result = evaluate_policy(policy, data, t, encoder=encoder)
    result.update(data=args.data, seed=args.seed, attack="random", family=args.family, model=encoder.spec,
                  head=args.head)
    if policy is not None:
        base = evaluate_policy(None, data, encoder=encoder)
        result["base"] = {k: base[k] for k in ("clean_accuracy", "typographic_accuracy", "attack_success_rate")}
    return result


def _train(args: argparse.Namespace) -> dict:
    from poclip.engine.evaluate import embed_synth_eval, evaluate_policy
    from poclip.engine.models import load_model
    from poclip.engine.policy import Policy
    from poclip.engine.preferences import synth_clean, synth_preferences
    from poclip.engine.train import RECIPES, TrainConfig, train

    if args.data != "synth":
        raise SystemExit(f"--data {args.data!r}: the command line trains on 'synth' pairs; the app trains on "
                         "the pairs people label")
    encoder = load_model(args.model)
    # Options left unset keep TrainConfig's defaults, so the recipe is defined in one place.
    chosen = {k: getattr(args, k) for k in ("head", "beta", "ortho", "optimizer", "lr", "epochs", "batch_size",
                                            "patience") if getattr(args, k) is not None}
    recipe = RECIPES[args.recipe]
    invariance = float(recipe["invariance"]) if args.invariance is None else args.invariance
    cfg = TrainConfig(loss=args.loss, reg_lambda=args.reg_lambda, invariance=invariance, average=args.average,
                      seed=args.seed, show_progress=not args.no_progress, **chosen)
    prefs = synth_preferences(args.pairs, args.seed, styles=str(recipe["styles"]))
    clean = synth_clean(args.pairs if args.clean is None else args.clean, args.seed)
    policy = Policy(encoder, cfg.head)
    cache = policy.make_cache(args.cache_dir)
    result = train(encoder, prefs, clean, cfg, out=args.out, cache=cache, policy=policy)
    report = {
        "model": encoder.spec, "head": cfg.head, "loss": cfg.loss, "recipe": args.recipe, "beta": cfg.resolved_beta,
        "lambda": cfg.resolved_lambda, "invariance": cfg.invariance, "ortho": cfg.ortho, "lr": cfg.resolved_lr,
        "epochs": cfg.resolved_epochs, "batch_size": cfg.resolved_batch_size, "pairs": len(prefs),
        "clean": len(clean),
        "out": str(result.path) if result.path else None, "steps": result.steps,
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
    import signal

    from annotation_db import open_repository
    from poclip.app.service import repository_config
    from poclip.app.worker import Trainer
    from poclip.engine.models import load_model
    from poclip.settings import Settings

    settings = Settings.from_env()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    repo = open_repository(settings, repository_config(settings))
    trainer = Trainer(settings, repo, load_model(settings.model_spec, settings))
    # SIGTERM (a supervisor stopping us) ends the loop between ticks, or aborts the run at its next step.
    signal.signal(signal.SIGTERM, lambda *_: trainer._stop.set())
    finished = []

    def report(run) -> None:
        finished.append({"run": run.id, "status": run.status, "version": run.version_id, "error": run.error})
        print(json.dumps(finished[-1]), file=sys.stderr, flush=True)

    try:
        trainer.loop(train=True, interval_s=args.interval, once=args.once, on_run=report)
    except KeyboardInterrupt:
        pass
    finally:
        repo.close()
    return {"runs": finished}


def build_parser() -> argparse.ArgumentParser:
    from poclip.engine.evaluate import ATTACK_FAMILIES
    from poclip.engine.losses import LOSS_NAMES
    from poclip.engine.train import DEFAULT_HEAD, DEFAULT_RECIPE, RECIPES
    from poclip.world.synth import DEFAULT_TEMPLATE

    parser = argparse.ArgumentParser(prog="python -m poclip", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="train the bundled CLIP on the synthetic world")
    p.add_argument("--out", default="assets/models/bundled")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--pool-size", type=int, default=160_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("eval", help="zero-shot accuracy, clean or under typographic attack, base or aligned")
    p.add_argument("--model", default=None,
                   help="model spec (bundled, ViT-B-32:openai, local-dir:PATH, ...); default: the head's "
                        "backbone, else bundled")
    p.add_argument("--data", default="synth",
                   help="synth, distill-wild (the bundled real photos), imagefolder:DIR, disk:DIR "
                        "(datasets.save_to_disk) or hf:NAME")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--attack", default="random", choices=["none", "random"])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--head", default=None, help="an aligned head checkpoint (.safetensors) to evaluate")
    p.add_argument("--t", type=float, default=None, help="strength of the head (default 1)")
    p.add_argument("--split", default="train", help="dataset split (datasets only)")
    p.add_argument("--label-column", default="label")
    p.add_argument("--image-column", default="image")
    p.add_argument("--template", default=DEFAULT_TEMPLATE)
    p.add_argument("--family", default="paper", choices=list(ATTACK_FAMILIES),
                   help="which text the synthetic pictures carry (default: the paper's attack)")
    p.add_argument("--cache-dir", default=None, help="embedding cache folder (default: in memory)")
    p.add_argument("--json", action="store_true", help="print one JSON object (the default output)")
    p.set_defaults(func=_eval)

    p = sub.add_parser("train", help="train an alignment head on synthetic typographic pairs")
    p.add_argument("--model", default="bundled")
    p.add_argument("--data", default="synth", choices=["synth"])
    p.add_argument("--pairs", type=int, default=1000)
    p.add_argument("--clean", type=int, default=None, help="clean regularization pictures (default = --pairs)")
    p.add_argument("--loss", default="dpo", choices=list(LOSS_NAMES))
    p.add_argument("--beta", type=float, default=None, help="default: DPO 0.5, IPO 0.05, KTO 0.3 (tuned)")
    p.add_argument("--lambda", dest="reg_lambda", type=float, default=None,
                   help="weight of the clean KL (default 0.3, IPO 1)")
    p.add_argument("--ortho", type=float, default=None, help="weight of ||W^T W - I||^2")
    p.add_argument("--head", default=None, help=f"linear, projection or last_blocks:K (default {DEFAULT_HEAD})")
    p.add_argument("--recipe", default=DEFAULT_RECIPE, choices=list(RECIPES),
                   help="invariant: pairs from the text-style family plus the text-invariance term; paper: the "
                        "paper's pairs (one wrong word) and objective")
    p.add_argument("--invariance", type=float, default=None,
                   help="weight of the text-invariance term (default: the recipe's, 1 or 0)")
    p.add_argument("--optimizer", default=None, choices=["adamax", "adamw"])
    p.add_argument("--lr", type=float, default=None, help="default per head: linear 0.05, tower heads 1e-3")
    p.add_argument("--epochs", type=int, default=None, help="default per head: linear 60, tower heads 10-12")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--patience", type=int, default=None)
    p.add_argument("--average", default=None, choices=["beta"], help="Beta moving average of the weights")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the head here (.safetensors)")
    p.add_argument("--cache-dir", default=None,
                   help="cache folder for embeddings and tower activations (default: in memory)")
    p.add_argument("--eval-n", type=int, default=500, help="held-out pictures to evaluate on (0 = skip)")
    p.add_argument("--eval-seed", type=int, default=2024)
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--json", action="store_true", help="print one JSON object (the default output)")
    p.set_defaults(func=_train)

    p = sub.add_parser("sweep-t", help="clean and attacked accuracy of a head across strengths t")
    p.add_argument("--head", required=True)
    p.add_argument("--model", default=None, help="default: the backbone the head was trained on")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--t-min", type=float, default=-2.0)
    p.add_argument("--t-max", type=float, default=1.5)
    p.add_argument("--t-step", type=float, default=0.25)
    p.add_argument("--family", default="paper", choices=list(ATTACK_FAMILIES), help="the text on the pictures")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--plot", default=None, help="write a PNG plot here")
    p.add_argument("--json", action="store_true", help="print one JSON object (the default output)")
    p.set_defaults(func=_sweep_t)

    p = sub.add_parser("disentangle", help="concept disentanglement (colour tone) with the strength knob")
    p.add_argument("--model", default="bundled")
    p.add_argument("--pairs", type=int, default=1000)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--plot", default=None, help="write a PNG plot here")
    p.add_argument("--json", action="store_true", help="print one JSON object (the default output)")
    p.set_defaults(func=_disentangle)

    p = sub.add_parser("starter", help="train the starter head a fresh app serves (default head and recipe)")
    p.add_argument("--model", default="bundled")
    p.add_argument("--out", default="assets/heads/starter.safetensors")
    # Unset: the shipped head's own (poclip.engine.starter.PAIRS, CLEAN, SEED: 8,000, 8,000, 0).
    p.add_argument("--pairs", type=int, default=None)
    p.add_argument("--clean", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--cache-dir", default=None)
    p.set_defaults(func=_starter)

    p = sub.add_parser("examples", help="write the example pictures shown in the app")
    p.add_argument("--out", default="assets/examples")
    p.add_argument("--n", type=int, default=6)
    p.set_defaults(func=_examples)

    p = sub.add_parser("worker", help="run the trainer as its own process against DATABASE_URL")
    p.add_argument("--once", action="store_true", help="run the queued run (if any) and exit")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between polls")
    p.set_defaults(func=_worker)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr)
    from poclip.errors import UserError

    try:
        result = args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=None))
    return 0
