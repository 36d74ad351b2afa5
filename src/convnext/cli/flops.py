"""`convnext flops`: GMACs and params per stage at any input size."""

from __future__ import annotations

import argparse

from ..benchmark import build_for_counting
from ..flops import format_breakdown, stage_breakdown
from ._common import parse_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `convnext flops`."""
    parser.add_argument("models", nargs="+", help="model names (`convnext models`), or SOURCE:NAME as in "
                                                  "`convnext benchmark` (timm:, tv:, hf:)")
    parser.add_argument("--size", nargs="+", type=parse_size, default=[(224, 224)],
                        help="input sizes, N or HxW (e.g. 224 384 1280x800 2048x512); default 224")
    parser.add_argument("--features", action="store_true",
                        help="count the detection/segmentation backbone (no head; a LayerNorm per output stage)")
    parser.add_argument("--in-chans", type=int, default=3)


def main(args: argparse.Namespace) -> int:
    """Run `convnext flops`."""
    from ..downstream import downstream_flops

    for spec in args.models:
        # Detectors and segmenters are counted the way mmdet/mmseg counted them for the paper (fixed proposal
        # counts, decode head only), which a plain forward pass cannot express.
        # Without --size, each at the input size the paper reports (detectors 800x1280, segmenters 512x2048).
        if (whole := downstream_flops(spec, args.size[0] if args.size != [(224, 224)] else None)) is not None:
            print(f"## {spec}\n")
            print("\n".join(f"{k:>14}: {v if v is not None else '-'}" for k, v in whole.items()))
            print()
            continue
        model = build_for_counting(spec, args.features, args.in_chans)
        print(f"## {spec}{' (backbone)' if args.features else ''}\n")
        print(format_breakdown(stage_breakdown(model, args.size, args.in_chans), args.size))
        print()
    return 0
