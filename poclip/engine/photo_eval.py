"""Zero-shot evaluation on the real typographic-attack photos (``--data distill-wild``).

For each physical object (:func:`poclip.world.photos.objects`) the model picks one label of that object's
label set for every photo of it. Per object and overall:

    blank_accuracy     = share of blank-note photos predicted as the object
    attacked_accuracy  = share of attack-note photos still predicted as the object
    attack_success_rate = share of attack-note photos predicted as the note's word
    own_word_accuracy  = share of photos whose note names the object itself that are predicted as the object

Overall figures pool photos (not objects), so round 2's 19-photo objects weigh more than round 3's 8.
"""

from __future__ import annotations

import torch

from poclip.engine.models import ClipEncoder
from poclip.engine.policy import Policy
from poclip.world.images import open_image
from poclip.world.labels import DEFAULT_TEMPLATE
from poclip.world.photos import CREDIT, Photo, objects

DATA_NAME = "distill-wild"


def _share(hits: list[bool]) -> float | None:
    return round(sum(hits) / len(hits), 4) if hits else None


def _figures(rows: list[dict]) -> dict:
    by_kind = {kind: [r for r in rows if r["kind"] == kind] for kind in ("blank", "attack", "own")}
    return {
        "blank_accuracy": _share([r["right"] for r in by_kind["blank"]]),
        "attacked_accuracy": _share([r["right"] for r in by_kind["attack"]]),
        "attack_success_rate": _share([r["attacked"] for r in by_kind["attack"]]),
        "own_word_accuracy": _share([r["right"] for r in by_kind["own"]]),
        "blank": len(by_kind["blank"]),
        "attacks": len(by_kind["attack"]),
    }


@torch.no_grad()
def photo_probabilities(encoder: ClipEncoder, group: list[Photo], policy: Policy | None = None, t: float = 1.0,
                        template: str = DEFAULT_TEMPLATE) -> tuple[torch.Tensor, torch.Tensor]:
    """Base and aligned class probabilities ``[len(group), L]`` over the group's (one object's) label set.

    One image-tower pass per photo; the aligned answer is the base one when ``policy`` is None.
    """
    labels = list(group[0].labels)
    if any(p.labels != group[0].labels for p in group):
        raise ValueError("photos of one object share a label set")
    images = [open_image(p.path) for p in group]
    if policy is None:
        base = encoder.log_probs(encoder.encode_images(images), encoder.classifier(labels, (template,))).exp()
        return base, base
    return policy.predict(images, labels, template, t)


def evaluate_photos(encoder: ClipEncoder, policy: Policy | None = None, t: float = 1.0,
                    template: str = DEFAULT_TEMPLATE, per_photo: bool = False) -> dict:
    """Score a backbone (and optionally an aligned head at strength ``t``) on all real photos.

    Returns a JSON-friendly dict: overall ``blank_accuracy``, ``attacked_accuracy``, ``attack_success_rate``,
    ``own_word_accuracy``; ``per_object``, one row per object with the same figures; ``base`` (the same
    figures for the backbone alone) when a head is given; and ``photos`` (one row per photo with the
    prediction and the probabilities of the right and attack labels) when ``per_photo``.
    """
    rows, base_rows = [], []
    for key, group in objects().items():
        base, aligned = photo_probabilities(encoder, group, policy, t, template)
        labels = list(group[0].labels)
        for photo, b, a in zip(group, base, aligned, strict=True):
            for probs, out in ((a, rows), (b, base_rows)):
                pred = labels[int(probs.argmax())]
                out.append({
                    "object": key, "file": f"{photo.round}/{photo.path.name}", "note": photo.note,
                    "kind": photo.kind, "prediction": pred, "right": pred in photo.right,
                    "attacked": pred in photo.attack_labels,
                    "p_right": round(float(sum(probs[labels.index(x)] for x in photo.right)), 5),
                    "p_attack": round(float(sum(probs[labels.index(x)] for x in photo.attack_labels)), 5),
                })
    result = {
        "data": DATA_NAME, "model": encoder.spec, "t": t if policy is not None else None, "n": len(rows),
        "objects": len({r["object"] for r in rows}), "template": template,
        **{k: v for k, v in _figures(rows).items() if k not in ("blank", "attacks")},
        "per_object": [{"object": key, "labels": len(group[0].labels), **_figures([r for r in rows
                                                                                  if r["object"] == key])}
                       for key, group in objects().items()],
        "credit": CREDIT,
    }
    if policy is not None:
        result["base"] = {k: v for k, v in _figures(base_rows).items() if k not in ("blank", "attacks")}
    if per_photo:
        result["photos"] = rows
    return result


def format_table(result: dict) -> str:
    """The per-object table as aligned text (for people reading stderr)."""
    def cell(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    lines = [f"{'object':<22} {'labels':>6} {'blank acc':>9} {'attacked acc':>12} {'attack success':>14} "
             f"{'own-word acc':>12}"]
    for r in result["per_object"]:
        lines.append(f"{r['object']:<22} {r['labels']:>6} {cell(r['blank_accuracy']):>9} "
                     f"{cell(r['attacked_accuracy']):>12} {cell(r['attack_success_rate']):>14} "
                     f"{cell(r['own_word_accuracy']):>12}")
    lines.append(f"{'all ' + str(result['n']) + ' photos':<22} {'':>6} {cell(result['blank_accuracy']):>9} "
                 f"{cell(result['attacked_accuracy']):>12} {cell(result['attack_success_rate']):>14} "
                 f"{cell(result['own_word_accuracy']):>12}")
    return "\n".join(lines)
