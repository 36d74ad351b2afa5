"""Where the time goes: torch.profiler's top ops for a ConvNeXt forward (or training step): ours reference,
optimized (`convnext.optimize`), frozen (`convnext.freeze`, inference only), and timm.

    PYTHONPATH=src python benchmarks/profile_paths.py [--model convnext_tiny] [--batch 8] [--threads 2] [--train]
        [--bf16] [--out benchmarks/profile_train_bf16.md]

--out writes the tables, with the command, the CPU and the load average, to a Markdown file: a record that
docs may cite.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from convnext import create_model, fast, freeze, tune_malloc  # noqa: E402
from convnext.benchmark import cpu_name, load_averages  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="convnext_tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train", action="store_true", help="profile forward + backward + AdamW")
    parser.add_argument("--bf16", action="store_true", help="under bf16 autocast")
    parser.add_argument("--rows", type=int, default=12)
    parser.add_argument("--out", type=Path, default=None, help="also write the tables here (Markdown)")
    args = parser.parse_args()
    tune_malloc()  # as every `convnext` command and run_all: all four under the same allocator
    torch.set_num_threads(args.threads)
    import timm

    x = torch.randn(args.batch, 3, args.size, args.size)
    target = torch.randint(0, 1000, (args.batch,))
    candidates: dict[str, Callable[[], nn.Module]] = {
        "ours@reference": lambda: create_model(args.model, optimize=False),
        "ours@optimized": lambda: create_model(args.model),
    }
    if not args.train:
        candidates["ours (frozen)"] = lambda: freeze(create_model(args.model).eval(),
                                                     torch.bfloat16 if args.bf16 else None)
    candidates["timm"] = lambda: timm.create_model(args.model)
    mode = "train" if args.train else "inference"
    precision = "bf16" if args.bf16 else "fp32"
    load_before = load_averages()
    sections = []
    for name, build in candidates.items():
        model = build().train(args.train)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-6) if args.train else None

        def step(model=model, opt=opt) -> None:
            amp = torch.autocast("cpu", dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
            if opt is None:
                with torch.inference_mode(), amp:
                    model(x)
                return
            with amp:
                loss = torch.nn.functional.cross_entropy(model(x).float(), target)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        step()  # warm-up: allocations, weight caches, oneDNN primitive creation
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows)
        sections.append(f"## {name} ({mode}, {precision}, batch {args.batch})\n\n```\n{table}\n```\n")
        print(sections[-1], flush=True)
    if args.out:
        command = "PYTHONPATH=src python " + " ".join(["benchmarks/profile_paths.py", *sys.argv[1:]])
        kernels = fast.describe(mode, "cpu", torch.bfloat16 if args.bf16 else torch.float32)
        header = (f"# Profile: {args.model} {mode}, {precision}, batch {args.batch} at {args.size}\n\n"
                  f"Command: `{command}`\n\nCPU: {cpu_name()} ({fast.capabilities().isa}), {os.cpu_count()} cores, "
                  f"{args.threads} threads; torch {torch.__version__}; our kernels: "
                  f"{kernels}; "
                  f"load average (1/5/15 min) before {load_before}, after {load_averages()}\n\n")
        args.out.write_text(header + "\n".join(sections))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
