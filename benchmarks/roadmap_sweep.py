"""Run the small-scale roadmap sweep (`convnext roadmap --train`) and record it in benchmarks/.

    PYTHONPATH=src nice -n 10 python benchmarks/roadmap_sweep.py            # the full sweep, 1 seed (~1 h, 2 cores)
    PYTHONPATH=src python benchmarks/roadmap_sweep.py --smoke               # 2 steps, 1 epoch, 2k images
    PYTHONPATH=src python benchmarks/roadmap_sweep.py --seeds 0,1,2         # bigger hardware

The sweep resumes: run the same command again after an interruption. The record (command, hardware,
table, figure) goes to benchmarks/roadmap_<name>.md and .png; the raw per-run results stay in --out.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch

from convnext.benchmark import cpu_name
from convnext.cli import main as cli_main
from convnext.roadmap import load_results

HERE = Path(__file__).resolve().parent
SMOKE = ["--steps", "0,16", "--epochs", "1", "--train-subset", "2048", "--val-subset", "1000"]
SMOKE_NOTE = ("A smoke run: it proves the machinery (engine, per-step records, resume, table, figure) and nothing "
              "about the roadmap. After 16 optimizer steps the BatchNorm running statistics (ResNet-50 evaluates at "
              "chance) and the EMA weights (ConvNeXt-T's EMA top-1 against its raw model's) have not caught up.")


def hardware() -> str:
    cpu = cpu_name()
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    load = ", load average {:.1f} / {:.1f} / {:.1f} at the end (1/5/15 min; shared machine)".format(*os.getloadavg())
    return (f"{cpu}, {os.cpu_count()} cores{gpu}; torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}{load}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="a tiny sweep that proves the machinery works")
    p.add_argument("--seeds", default="0")
    p.add_argument("--name", default=None, help="record name (default: fmnist, or smoke)")
    p.add_argument("--out", default=None, help="sweep directory (default runs/roadmap_<name>)")
    args, extra = p.parse_known_args()
    name = args.name or ("smoke" if args.smoke else "fmnist")
    out = args.out or f"runs/roadmap_{name}"
    figure = Path(os.path.relpath(HERE / f"roadmap_{name}.png"))
    argv = ["roadmap", "--train", "--out", out, "--seeds", args.seeds, "--figure", str(figure),
            *(SMOKE if args.smoke else []), *extra]
    t0 = time.time()
    code = cli_main(argv)
    minutes = (time.time() - t0) / 60
    table = (Path(out) / "results.md").read_text()
    run_minutes = sum(r.get("seconds", 0) for r in load_results(out)) / 60
    command = "convnext " + shlex.join(argv)
    record = HERE / f"roadmap_{name}.md"
    record.write_text(
        f"# Roadmap sweep: {name}\n\n"
        f"Command: `{command}` (via `benchmarks/roadmap_sweep.py {shlex.join(sys.argv[1:])}`)\n\n"
        f"Hardware: {hardware()}\n\n"
        f"Time: {run_minutes:.1f} min of training and evaluation summed over the runs; this invocation "
        f"took {minutes:.1f} min (a resumed sweep trains only what was left).\n\n"
        f"{table}\n\n" + (f"{SMOKE_NOTE}\n\n" if args.smoke else "") + f"![figure](roadmap_{name}.png)\n")
    shutil.copy(Path(out) / "results.json", HERE / f"roadmap_{name}.json")
    print(f"recorded {record} and {figure}")
    return code


if __name__ == "__main__":
    sys.exit(main())
