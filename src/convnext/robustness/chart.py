"""The per-corruption chart of a robustness report."""

from __future__ import annotations

import os
from pathlib import Path


def plot_corruption_errors(summary: dict, path: str | os.PathLike, title: str = "") -> Path:
    """Grouped bars: top-1 error per corruption, one bar per severity, with the clean error as a line.

    `summary` is what `metrics.summarize` returns (optionally with a "baseline_errors" entry, drawn as
    black ticks: the baseline's error averaged over severities). Written as PNG to `path`.
    """
    import numpy as np

    from ..plots import pyplot, save_figure

    plt = pyplot()

    errors = summary["errors"]
    names = list(errors)
    n_sev = len(next(iter(errors.values())))
    x = np.arange(len(names))
    width = 0.8 / n_sev
    fig, ax = plt.subplots(figsize=(max(8, 0.75 * len(names)), 4.5))
    colors = plt.cm.viridis(np.linspace(0.15, 0.9, n_sev))
    for s in range(n_sev):
        ax.bar(x - 0.4 + (s + 0.5) * width, [100 * errors[c][s] for c in names], width, color=colors[s],
               label=f"severity {s + 1}")
    baseline = summary.get("baseline_errors")
    if baseline:
        ax.scatter(x, [100 * (sum(b) / len(b) if isinstance(b, list) else b) for b in (baseline[c] for c in names)],
                   marker="_", s=400, color="black", label="baseline (mean)", zorder=3)
    if summary.get("clean_error") is not None:
        ax.axhline(100 * summary["clean_error"], color="red", lw=1, ls="--", label="clean")
    ax.set_xticks(x, [c.replace("_", "\n") for c in names], fontsize=8)
    ax.set_ylabel("top-1 error (%)")
    ax.set_ylim(0, 100)
    headline = [f"mCE {100 * summary['mce']:.1f}" if "mce" in summary else None,
                f"unnormalised {100 * summary['unnormalized_mce']:.1f}",
                f"relative mCE {100 * summary['relative_mce']:.1f}" if "relative_mce" in summary else None]
    ax.set_title(" | ".join(t for t in [title, *headline] if t), fontsize=10)
    ax.legend(fontsize=7, ncol=4, loc="upper left")
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
