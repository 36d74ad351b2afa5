"""Where the time goes: torch.profiler's top ops for a ConvNeXt forward (or train step) per compute path and timm.

Usage: python benchmarks/profile_paths.py [--model convnext_tiny] [--batch 8] [--threads 2] [--train] [--bf16]
The tables in docs/speed.md ("Where the time went") come from this script.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from convnext import create_model  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="convnext_tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train", action="store_true", help="profile forward + backward + AdamW")
    parser.add_argument("--bf16", action="store_true", help="under bf16 autocast")
    parser.add_argument("--rows", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import timm

    x = torch.randn(args.batch, 3, args.size, args.size)
    target = torch.randint(0, 1000, (args.batch,))
    paths = ("linear", "conv", "fused")
    candidates = {f"ours@{p}": lambda p=p: create_model(args.model, compute_path=p) for p in paths}
    candidates["timm"] = lambda: timm.create_model(args.model)
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
        print(f"\n## {name} ({'train step' if args.train else 'inference'}, {'bf16' if args.bf16 else 'fp32'}, "
              f"batch {args.batch}, {args.threads} threads)\n")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
