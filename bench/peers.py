"""Benchmark: PO-CLIP against the defenses a user could pick instead, on the generalization table's rows.

    python bench/peers.py --json bench/results/peers.json            # the published numbers (n = 1000)
    python bench/peers.py --n 40 --columns base,prompts              # a quick look

Rows: every attack family of :data:`poclip.world.styles.ATTACK_FAMILIES` (held-out pictures ``eval:2024:i``
with that family's text, as in bench/alignment.py), ``clean`` (the same pictures without text) and ``reading``
(word-only signs whose word is the answer, :mod:`poclip.engine.defenses.reading`). With a real backbone
(``--model``), also the real photos (``distill-wild``): ``wild_attacked``, ``wild_blank`` and ``wild_own_word``.
Columns: the defenses of :data:`COLUMNS`, each built once per backbone (cached in ``--cache-dir``, so a rerun
loads them) and timed: ``seconds_to_build`` (training or mining; ``null`` for the shipped starter head) and
``ms_per_picture`` (scoring, OCR included, measured over the whole table). Checks (the bars): the starter head
is ahead of every peer on the mean over attack families; no peer beats it on any attack family by more than
1 point (listed where one does); every column keeps at least 0.9 of the base model's reading accuracy (listed
where one does not). Accuracies are deterministic; seconds are noisy on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from poclip.engine.defenses import PEERS  # noqa: E402
from poclip.engine.defenses.base import BaseModel, Defense  # noqa: E402
from poclip.engine.defenses.head import Retrain, Starter  # noqa: E402
from poclip.engine.defenses.reading import READING_SEED, reading_set  # noqa: E402
from poclip.engine.models import load_model  # noqa: E402
from poclip.settings import Settings  # noqa: E402
from poclip.world import synth  # noqa: E402
from poclip.world.attacks import render  # noqa: E402
from poclip.world.styles import ATTACK_FAMILIES, family_attack  # noqa: E402

COLUMNS: dict[str, type[Defense]] = {
    "base": BaseModel, "prompts": PEERS["prompts"], "prefix": PEERS["prefix"], "ablation": PEERS["ablation"],
    "ocr_mask": PEERS["ocr_mask"], "paint": PEERS["paint"], "starter": Starter, "retrain_1000": Retrain,
}
REFERENCE = "starter"
EVAL_SEED = 2024
MARGIN = 0.01  # a peer may beat the starter head on an attack family by at most this
READING_KEEP = 0.9  # share of the base model's reading accuracy every column must keep


def family_pictures(family: str, n: int, seed: int = EVAL_SEED):
    """(pictures, truth labels) of one row: ``clean`` or an attack family, drawn as embed_synth_eval draws them."""
    labels = list(synth.SHAPES)
    items = synth.eval_set(n, seed, "random")
    if family == "clean":
        return [it.clean for it in items], [it.label for it in items]
    texts = [it.attack if family == "paper" else
             family_attack(family, labels, it.label, random.Random(f"eval-text:{family}:{seed}:{it.index}")).attack
             for it in items]
    return [render(it.clean, t) for it, t in zip(items, texts, strict=True)], [it.label for it in items]


def accuracy(defense: Defense, pictures, truth, labels) -> float:
    predicted = defense.predict(pictures, labels)
    return round(sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth), 4)


def photo_rows(defenses: dict[str, Defense]) -> dict[str, dict[str, float]]:
    """The real photos: per column, accuracy on attack-note, blank-note and own-word photos (pooled)."""
    from poclip.world.images import open_image
    from poclip.world.photos import objects

    hits: dict[str, dict[str, list[bool]]] = {k: {} for k in ("wild_attacked", "wild_blank", "wild_own_word")}
    row_of = {"attack": "wild_attacked", "blank": "wild_blank", "own": "wild_own_word"}
    for group in objects().values():
        pictures, labels = [open_image(p.path) for p in group], list(group[0].labels)
        for name, defense in defenses.items():
            for photo, predicted in zip(group, defense.predict(pictures, labels), strict=True):
                hits[row_of[photo.kind]].setdefault(name, []).append(predicted in photo.right)
    return {row: {c: round(sum(h) / len(h), 4) for c, h in cols.items()} for row, cols in hits.items()}


def checks(table: dict, columns: list[str]) -> dict:
    """The bars, with the measured numbers behind them."""
    families = [f for f in ATTACK_FAMILIES if f in table]
    means = {c: round(statistics.mean(table[f][c] for f in families), 4) for c in columns}
    peers = [c for c in PEERS if c in columns]
    out: dict[str, object] = {"mean_over_attack_families": means}
    if REFERENCE in columns:
        out["starter ahead of every peer on the mean over attack families"] = all(
            means[REFERENCE] > means[p] for p in peers)
        out["peers more than 1 point above the starter"] = [
            {"row": f, "column": p, "by": round(table[f][p] - table[f][REFERENCE], 4)}
            for f in families for p in peers if table[f][p] > table[f][REFERENCE] + MARGIN]
    if "reading" in table and "base" in columns:
        floor = READING_KEEP * table["reading"]["base"]
        out["reading floor (0.9 of base)"] = round(floor, 4)
        out["columns below the reading floor"] = [c for c in columns if table["reading"][c] < floor]
    return out


def markdown(result: dict) -> str:
    columns = result["columns"]
    lines = ["| row | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for row, cells in result["table"].items():
        lines.append(f"| {row} | " + " | ".join(f"{cells[c]:.3f}" for c in columns) + " |")
    means = result["checks"]["mean_over_attack_families"]
    lines.append("| mean over attack families | " + " | ".join(f"{means[c]:.3f}" for c in columns) + " |")
    for key, fmt in (("seconds_to_build", "{:.1f}"), ("ms_per_picture", "{:.2f}")):
        vals = result[key]
        lines.append(f"| {key} | " + " | ".join("shipped" if vals[c] is None else fmt.format(vals[c])
                                               for c in columns) + " |")
    return "\n".join(lines)


def run(model: str, n: int, columns: list[str], cache_dir: str | None) -> dict:
    """Build every column on ``model`` and score it on every row; the result :func:`main` writes."""
    encoder = load_model(model, device=torch.device("cpu"))
    defenses, skipped = {}, {}
    for name in columns:
        try:
            defenses[name] = COLUMNS[name](encoder).build(cache_dir)
        except LookupError as exc:  # e.g. no starter head for this backbone
            skipped[name] = str(exc)
            continue
        d = defenses[name]
        print(f"{name}: built in {d.seconds_to_build} s{' (loaded)' if d.loaded else ''}", file=sys.stderr)
    columns = [c for c in columns if c in defenses]
    labels = list(synth.SHAPES)
    table: dict[str, dict[str, float]] = {}
    for row in (*ATTACK_FAMILIES, "clean"):
        pictures, truth = family_pictures(row, n)
        table[row] = {c: accuracy(defenses[c], pictures, truth, labels) for c in columns}
        print(f"{row}: " + " ".join(f"{c} {v:.3f}" for c, v in table[row].items()), file=sys.stderr)
    signs, words = reading_set(n, READING_SEED)
    table["reading"] = {c: accuracy(defenses[c], signs, words, labels) for c in columns}
    if model != "bundled":
        table.update(photo_rows(defenses))
    return {
        "model": encoder.spec, "n": n, "eval_seed": EVAL_SEED, "columns": columns, "table": table,
        "seconds_to_build": {c: None if defenses[c].info.get("shipped") else defenses[c].seconds_to_build
                             for c in columns},
        "ms_per_picture": {c: defenses[c].ms_per_picture for c in columns},
        "built": {c: {"loaded": defenses[c].loaded, "recipe_hash": defenses[c].recipe_hash, "info": defenses[c].info}
                  for c in columns},
        "skipped": skipped, "checks": checks(table, columns),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bundled", help="backbone spec (a real one adds the distill-wild rows)")
    parser.add_argument("--n", type=int, default=1000, help="pictures per row")
    parser.add_argument("--columns", default=",".join(COLUMNS), help="comma-separated subset of the columns")
    parser.add_argument("--cache-dir", default=None,
                        help="where builds are cached (default: the data folder's defenses/)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    columns = [c.strip() for c in args.columns.split(",") if c.strip()]
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown or not columns or args.n <= 0:
        parser.error(f"unknown columns {unknown}; choose from {', '.join(COLUMNS)} (and --n must be positive)")
    torch.set_num_threads(args.threads)
    cache_dir = args.cache_dir or str(Settings.from_env().data_dir / "defenses")
    result = run(args.model, args.n, columns, cache_dir)
    print(markdown(result))
    print(json.dumps(result["checks"], indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
