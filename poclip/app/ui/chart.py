"""The training chart: TRL's metrics against the optimizer step, drawn as an inline SVG.

Two panels share the step axis (numeric, so ticks never crowd): losses and margins in nats on top, the
reward accuracy as a fraction (fixed 0-1) below; each panel has a legend outside the plot area. SVG keeps
text as text, so the legend and ticks stay sharp at any width and readable by tests and screen readers.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

NATS = (("loss", "loss"), ("rewards/margins", "reward margin"), ("kl/clean", "KL on clean pictures"))
FRACTION = (("rewards/accuracies", "reward accuracy"),)
COLOURS = {"loss": "#1f77b4", "rewards/margins": "#d62728", "kl/clean": "#2ca02c", "rewards/accuracies": "#9467bd"}


def chart_svg(history: Sequence[dict[str, float]], title: str = "Training (per optimizer step)") -> str:
    """An SVG chart of ``history`` (records with ``step`` and metric keys); a short note when it is empty."""
    if not history:
        return "<p id='train-chart-empty'><em>No training curves yet: they appear here while a run trains.</em></p>"
    steps = [float(r["step"]) for r in history]
    fig = Figure(figsize=(7.2, 4.2), dpi=100, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    for ax, metrics, unit in ((top, NATS, "nats"), (bottom, FRACTION, "fraction")):
        for key, name in metrics:
            points = [(s, float(r[key])) for s, r in zip(steps, history, strict=True) if key in r]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, label=name, color=COLOURS[key], linewidth=1.6)
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9)
    bottom.set_ylim(-0.02, 1.02)
    bottom.set_xlabel("optimizer step")
    top.set_title(title, fontsize=11)
    fig.set_facecolor("white")
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text stays text
        fig.savefig(buffer, format="svg")
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]
    # Scale to the column's width (phones included) while keeping the aspect ratio.
    svg = svg.replace("<svg ", "<svg style='width:100%;height:auto;max-width:760px' role='img' "
                      "aria-label='training curves' ", 1)
    return f"<div id='train-chart' style='background:#fff;padding:4px'>{svg}</div>"
