"""Time the main job: `convnext train` on Fashion-MNIST (default recipe or another), end to end, and record
the command, wall-clock, validation accuracy per epoch, the test accuracy the run measured once at its end,
per-epoch time, the CPU and its bf16 support, and machine load in benchmarks/fashion_mnist_results.jsonl.

The reported figure of a run is the test top-1 of whichever of its final weights and final EMA scored higher on
the validation images: chosen on validation, the test set looked at once.

    PYTHONPATH=src python benchmarks/fashion_mnist.py                      # the default recipe
    PYTHONPATH=src python benchmarks/fashion_mnist.py --recipe fashion_mnist_long --set optim.epochs=30

Prints a table of every recorded run. The load average is recorded because the machine this ran on is
shared: epoch times measured under load overstate what a quiet 2-core machine needs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from convnext.benchmark import cpu_name, load_averages
from convnext.fast import capabilities

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "fashion_mnist_results.jsonl"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default=None, help="recipe (default: convnext train's built-in default)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default=None, help="run folder parent (default: a temporary folder)")
    p.add_argument("--note", default="", help="free text stored with the result")
    p.add_argument("--table", action="store_true", help="only print the table of recorded runs")
    args = p.parse_args()
    if not args.table:
        out = args.out or tempfile.mkdtemp(prefix="fmnist-")
        cmd = [sys.executable, "-m", "convnext", "train", "--out", out, "--name", "bench"]
        if args.recipe:
            cmd += ["--recipe", args.recipe]
        cmd += [f"--set={s}" for s in [*args.overrides, "run.progress=false"]]
        load0 = load_averages()
        t0 = time.time()
        r = subprocess.run(cmd, text=True)
        wall = time.time() - t0
        if r.returncode != 0:
            return r.returncode
        run = Path(out) / "bench"
        summary = json.loads((run / "summary.json").read_text())
        epochs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        timed = [e for e in epochs if e["type"] in ("eval", "epoch") and "epoch_time_s" in e]  # every epoch
        epochs = [e for e in epochs if e["type"] == "eval"]  # the evaluated ones (run.eval_every)
        config = yaml.safe_load((run / "config.yaml").read_text())
        ema_better = (summary["final_ema_top1"] or -1) > summary["final_top1"]
        selected = "ema" if ema_better else "final"
        test = summary["test_ema_top1"] if ema_better else summary["test_top1"]
        record = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": "convnext train" + (f" --recipe {args.recipe}" if args.recipe else "")
                       + "".join(f" --set {s}" for s in args.overrides),
            "wall_s": round(wall, 1), "train_s": round(summary["train_time_s"], 1),
            "epochs": summary["epochs"], "val_top1": summary["final_top1"], "val_ema_top1": summary["final_ema_top1"],
            "test_top1": summary["test_top1"], "test_ema_top1": summary["test_ema_top1"],
            "selected": selected, "test_selected": test,
            "epoch_s": [round(e["epoch_time_s"], 1) for e in timed],
            "val_epochs": [round(e["epoch"], 2) for e in epochs],
            "val_top1_per_epoch": [round(e["top1"], 2) for e in epochs],
            "val_ema_top1_per_epoch": [round(e.get("ema_top1", 0.0), 2) for e in epochs],
            "tta": config["run"]["tta"], "amp": config["resolved"]["amp"], "fast_path": config["resolved"]["fast_path"],
            "loadavg_start": load0, "loadavg_end": load_averages(),
            "cpus": os.cpu_count(), "cpu": cpu_name(), "isa": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": capabilities().native_bf16, "note": args.note,
        }
        with open(RESULTS, "a") as f:
            f.write(json.dumps(record) + "\n")
    print_table()
    return 0


def print_table() -> None:
    if not RESULTS.exists():
        return
    rows = [json.loads(x) for x in RESULTS.read_text().splitlines() if x.strip()]
    print(f"{'date':18s} {'command':60s} {'epochs':>6s} {'wall min':>8s} {'val':>6s} {'test':>6s} {'load':>5s}  cpu")
    for r in rows:
        if "test_selected" in r:  # since the validation split: the test set once, the weights chosen on validation
            val, test = max(r["val_top1"], r.get("val_ema_top1") or 0), f"{r['test_selected']:6.2f}"
        else:  # earlier runs evaluated (and chose) on the test set itself
            val, test = float("nan"), f"{r['top1']:6.2f}*"
        print(f"{r['date']:18s} {r['command'][:60]:60s} {r['epochs']:6g} {r['wall_s'] / 60:8.1f} {val:6.2f} {test} "
              f"{r['loadavg_start'][0]:5.1f}  {r['cpu']}")
    print("* before the validation split: measured on the test set, which also chose the recipe")


if __name__ == "__main__":
    sys.exit(main())
