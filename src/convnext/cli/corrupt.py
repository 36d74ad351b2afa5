"""`convnext corrupt`: the 15 ImageNet-C corruptions x 5 severities of a data set."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..robustness.corrupt import fashion_mnist_samples, folder_samples, write_corrupted
from ..robustness.metrics import CORRUPTIONS, SEVERITIES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", choices=("folder", "fashion-mnist"), default="folder",
                        help="folder: an ImageFolder (DATA/<class>/<image>); fashion-mnist: its test set")
    parser.add_argument("--data", help="the ImageFolder root, or the Fashion-MNIST idx folder (default: Debian's)")
    parser.add_argument("--out", required=True, help="output root: OUT/<corruption>/<severity>/<class>/<name>.png")
    parser.add_argument("--corruptions", nargs="+", default=list(CORRUPTIONS), metavar="NAME",
                        help="subset of the 15 corruptions (default: all)")
    parser.add_argument("--severities", nargs="+", type=int, default=list(SEVERITIES), choices=SEVERITIES)
    parser.add_argument("--limit", type=int, help="only the first N images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="processes corrupting in parallel")


def main(args: argparse.Namespace) -> int:
    if args.dataset == "folder":
        if not args.data:
            raise SystemExit("convnext corrupt: --data DIR is required with --dataset folder")
        data, out = Path(args.data).resolve(), Path(args.out).resolve()
        if out == data or data in out.parents:
            raise SystemExit(f"convnext corrupt: --out {out} lies inside --data {data}; choose another folder "
                             "so that the corrupted copy is not read back as a class")
        total, samples = folder_samples(data, args.limit)
    else:
        total, samples = fashion_mnist_samples(args.data, args.limit)
    out = write_corrupted(samples, args.out, args.corruptions, args.severities, args.seed, args.workers, total)
    print(f"wrote {total} images x {len(args.corruptions)} corruptions x {len(args.severities)} severities to {out}")
    return 0
