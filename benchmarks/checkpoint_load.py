"""How long it takes to get a ConvNeXt with weights: ours (built on the meta device, the file's tensors adopted)
against a random init followed by load_state_dict, and timm's create_model with a pretrained file.

The files are an official release-style {"model": state_dict} .pth and our safetensors + config.json, written
from a random model (no download). Each time is the median of --repeats runs, in seconds, CPU.

    PYTHONPATH=src nice -n 10 python benchmarks/checkpoint_load.py --models convnext_tiny convnext_base

Prints a Markdown table and writes it with the raw numbers to benchmarks/checkpoint_load.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import timm
import torch

import convnext
from convnext.checkpoints import convert

HERE = Path(__file__).resolve().parent


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(name: str, repeats: int, workdir: Path) -> dict[str, float]:
    model = convnext.create_model(name)
    official = workdir / f"{name}_official.pth"
    torch.save({"model": model.state_dict()}, official)
    ours = workdir / f"{name}_ours"
    convnext.save(model, ours)
    del model

    def init_then_load() -> None:
        m = convnext.create_model(name)
        m.load_state_dict(torch.load(official, map_location="cpu", weights_only=True)["model"])

    return {
        "random init": median_time(lambda: convnext.create_model(name), repeats),
        "random init + load_state_dict (.pth)": median_time(init_then_load, repeats),
        "ours: create_model(pretrained=.pth)": median_time(
            lambda: convnext.create_model(name, pretrained=str(official)), repeats),
        "ours: convnext.load(safetensors dir)": median_time(lambda: convnext.load(ours), repeats),
        "timm: create_model(pretrained file)": median_time(
            lambda: timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(official)}), repeats),
        "convert .pth -> timm .safetensors": median_time(
            lambda: convert(official, workdir / "t.safetensors", "timm"), repeats),
        "file MB": official.stat().st_size / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["convnext_tiny", "convnext_base"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(min(4, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: bench(name, args.repeats, Path(tmp)) for name in args.models}
    rows = list(next(iter(results.values())))
    lines = [f"| seconds (median of {args.repeats}) | {' | '.join(results)} |",
             "|---|" + "---|" * len(results)]
    lines += [f"| {row} | " + " | ".join(f"{results[n][row]:.2f}" for n in results) + " |" for row in rows]
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, " \
              f"load average {os.getloadavg()[0]:.1f} at the end"
    table = "\n".join(lines) + f"\n\n{machine}\n"
    print(table)
    (HERE / "checkpoint_load.md").write_text(f"# Time to a ConvNeXt with weights\n\n{table}")
    (HERE / "checkpoint_load.json").write_text(json.dumps({"results": results, "machine": machine}, indent=2) + "\n")


if __name__ == "__main__":
    main()
