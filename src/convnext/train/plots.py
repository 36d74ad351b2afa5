"""PNG plots of a run's metrics.jsonl: loss, accuracy and lr against epochs."""

from __future__ import annotations

import json
from pathlib import Path


def plot_metrics(metrics_path: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Write loss.png, accuracy.png and lr.png from the epoch records of `metrics_path`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics_path, out_dir = Path(metrics_path), Path(out_dir)
    if not metrics_path.exists():
        return {}
    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    epochs = {}
    for r in records:  # a resumed run may repeat an epoch: keep the latest record of each
        if r.get("type") == "epoch":
            epochs[r["epoch"]] = r
    rows = [epochs[e] for e in sorted(epochs)]
    if not rows:
        return {}
    x = [r["epoch"] for r in rows]
    panels = {
        "loss": [("train loss", [r["train_loss"] for r in rows]), ("val loss", [r["val_loss"] for r in rows])],
        "accuracy": [("top-1", [r["top1"] for r in rows]), ("top-5", [r["top5"] for r in rows])],
        "lr": [("lr", [r["lr"] for r in rows])],
    }
    if "ema_top1" in rows[0]:
        panels["accuracy"].append(("EMA top-1", [r.get("ema_top1") for r in rows]))
    paths = {}
    for name, series in panels.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, ys in series:
            ax.plot(x, ys, marker="o", ms=3, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel({"accuracy": "accuracy (%)"}.get(name, name))
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        paths[name] = out_dir / f"{name}.png"
        fig.savefig(paths[name], dpi=100)
        plt.close(fig)
    return paths
