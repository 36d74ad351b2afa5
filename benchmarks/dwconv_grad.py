"""The depthwise convolution's weight gradient: PyTorch's (oneDNN) against ours (convnext.fast.dwconv), on
the shapes of a ConvNeXt-T training step at batch 32 and of a 32-64-128 ConvNeXt on 28x28 images at batch
128 (convnext_fmnist with 7x7 kernels; the default now uses 3x3, where oneDNN's own gradient is fast).

    PYTHONPATH=src python benchmarks/dwconv_grad.py [--threads 2]

Each time is the median of 7 runs after 2 warm-ups, in ms. Prints a Markdown table and writes it with the
raw numbers to benchmarks/dwconv_grad.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from convnext.benchmark import cpu_name
from convnext.fast import dwconv

HERE = Path(__file__).resolve().parent
# (label, batch, channels, size, blocks in the model)
SHAPES = [("ConvNeXt-T stage 0", 32, 96, 56, 3), ("ConvNeXt-T stage 1", 32, 192, 28, 3),
          ("ConvNeXt-T stage 2", 32, 384, 14, 9), ("ConvNeXt-T stage 3", 32, 768, 7, 3),
          ("28x28 model (dims 32-64-128) stage 0", 128, 32, 14, 2),
          ("28x28 model (dims 32-64-128) stage 1", 128, 64, 7, 2),
          ("28x28 model (dims 32-64-128) stage 2", 128, 128, 3, 2)]


def median_ms(fn, repeats: int = 7) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--kernel", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    kernel = dwconv._load_kernel()
    if kernel is None:
        raise SystemExit("the kernel did not build here (see the warning above): nothing to compare")
    k, rows, total = args.kernel, [], [0.0, 0.0]
    for label, n, c, s, blocks in SHAPES:
        x = torch.randn(n, c, s, s).contiguous(memory_format=torch.channels_last)
        g = torch.randn_like(x)
        w = torch.randn(c, 1, k, k)

        def native(x=x, g=g, w=w, c=c):
            return torch.ops.aten.convolution_backward(g, x, w, [c], [1, 1], [k // 2] * 2, [1, 1], False, [0, 0], c,
                                                       [False, True, False])[1]

        err = ((kernel(x, g, k) - native()).abs().max() / native().abs().max()).item()
        t_native, t_ours = median_ms(native), median_ms(lambda x=x, g=g: kernel(x, g, k))
        if label.startswith("ConvNeXt-T"):
            total[0] += blocks * t_native
            total[1] += blocks * t_ours
        rows.append({"shape": label, "input": [n, c, s, s], "blocks": blocks, "pytorch_ms": round(t_native, 2),
                     "ours_ms": round(t_ours, 2), "speedup": round(t_native / t_ours, 2), "max_rel_err": err})
    lines = [f"# Depthwise {k}x{k} weight gradient: PyTorch (oneDNN) vs convnext.fast.dwconv", "",
             f"CPU: {cpu_name()}, {os.cpu_count()} cores, torch threads: {args.threads}; "
             f"torch {torch.__version__}; load average {os.getloadavg()[0]:.1f} at the end; "
             f"command `PYTHONPATH=src python benchmarks/dwconv_grad.py --threads {args.threads}`", "",
             "| shape | input (N, C, H, W) | PyTorch ms | ours ms | speedup | max rel. error |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['shape']} | {tuple(r['input'])} | {r['pytorch_ms']} | {r['ours_ms']} | {r['speedup']}x | "
              f"{r['max_rel_err']:.0e} |" for r in rows]
    lines += ["", f"Per ConvNeXt-T training step (18 blocks, batch 32): PyTorch {total[0]:.0f} ms, "
                  f"ours {total[1]:.0f} ms."]
    text = "\n".join(lines) + "\n"
    print(text)
    (HERE / "dwconv_grad.md").write_text(text)
    (HERE / "dwconv_grad.json").write_text(json.dumps({"threads": args.threads, "kernel": k, "rows": rows,
                                                      "convnext_tiny_step_ms": total}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
