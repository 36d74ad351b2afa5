"""Does FCMAE pretraining help on Fashion-MNIST? ConvNeXt V2 (convnextv2_fmnist) pretrained with FCMAE on the
training images (no labels) and fine-tuned, against the same model trained from scratch: at equal fine-tuning
epochs, and at equal total wall-clock (the scratch run gets the pretraining's time as extra epochs). And V1 vs V2
at equal size and budget: the default recipe's convnext_fmnist beside convnextv2_fmnist from scratch.

Every run chooses on the validation split and reports the test set once (benchmarks/fashion_mnist.py records
them in fashion_mnist_results.jsonl); this script appends the pretraining runs and the comparison to
benchmarks/fcmae_fmnist.jsonl.

    PYTHONPATH=src python benchmarks/fcmae_fmnist.py --out /tmp/fcmae      # about 2 hours on 2 cores

On the AMD EPYC (2026-11-29, benchmarks/fcmae_fmnist.md) the pretraining took 14 minutes, and a V2 epoch of the
default recipe 57-75 s on a quiet machine against 31-32 s for the V1 model of the same size.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from convnext.benchmark import cpu_name, load_averages
from convnext.train.state import CheckpointManager

HERE = Path(__file__).resolve().parent
RECORD = HERE / "fcmae_fmnist.jsonl"
# Every run here uses the Fashion-MNIST recipe the comparison was recorded with (fashion_mnist_b64, which
# fcmae_ft_fashion_mnist builds on), so the comparison stays like for like.
RECIPE = ["--recipe", "fashion_mnist_b64"]
V2_SCRATCH = [*RECIPE, "--set=model.name=convnextv2_fmnist", "--set=model.layer_scale_init_value=null"]


def train(note: str, *args: str) -> dict:
    """One `convnext train` through benchmarks/fashion_mnist.py; returns its record."""
    subprocess.run([sys.executable, str(HERE / "fashion_mnist.py"), "--note", note, *args], check=True,
                   env={**os.environ, "PYTHONPATH": str(HERE.parent / "src")})
    return json.loads((HERE / "fashion_mnist_results.jsonl").read_text().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for the runs")
    p.add_argument("--skip-v1", action="store_true", help="do not rerun V1 (convnext_fmnist on fashion_mnist_b64)")
    args = p.parse_args()
    out = Path(args.out)
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src")}

    t0, load0 = time.time(), load_averages()
    subprocess.run([sys.executable, "-m", "convnext", "pretrain", "--out", str(out), "--name", "pre",
                    "--set", "run.progress=false"], check=True, env=env)
    pretrain_s = time.time() - t0
    last = CheckpointManager(out / "pre").latest()
    summary = json.loads((out / "pre" / "summary.json").read_text())

    finetuned = train("FCMAE fine-tuning (fcmae_ft_fashion_mnist) from the pretraining in this record", "--out",
                      str(out / "ft"), "--recipe", "fcmae_ft_fashion_mnist", "--set", f"model.init={last}")
    scratch = train("convnextv2_fmnist from scratch, the same settings", "--out", str(out / "scratch"),
                    *V2_SCRATCH)
    epoch_s = scratch["train_s"] / scratch["epochs"]
    extra = math.ceil(pretrain_s / epoch_s)
    scratch_long = train(f"convnextv2_fmnist from scratch, +{extra} epochs: the FCMAE pretraining's wall-clock",
                         "--out", str(out / "scratch_long"), *V2_SCRATCH,
                         f"--set=optim.epochs={round(scratch['epochs']) + extra}")
    v1 = None if args.skip_v1 else train("convnext_fmnist (V1), the same settings, beside V2",
                                         "--out", str(out / "v1"), *RECIPE)
    record = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_name(), "cpus": os.cpu_count(),
        "command": "PYTHONPATH=src python benchmarks/fcmae_fmnist.py", "loadavg_start": load0,
        "loadavg_end": load_averages(),
        "pretrain": {"command": "convnext pretrain", "wall_s": round(pretrain_s, 1), "steps": summary["steps"],
                     "final_val_loss": summary["final"].get("val_loss")},
        "runs": {name: {k: r[k] for k in ("command", "wall_s", "epochs", "val_top1", "val_ema_top1", "test_selected")}
                 for name, r in (("finetuned", finetuned), ("scratch_equal_epochs", scratch),
                                 ("scratch_equal_wallclock", scratch_long), ("v1", v1)) if r is not None},
    }
    with open(RECORD, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
