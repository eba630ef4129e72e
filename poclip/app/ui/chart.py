"""The training chart: TRL's metrics against the optimizer step, drawn as an inline SVG.

Two panels share the step axis (numeric, so ticks never crowd): losses and margins in nats on top, the
reward accuracy as a fraction (fixed 0-1) below; one legend under both. SVG keeps text as text, so the legend
and ticks stay sharp at any width and readable by tests and screen readers.

The chart is scaled to its column's width, so its text shrinks with the screen: the figure is narrow (5 in) and
its smallest text 11 pt, so on a 390 px phone (a column of about 350 px) no text is under 10 px.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

NATS = (("loss", "loss"), ("rewards/margins", "reward margin"), ("kl/clean", "KL on clean pictures"))
FRACTION = (("rewards/accuracies", "reward accuracy"),)
FIGSIZE = (5.0, 4.6)  # inches; at 72 pt per inch, the SVG is 360 pt wide
FONT_SIZES = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "xtick.labelsize": 11,
              "ytick.labelsize": 11, "legend.fontsize": 11}
COLOURS = {"loss": "#1f77b4", "rewards/margins": "#d62728", "kl/clean": "#2ca02c", "rewards/accuracies": "#9467bd"}


def chart_svg(history: Sequence[dict[str, float]], title: str = "Training (per optimizer step)") -> str:
    """An SVG chart of ``history`` (records with ``step`` and metric keys); a short note when it is empty."""
    if not history:
        return "<p id='train-chart-empty'><em>No training curves yet: they appear here while a run trains.</em></p>"
    steps = [float(r["step"]) for r in history]
    with matplotlib.rc_context({**FONT_SIZES, "svg.fonttype": "none"}):  # "none": text stays text
        fig = Figure(figsize=FIGSIZE, dpi=100, layout="constrained")
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
        for ax, metrics, unit in ((top, NATS, "nats"), (bottom, FRACTION, "fraction")):
            for key, name in metrics:
                points = [(s, float(r[key])) for s, r in zip(steps, history, strict=True) if key in r]
                if points:
                    xs, ys = zip(*points, strict=True)
                    ax.plot(xs, ys, label=name, color=COLOURS[key], linewidth=1.6)
            ax.set_ylabel(unit)
            ax.grid(alpha=0.3)
        bottom.set_ylim(-0.02, 1.02)
        bottom.set_xlabel("optimizer step")
        top.set_title(title)
        if any(ax.get_legend_handles_labels()[0] for ax in (top, bottom)):
            fig.legend(loc="outside lower center", ncols=2, frameon=False)
        fig.set_facecolor("white")
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg")
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]
    # Scale to the column's width (phones included) while keeping the aspect ratio.
    svg = svg.replace("<svg ", "<svg style='width:100%;height:auto;max-width:600px' role='img' "
                      "aria-label='training curves' ", 1)
    return f"<div id='train-chart' style='background:#fff;padding:4px'>{svg}</div>"
