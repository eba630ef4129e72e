"""The promotion gate: whether a candidate head may replace the live one, the table it decides on, and the
per-class table behind it.

Pure functions of metric dicts (:func:`poclip.engine.evaluate.evaluate_policy`'s ``typographic_accuracy``,
``clean_accuracy`` and ``per_class``) and of crowd agreement on the held-out crowd items
(:class:`poclip.app.retrain.crowd.Agreement`), so the rule is tested without training anything.

The rule, written once as the rows of :func:`gate_table` (each row says which rule needs it):

- A, what people taught: crowd agreement improves beyond its interval (the candidate's Wilson 95% lower bound
  above the live model's share, on at least :data:`MIN_HELD_OUT` held-out pairs), typographic accuracy stays
  within :data:`TYPOGRAPHIC_MARGIN` of the live model's, and the clean and per-class guards hold;
- B, the synthetic figures: typographic accuracy improves on the live model's, crowd agreement does not fall by
  more than :data:`CROWD_TOLERANCE` (or there are too few held-out pairs to tell), and the same guards hold.

Guards: clean accuracy at most :data:`CLEAN_DROP_LIMIT` below both the live and the base model's; no class's
attacked or clean accuracy more than :data:`CLASS_DROP_LIMIT` below the live model's.
"""

from __future__ import annotations

from typing import Any

from poclip.app.retrain.crowd import Agreement

CLEAN_DROP_LIMIT = 0.01  # clean accuracy may fall by at most one point
# ... and no class's attacked or clean accuracy by more than 15 points: with the gate's 500 pictures (50 per
# class) that is 7 pictures, well above the one or two that retraining on honest data moves.
CLASS_DROP_LIMIT = 0.15
# Fewer held-out pairs than this tell nothing: the Wilson interval of 30 pairs is still about +-0.17 wide.
MIN_HELD_OUT = 30
TYPOGRAPHIC_MARGIN = 0.01  # rule A: a crowd win may cost at most one point of synthetic typographic accuracy
CROWD_TOLERANCE = 0.02  # rule B: a synthetic win may cost at most two points of crowd agreement
RULES = {"A": "crowd agreement improves", "B": "synthetic typographic accuracy improves"}
_EPS = 1e-9


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


def _worst_change(rows: list[dict[str, Any]]) -> float | None:
    return min((min(r["attacked_change"], r["clean_change"]) for r in rows), default=None)


def gate_table(candidate: dict, live: dict, base: dict, crowd: dict[str, Agreement] | None = None,
               class_margin: float = CLASS_DROP_LIMIT) -> list[dict[str, Any]]:
    """The promotion rule as rows: ``metric``, ``live``, ``candidate``, ``base``, ``margin`` (the test, in words),
    ``pass`` and ``rule`` (which of rules A and B need the row; see the module's docstring).

    Args:
        candidate, live, base: gate metrics of the candidate, the live model and the base model.
        crowd: crowd agreement ``{"candidate", "live", "base"}`` on the held-out pairs; None: no held-out pairs.
        class_margin: the per-class guard.
    Returns:
        six rows: crowd agreement improves (A), typographic accuracy improves (B), crowd agreement does not fall
        (B), typographic accuracy holds (A), clean accuracy (A, B), worst per-class change (A, B).
    """
    none = Agreement.of(0, 0)
    crowd = crowd or {}
    cand_c, live_c, base_c = (crowd.get(k, none) for k in ("candidate", "live", "base"))
    enough = cand_c.n >= MIN_HELD_OUT
    typo = (live["typographic_accuracy"], candidate["typographic_accuracy"], base["typographic_accuracy"])
    clean = (live["clean_accuracy"], candidate["clean_accuracy"], base["clean_accuracy"])
    clean_floor = max(clean[0], clean[2]) - CLEAN_DROP_LIMIT
    worst = _worst_change(class_table(candidate, live))
    crowd_values = {"live": live_c.share, "candidate": cand_c.share, "base": base_c.share}
    return [
        {"metric": f"crowd agreement improves ({cand_c.n} held-out pairs)", **crowd_values,
         "margin": f"candidate's 95% low {cand_c.low:.3f} > live; at least {MIN_HELD_OUT} pairs",
         "pass": enough and cand_c.low > live_c.share + _EPS, "rule": "A"},
        {"metric": "typographic accuracy improves", "live": typo[0], "candidate": typo[1], "base": typo[2],
         "margin": "> live", "pass": typo[1] > typo[0] + _EPS, "rule": "B"},
        {"metric": "crowd agreement does not fall", **crowd_values,
         "margin": f">= live - {CROWD_TOLERANCE:.2f}" + ("" if enough else f" (fewer than {MIN_HELD_OUT} pairs: "
                                                                              "not judged)"),
         "pass": not enough or cand_c.share >= live_c.share - CROWD_TOLERANCE - _EPS, "rule": "B"},
        {"metric": "typographic accuracy holds", "live": typo[0], "candidate": typo[1], "base": typo[2],
         "margin": f">= live - {TYPOGRAPHIC_MARGIN:.2f}", "pass": typo[1] >= typo[0] - TYPOGRAPHIC_MARGIN - _EPS,
         "rule": "A"},
        {"metric": "clean accuracy", "live": clean[0], "candidate": clean[1], "base": clean[2],
         "margin": f">= max(live, base) - {CLEAN_DROP_LIMIT:.2f}", "pass": clean[1] >= clean_floor - _EPS,
         "rule": "A, B"},
        {"metric": "worst per-class change vs live", "live": 0.0, "candidate": worst, "base": None,
         "margin": f">= -{class_margin:.2f}", "pass": worst is None or worst >= -class_margin - _EPS,
         "rule": "A, B"},
    ]


def verdict(rows: list[dict[str, Any]]) -> str | None:
    """Which rule promotes the candidate by the rows of :func:`gate_table` (``"A"`` first), or None."""
    for rule in RULES:
        if all(r["pass"] for r in rows if rule in r["rule"]):
            return rule
    return None


def format_gate_table(rows: list[dict[str, Any]]) -> str:
    """The gate table as a Markdown table (the Train tab and the run's log show it)."""
    def cell(value: Any) -> str:
        return "" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| metric | live | candidate | base | margin | pass | rule |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['metric']} | {cell(r['live'])} | {cell(r['candidate'])} | {cell(r['base'])} | {r['margin']} | "
              f"{'pass' if r['pass'] else 'fail'} | {r['rule']} |" for r in rows]
    return "\n".join(lines)


def gate(candidate: dict, live: dict, base: dict, class_margin: float = CLASS_DROP_LIMIT,
         crowd: dict[str, Agreement] | None = None) -> tuple[bool, str]:
    """The promotion rule: rule A or rule B of the module's docstring, decided on :func:`gate_table`'s rows.

    A refusal names every failing row, and when the per-class guard fails, the classes and the per-class table
    (so a poisoning campaign aimed at one class cannot hide behind a better overall figure).

    Returns ``(promote, reason)``: the reason says which rule promoted and what moved, or what failed.
    """
    rows = gate_table(candidate, live, base, crowd, class_margin)
    by_metric = {r["metric"].split(" (")[0]: r for r in rows}
    crowd_row = by_metric["crowd agreement improves"]
    n = (crowd or {}).get("candidate", Agreement.of(0, 0)).n
    crowd_text = (f"crowd agreement {crowd_row['live']:.3f} -> {crowd_row['candidate']:.3f} on {n} held-out pairs"
                  + ("" if n >= MIN_HELD_OUT else f" (at least {MIN_HELD_OUT} needed)"))
    rule = verdict(rows)
    if rule is not None:
        return True, (f"rule {rule} ({RULES[rule]}): {crowd_text}; typographic accuracy "
                      f"{live['typographic_accuracy']:.3f} -> {candidate['typographic_accuracy']:.3f}, clean "
                      f"{live['clean_accuracy']:.3f} -> {candidate['clean_accuracy']:.3f}; no class drops by more "
                      f"than {class_margin:.2f}")
    reasons = []
    if not crowd_row["pass"]:
        reasons.append(f"{crowd_text} does not improve beyond its interval (rule A)")
    if not by_metric["typographic accuracy improves"]["pass"]:
        reasons.append(f"typographic accuracy {candidate['typographic_accuracy']:.3f} does not improve on the live "
                       f"model's {live['typographic_accuracy']:.3f} (rule B)")
    if not by_metric["crowd agreement does not fall"]["pass"]:
        reasons.append(f"{crowd_text} falls by more than {CROWD_TOLERANCE:.2f} (rule B)")
    if not by_metric["typographic accuracy holds"]["pass"]:
        reasons.append(f"typographic accuracy {candidate['typographic_accuracy']:.3f} is more than "
                       f"{TYPOGRAPHIC_MARGIN:.2f} below the live model's (rule A)")
    floor = max(live["clean_accuracy"], base["clean_accuracy"])
    if not by_metric["clean accuracy"]["pass"]:
        reasons.append(f"clean accuracy {candidate['clean_accuracy']:.3f} is more than 1 point below {floor:.3f}")
    table = ""
    if not by_metric["worst per-class change vs live"]["pass"]:
        classes = class_table(candidate, live)
        hurt = [r for r in classes if min(r["attacked_change"], r["clean_change"]) < -class_margin - _EPS]
        named = ", ".join(
            f"{r['class']} ({'attacked' if r['attacked_change'] <= r['clean_change'] else 'clean'} "
            f"{min(r['attacked_change'], r['clean_change']):+.3f})" for r in hurt)
        reasons.append(f"per-class accuracy drops by more than {class_margin:.2f} versus the live model on: {named}")
        table = "\n" + format_class_table(classes, class_margin)
    return False, "neither rule holds: " + "; ".join(reasons) + table
