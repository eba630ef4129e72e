"""Command line: ``python -m poclip {pretrain,eval,examples} ...``. Each command prints one JSON object."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _pretrain(args: argparse.Namespace) -> dict:
    from poclip.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(out=Path(args.out), steps=args.steps, batch_size=args.batch_size,
                         pool_size=args.pool_size, seed=args.seed, workers=args.workers)
    return pretrain(cfg)


def _eval(args: argparse.Namespace) -> dict:
    from poclip.evaluate import evaluate_synth
    from poclip.models import load_model

    if args.data != "synth":
        raise SystemExit(f"--data {args.data!r}: only 'synth' is supported by this command")
    encoder = load_model(args.model)
    result = evaluate_synth(encoder, n=args.n, seed=args.seed, attack=args.attack, batch_size=args.batch_size)
    result["model"] = encoder.spec
    return result


def _examples(args: argparse.Namespace) -> dict:
    import random

    from poclip import synth

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for k, shape in enumerate(synth.SHAPES[: args.n]):
        path = out / f"synthetic_{shape}.png"
        synth.draw_scene(synth.sample_scene(random.Random(f"example:{k}"), shape=shape), 224).save(path)
        written.append(str(path))
    return {"written": written}


def build_parser() -> argparse.ArgumentParser:
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

    p = sub.add_parser("eval", help="zero-shot accuracy, clean or under typographic attack")
    p.add_argument("--model", default="bundled", help="model spec (bundled, ViT-B-32:openai, local-dir:PATH, ...)")
    p.add_argument("--data", default="synth", choices=["synth"])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--attack", default="random", choices=["none", "random"])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--json", action="store_true", help="print one JSON object (the default output)")
    p.set_defaults(func=_eval)

    p = sub.add_parser("examples", help="write the example pictures shown in the app")
    p.add_argument("--out", default="assets/examples")
    p.add_argument("--n", type=int, default=6)
    p.set_defaults(func=_examples)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr)
    from poclip.models import ModelUnavailable

    try:
        result = args.func(args)
    except ModelUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=None))
    return 0
