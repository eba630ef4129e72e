"""A backbone on the real typographic-attack photos, beside the article's own CLIP figures.

    python bench/distill_wild.py --model ViT-B-32:openai --json

Goh et al. (Distill 2021) published, for most photos, an OpenAI CLIP's zero-shot probabilities of a few
ImageNet classes (the object's own class, the attack words, some runners-up). This script scores the chosen
backbone on exactly those photos and classes: both sets of probabilities are renormalised over the listed
classes, then for each object it reports accuracy on the blank note, accuracy and attack success under the
attack notes, for the reference and for the model, and how often the two pick the same class. Over all
attacked photos it also gives the Pearson correlation of the probability the written word gets.

The reference comes from a different CLIP (the article's) prompted with ImageNet's templates over 1,000
classes, so even ``ViT-B-32:openai`` will not match it exactly; the comparison is about the same phenomenon
(the written word wins) at similar strength. With a random-weight backbone it only checks the plumbing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from poclip.engine.models import load_model  # noqa: E402
from poclip.engine.photo_eval import photo_probabilities  # noqa: E402
from poclip.world.photos import objects  # noqa: E402


def _share(hits: list[bool]) -> float | None:
    return round(sum(hits) / len(hits), 4) if hits else None


def _pearson(a: list[float], b: list[float]) -> float | None:
    if len(a) < 3:
        return None
    x, y = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    x, y = x - x.mean(), y - y.mean()
    denom = float(x.norm() * y.norm())
    return round(float(x @ y) / denom, 4) if denom > 0 else None


def compare(model: str) -> dict:
    encoder = load_model(model)
    started = time.perf_counter()
    rows = []
    for key, group in objects().items():
        published = [p for p in group if p.reference is not None]
        if not published:
            continue
        probs, _ = photo_probabilities(encoder, published)
        labels = list(published[0].labels)
        for photo, p in zip(published, probs, strict=True):
            classes = list(photo.reference)
            ours = torch.stack([p[labels.index(c)] for c in classes])
            ours = ours / ours.sum()
            ref = torch.tensor([photo.reference[c] for c in classes])
            ref = ref / ref.sum() if float(ref.sum()) > 0 else ref
            attack = [c for c in classes if c in photo.attack_labels]
            row = {"object": key, "kind": photo.kind}
            for who, dist in (("reference", ref), ("model", ours)):
                pred = classes[int(dist.argmax())]
                row[who] = {"prediction": pred, "right": pred in photo.right, "attacked": pred in attack,
                            "p_attack": float(sum(dist[classes.index(c)] for c in attack))}
            rows.append(row)

    def figures(subset: list[dict], who: str) -> dict:
        blank = [r[who]["right"] for r in subset if r["kind"] == "blank"]
        attacked = [r for r in subset if r["kind"] == "attack"]
        return {"blank_accuracy": _share(blank), "attacked_accuracy": _share([r[who]["right"] for r in attacked]),
                "attack_success_rate": _share([r[who]["attacked"] for r in attacked])}

    per_object = []
    for key in dict.fromkeys(r["object"] for r in rows):
        subset = [r for r in rows if r["object"] == key]
        per_object.append({"object": key, "photos": len(subset), "reference": figures(subset, "reference"),
                           "model": figures(subset, "model"),
                           "agreement": _share([r["reference"]["prediction"] == r["model"]["prediction"]
                                                for r in subset])})
    attacked = [r for r in rows if r["kind"] == "attack"]
    return {
        "model": encoder.spec,
        "photos_with_reference": len(rows),
        "reference": figures(rows, "reference"),
        "model_figures": figures(rows, "model"),
        "agreement": _share([r["reference"]["prediction"] == r["model"]["prediction"] for r in rows]),
        "p_attack_pearson": _pearson([r["reference"]["p_attack"] for r in attacked],
                                     [r["model"]["p_attack"] for r in attacked]),
        "per_object": per_object,
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-32:openai",
                        help="backbone spec; ViT-B-32 (no tag) = random weights, plumbing only")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args()
    result = compare(args.model)
    if args.json:
        print(json.dumps(result))
        return

    def cell(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    print(f"{result['model']}: {result['photos_with_reference']} photos with the article's figures")
    print(f"{'object':<22} {'blank ref/model':>16} {'attacked ref/model':>19} {'success ref/model':>18} "
          f"{'agree':>6}")
    for r in [*result["per_object"], {"object": "all", "reference": result["reference"],
                                       "model": result["model_figures"], "agreement": result["agreement"]}]:
        ref, mod = r["reference"], r["model"]
        print(f"{r['object']:<22} {cell(ref['blank_accuracy']) + ' / ' + cell(mod['blank_accuracy']):>16} "
              f"{cell(ref['attacked_accuracy']) + ' / ' + cell(mod['attacked_accuracy']):>19} "
              f"{cell(ref['attack_success_rate']) + ' / ' + cell(mod['attack_success_rate']):>18} "
              f"{cell(r['agreement']):>6}")
    print(f"Pearson correlation of the written word's probability (attacked photos): "
          f"{cell(result['p_attack_pearson'])}")


if __name__ == "__main__":
    main()
