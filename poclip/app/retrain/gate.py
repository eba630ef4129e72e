"""The promotion gate: whether a candidate head may replace the live one, and the per-class table behind it.

Pure functions of metric dicts (:func:`poclip.engine.evaluate.evaluate_policy`'s ``typographic_accuracy``,
``clean_accuracy`` and ``per_class``), so the rule is tested without training anything.
"""

from __future__ import annotations

from typing import Any

CLEAN_DROP_LIMIT = 0.01  # the promotion gate: clean accuracy may fall by at most one point
# ... and no class's attacked or clean accuracy by more than 15 points: with the gate's 500 pictures (50 per
# class) that is 7 pictures, well above the one or two that retraining on honest data moves.
CLASS_DROP_LIMIT = 0.15


def class_table(candidate: dict, live: dict) -> list[dict[str, Any]]:
    """Per-class attacked and clean accuracy of the live model and the candidate, with the changes.

    Args:
        candidate: the candidate's metrics, with ``per_class`` ``{label: {"attacked": a, "clean": c}}``.
        live: the live model's metrics, same shape; classes it lacks are left out.
    Returns:
        one row per class: ``class``, ``attacked_live``, ``attacked_candidate``, ``clean_live``,
        ``clean_candidate``, ``attacked_change`` and ``clean_change`` (candidate minus live, 4 decimals).
    """
    rows = []
    for label, cand in candidate.get("per_class", {}).items():
        before = live.get("per_class", {}).get(label)
        if before is None:
            continue
        rows.append({"class": label, "attacked_live": before["attacked"], "attacked_candidate": cand["attacked"],
                     "clean_live": before["clean"], "clean_candidate": cand["clean"],
                     "attacked_change": round(cand["attacked"] - before["attacked"], 4),
                     "clean_change": round(cand["clean"] - before["clean"], 4)})
    return rows


def format_class_table(rows: list[dict[str, Any]], margin: float) -> str:
    """The per-class table as fixed-width text; classes past the margin are marked ``<-``."""
    lines = [f"{'class':<10} {'attacked live -> cand':>22} {'clean live -> cand':>20}"]
    for r in rows:
        flag = "  <-" if min(r["attacked_change"], r["clean_change"]) < -margin - 1e-9 else ""
        lines.append(f"{r['class']:<10} {r['attacked_live']:>9.3f} -> {r['attacked_candidate']:.3f} "
                     f"({r['attacked_change']:+.3f}) {r['clean_live']:>6.3f} -> {r['clean_candidate']:.3f} "
                     f"({r['clean_change']:+.3f}){flag}")
    return "\n".join(lines)


def gate(candidate: dict, live: dict, base: dict, class_margin: float = CLASS_DROP_LIMIT) -> tuple[bool, str]:
    """The promotion rule.

    1. typographic accuracy must improve on the live model;
    2. clean accuracy may drop at most one point below both the live model and the base model;
    3. no class's attacked or clean accuracy may drop by more than ``class_margin`` versus the live model,
       so a poisoning campaign aimed at one class cannot hide behind a better overall figure.
    A refusal on rule 3 names the classes and carries the per-class table.

    Returns ``(promote, reason)``: the reason says what improved, or every rule the candidate broke.
    """
    reasons = []
    if candidate["typographic_accuracy"] <= live["typographic_accuracy"]:
        reasons.append(
            f"typographic accuracy {candidate['typographic_accuracy']:.3f} does not improve on the live "
            f"model's {live['typographic_accuracy']:.3f}"
        )
    floor = max(live["clean_accuracy"], base["clean_accuracy"]) - CLEAN_DROP_LIMIT
    if candidate["clean_accuracy"] < floor - 1e-9:
        reasons.append(f"clean accuracy {candidate['clean_accuracy']:.3f} is more than 1 point below "
                       f"{floor + CLEAN_DROP_LIMIT:.3f}")
    rows = class_table(candidate, live)
    hurt = [r for r in rows if min(r["attacked_change"], r["clean_change"]) < -class_margin - 1e-9]
    if hurt:
        named = ", ".join(
            f"{r['class']} ({'attacked' if r['attacked_change'] <= r['clean_change'] else 'clean'} "
            f"{min(r['attacked_change'], r['clean_change']):+.3f})" for r in hurt)
        reasons.append(f"per-class accuracy drops by more than {class_margin:.2f} versus the live model on: "
                       f"{named}\n{format_class_table(rows, class_margin)}")
    if reasons:
        return False, "; ".join(reasons)
    return True, (f"typographic accuracy {live['typographic_accuracy']:.3f} -> "
                  f"{candidate['typographic_accuracy']:.3f}, clean {live['clean_accuracy']:.3f} -> "
                  f"{candidate['clean_accuracy']:.3f}; no class drops by more than {class_margin:.2f}")
