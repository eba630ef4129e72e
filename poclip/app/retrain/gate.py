"""The promotion gate: whether a candidate head may replace the live one, the table it decides on, and the
per-class table behind it.

Pure functions of metric dicts (:func:`poclip.engine.evaluate.evaluate_policy`'s ``typographic_accuracy``,
``clean_accuracy`` and ``per_class``) and of crowd agreement on the held-out crowd items
(:class:`poclip.app.retrain.crowd.Agreement`), so the rule is tested without training anything.

The rule, written once as the rows of :func:`gate_table` (each row says which rule needs it):

- A, what people taught: crowd agreement improves beyond its interval (the candidate's Wilson 95% lower bound
  above the live model's share, on at least :data:`MIN_HELD_OUT` held-out pairs), typographic accuracy stays
  within :data:`TYPOGRAPHIC_MARGIN` of the live model's, and the guards hold;
- B, the synthetic figures: typographic accuracy improves on the live model's, crowd agreement does not fall by
  more than :data:`CROWD_TOLERANCE` (or there are too few held-out pairs to tell), and the same guards hold.

Typographic accuracy is the mean over the gate's attack families (``family_mean``; the paper's style alone when a
metric dict has no families). Guards: clean accuracy at most :data:`CLEAN_DROP_LIMIT` below both the live and the
base model's; no attack family more than :data:`FAMILY_DROP_LIMIT` below the live model's; no class's attacked or
clean accuracy more than :data:`CLASS_DROP_LIMIT` below the live model's.
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
# ... and no attack family by more than two points: with the gate's 500 pictures per family, 10 pictures.
FAMILY_DROP_LIMIT = 0.02
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


def typographic(metrics: dict) -> float:
    """The gate's typographic accuracy: the mean over attack families, else the paper style's."""
    return metrics.get("family_mean", metrics["typographic_accuracy"])


def family_changes(candidate: dict, live: dict) -> dict[str, float]:
    """Each attack family's typographic accuracy change, candidate minus live (families both have)."""
    cand, before = candidate.get("family_accuracy", {}), live.get("family_accuracy", {})
    return {f: round(cand[f] - before[f], 4) for f in cand if f in before}


def gate_table(candidate: dict, live: dict, base: dict, crowd: dict[str, Agreement] | None = None,
               class_margin: float = CLASS_DROP_LIMIT) -> list[dict[str, Any]]:
    """The promotion rule as rows: ``metric``, ``live``, ``candidate``, ``base``, ``margin`` (the test, in words),
    ``pass``, ``rule`` (which of rules A and B need the row; see the module's docstring) and ``key`` (the row's
    name for code).

    Args:
        candidate, live, base: gate metrics of the candidate, the live model and the base model.
        crowd: crowd agreement ``{"candidate", "live", "base"}`` on the held-out pairs; None: no held-out pairs.
        class_margin: the per-class guard.
    Returns:
        seven rows: crowd agreement improves (A), typographic accuracy improves (B), crowd agreement does not
        fall (B), typographic accuracy holds (A), clean accuracy (A, B), worst attack-family change (A, B), worst
        per-class change (A, B).
    """
    none = Agreement.of(0, 0)
    crowd = crowd or {}
    cand_c, live_c, base_c = (crowd.get(k, none) for k in ("candidate", "live", "base"))
    enough = cand_c.n >= MIN_HELD_OUT
    typo = (typographic(live), typographic(candidate), typographic(base))
    families = family_changes(candidate, live)
    worst_family = min(families, key=families.get) if families else None
    what = f"typographic accuracy (mean of {len(families)} attack families)" if families else "typographic accuracy"
    clean = (live["clean_accuracy"], candidate["clean_accuracy"], base["clean_accuracy"])
    clean_floor = max(clean[0], clean[2]) - CLEAN_DROP_LIMIT
    worst = _worst_change(class_table(candidate, live))
    typo_values = {"live": typo[0], "candidate": typo[1], "base": typo[2]}
    crowd_values = {"live": live_c.share, "candidate": cand_c.share, "base": base_c.share}
    return [
        {"key": "crowd_improves",
         "metric": f"crowd agreement improves ({cand_c.n} held-out pairs)", **crowd_values,
         "margin": f"candidate's 95% low {cand_c.low:.3f} > live; at least {MIN_HELD_OUT} pairs",
         "pass": enough and cand_c.low > live_c.share + _EPS, "rule": "A"},
        {"key": "typographic_improves", "metric": f"{what} improves", **typo_values,
         "margin": "> live", "pass": typo[1] > typo[0] + _EPS, "rule": "B"},
        {"key": "crowd_holds", "metric": "crowd agreement does not fall", **crowd_values,
         "margin": f">= live - {CROWD_TOLERANCE:.2f}" + ("" if enough else f" (fewer than {MIN_HELD_OUT} pairs: "
                                                                              "not judged)"),
         "pass": not enough or cand_c.share >= live_c.share - CROWD_TOLERANCE - _EPS, "rule": "B"},
        {"key": "typographic_holds", "metric": f"{what} holds", **typo_values,
         "margin": f">= live - {TYPOGRAPHIC_MARGIN:.2f}", "pass": typo[1] >= typo[0] - TYPOGRAPHIC_MARGIN - _EPS,
         "rule": "A"},
        {"key": "clean", "metric": "clean accuracy", "live": clean[0], "candidate": clean[1], "base": clean[2],
         "margin": f">= max(live, base) - {CLEAN_DROP_LIMIT:.2f}", "pass": clean[1] >= clean_floor - _EPS,
         "rule": "A, B"},
        {"key": "family_guard", "metric": f"worst attack-family change vs live ({worst_family or 'none'})",
         "live": 0.0, "candidate": families.get(worst_family) if worst_family else None, "base": None,
         "margin": f">= -{FAMILY_DROP_LIMIT:.2f}",
         "pass": worst_family is None or families[worst_family] >= -FAMILY_DROP_LIMIT - _EPS,
         "rule": "A, B"},
        {"key": "class_guard", "metric": "worst per-class change vs live", "live": 0.0, "candidate": worst,
         "base": None,
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
    row = {r["key"]: r for r in rows}
    crowd_row = row["crowd_improves"]
    n = (crowd or {}).get("candidate", Agreement.of(0, 0)).n
    crowd_text = (f"crowd agreement {crowd_row['live']:.3f} -> {crowd_row['candidate']:.3f} on {n} held-out pairs"
                  + ("" if n >= MIN_HELD_OUT else f" (at least {MIN_HELD_OUT} needed)"))
    typo_text = row["typographic_improves"]["metric"].removesuffix(" improves")
    rule = verdict(rows)
    if rule is not None:
        return True, (f"rule {rule} ({RULES[rule]}): {crowd_text}; {typo_text} "
                      f"{typographic(live):.3f} -> {typographic(candidate):.3f}, clean "
                      f"{live['clean_accuracy']:.3f} -> {candidate['clean_accuracy']:.3f}; no class drops by more "
                      f"than {class_margin:.2f}")
    reasons = []
    if not crowd_row["pass"]:
        reasons.append(f"{crowd_text} does not improve beyond its interval (rule A)")
    if not row["typographic_improves"]["pass"]:
        reasons.append(f"{typo_text} {typographic(candidate):.3f} does not improve on the live model's "
                       f"{typographic(live):.3f} (rule B)")
    if not row["crowd_holds"]["pass"]:
        reasons.append(f"{crowd_text} falls by more than {CROWD_TOLERANCE:.2f} (rule B)")
    if not row["typographic_holds"]["pass"]:
        reasons.append(f"{typo_text} {typographic(candidate):.3f} is more than {TYPOGRAPHIC_MARGIN:.2f} below the "
                       f"live model's (rule A)")
    floor = max(live["clean_accuracy"], base["clean_accuracy"])
    if not row["clean"]["pass"]:
        reasons.append(f"clean accuracy {candidate['clean_accuracy']:.3f} is more than 1 point below {floor:.3f}")
    if not row["family_guard"]["pass"]:
        hurt = {f: c for f, c in family_changes(candidate, live).items() if c < -FAMILY_DROP_LIMIT - _EPS}
        reasons.append(f"typographic accuracy drops by more than {FAMILY_DROP_LIMIT:.2f} versus the live model on: "
                       + ", ".join(f"{f} ({c:+.3f})" for f, c in hurt.items()))
    table = ""
    if not row["class_guard"]["pass"]:
        classes = class_table(candidate, live)
        hurt = [r for r in classes if min(r["attacked_change"], r["clean_change"]) < -class_margin - _EPS]
        named = ", ".join(
            f"{r['class']} ({'attacked' if r['attacked_change'] <= r['clean_change'] else 'clean'} "
            f"{min(r['attacked_change'], r['clean_change']):+.3f})" for r in hurt)
        reasons.append(f"per-class accuracy drops by more than {class_margin:.2f} versus the live model on: {named}")
        table = "\n" + format_class_table(classes, class_margin)
    return False, "neither rule holds: " + "; ".join(reasons) + table
