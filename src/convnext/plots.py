"""PNG plots of a run's metrics.jsonl: loss, accuracy and lr against epochs."""

from __future__ import annotations

import json
from pathlib import Path


def plot_metrics(metrics_path: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Write loss.png, accuracy.png and lr.png from the evaluation records of `metrics_path`; returns their
    paths."""
    metrics_path, out_dir = Path(metrics_path), Path(out_dir)
    if not metrics_path.exists():
        return {}
    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    epochs = {}
    for r in records:  # a resumed run may repeat an evaluation: keep the latest record of each
        if r.get("type") == "eval" and "top1" in r:
            epochs[r["epoch"]] = r
    rows = [epochs[e] for e in sorted(epochs)]
    if not rows:
        return {}
    x = [r["epoch"] for r in rows]
    panels = {
        "loss": [("train loss", [r.get("train_loss") for r in rows]), ("val loss", [r["val_loss"] for r in rows])],
        "accuracy": [("top-1", [r["top1"] for r in rows]), ("top-5", [r["top5"] for r in rows])],
        "lr": [("lr", [r["lr"] for r in rows])],
    }
    if "ema_top1" in rows[0]:
        panels["accuracy"].append(("EMA top-1", [r.get("ema_top1") for r in rows]))
    return {name: line_plot(out_dir / f"{name}.png", x, series, "epoch",
                            {"accuracy": "accuracy (%)"}.get(name, name))
            for name, series in panels.items()}


def line_plot(path: Path, x: list, series: list[tuple[str, list]], xlabel: str, ylabel: str | None = None,
              marker: str | None = "o") -> Path:
    """One PNG with a line per (label, ys) series against `x`."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, ys in series:
        ax.plot(x, ys, marker=marker, ms=3, label=label)
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (servers have no display), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Write `fig` as an image to `path` (making its folder), free it, and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path
