"""Time the main job: `convnext train` on Fashion-MNIST (default recipe or another), end to end, and record
the command, wall-clock, accuracy (also with `convnext eval --tta hflip` on the final weights), per-epoch time and
machine load in benchmarks/fashion_mnist_results.jsonl.

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

from convnext.benchmark import cpu_name
from convnext.train.state import CheckpointManager

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
        load0 = os.getloadavg()
        t0 = time.time()
        r = subprocess.run(cmd, text=True)
        wall = time.time() - t0
        if r.returncode != 0:
            return r.returncode
        run = Path(out) / "bench"
        summary = json.loads((run / "summary.json").read_text())
        # The final weights again with the flip test-time augmentation (`convnext eval --tta hflip`), outside
        # the timed training: the model and its EMA from the last checkpoint.
        last = CheckpointManager(run).latest()
        tta = subprocess.run([sys.executable, "-m", "convnext", "eval", "--weights", str(last), "--tta", "hflip",
                              "--json", "--workers", "1"], text=True, capture_output=True)
        if tta.returncode != 0:
            print(tta.stderr, file=sys.stderr)
            return tta.returncode
        tta = json.loads(tta.stdout)
        epochs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        epochs = [e for e in epochs if e["type"] == "eval"]
        record = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": "convnext train" + (f" --recipe {args.recipe}" if args.recipe else "")
                       + "".join(f" --set {s}" for s in args.overrides),
            "wall_s": round(wall, 1), "train_s": round(summary["train_time_s"], 1),
            "epochs": summary["epochs"], "top1": summary["final_top1"], "ema_top1": summary["final_ema_top1"],
            "best_top1": summary["best_top1"], "best_ema_top1": summary["best_ema_top1"],
            "hflip_tta_top1": tta["top1"], "hflip_tta_ema_top1": tta.get("ema_top1"),
            "epoch_s": [round(e["epoch_time_s"], 1) for e in epochs],
            "top1_per_epoch": [round(e["top1"], 2) for e in epochs],
            "ema_top1_per_epoch": [round(e.get("ema_top1", 0.0), 2) for e in epochs],
            "loadavg_start": [round(x, 2) for x in load0], "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            "cpus": os.cpu_count(), "cpu": cpu_name(), "note": args.note,
        }
        with open(RESULTS, "a") as f:
            f.write(json.dumps(record) + "\n")
    print_table()
    return 0


def print_table() -> None:
    if not RESULTS.exists():
        return
    rows = [json.loads(x) for x in RESULTS.read_text().splitlines() if x.strip()]
    print(f"{'date':18s} {'command':60s} {'epochs':>6s} {'wall min':>8s} {'top-1':>6s} {'EMA':>6s} "
          f"{'TTA':>6s} {'load':>5s}")
    for r in rows:
        tta = f"{r['hflip_tta_top1']:6.2f}" if "hflip_tta_top1" in r else f"{'-':>6s}"
        print(f"{r['date']:18s} {r['command'][:60]:60s} {r['epochs']:6d} {r['wall_s'] / 60:8.1f} "
              f"{r['top1']:6.2f} {r['ema_top1'] or 0:6.2f} {tta} {r['loadavg_start'][0]:5.1f}")


if __name__ == "__main__":
    sys.exit(main())
