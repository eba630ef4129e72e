"""PNG plots for the command line and benchmarks (matplotlib, headless)."""

from __future__ import annotations

import os
from pathlib import Path


def plot_sweep(rows: list[dict], path: str | Path, x: str, series: dict[str, str], title: str,
               chance: float | None = None) -> Path:
    """Line plot of ``rows[k][key]`` against ``rows[k][x]`` for each ``key: legend`` in ``series``.

    Written to a temp file and renamed, so a reader never sees a half-written PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    xs = [r[x] for r in rows]
    for key, legend in series.items():
        ax.plot(xs, [r[key] for r in rows], marker="o", label=legend)
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle=":", label="chance")
    ax.axvline(0.0, color="black", linewidth=0.6)
    ax.axvline(1.0, color="black", linewidth=0.6, linestyle="--")
    ax.set_xlabel(x)
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    try:
        fig.savefig(tmp)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path
