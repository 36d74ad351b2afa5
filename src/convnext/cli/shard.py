"""`convnext shard`: write an ImageFolder (or Fashion-MNIST) as WebDataset tar shards, or index existing shards.

    convnext shard /data/imagenet /data/imagenet-wds --shard-size 256MB --workers 16
    torchrun --nproc_per_node 8 -m convnext train --recipe in1k_tiny \\
        --set data.dataset=wds --set data.root=/data/imagenet-wds
    convnext shard --index '/data/other/train-{000000..001023}.tar'   # someone else's shards, indexed once
"""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "\n".join(__doc__.split("\n")[2:7])
    parser.add_argument("src", nargs="?", metavar="SRC",
                        help="an ImageFolder root holding train/ and val/ (SRC/<split>/<class>/<image>), "
                             "or fashion_mnist (or a folder of its idx .gz files)")
    parser.add_argument("out", nargs="?", metavar="OUT",
                        help="output folder: OUT/<split>-000000.tar ..., classes.json, manifest.json")
    parser.add_argument("--splits", default="train,val", help="comma-separated split folders to write (default: "
                                                                "train,val; those present are written)")
    parser.add_argument("--shard-size", default="256MB", help="target bytes per shard, e.g. 256MB or 1GB")
    parser.add_argument("--max-count", type=int, help="also at most this many samples per shard")
    parser.add_argument("--no-shuffle", dest="shuffle", action="store_false",
                        help="keep the source order (class by class) instead of a seeded random order; "
                             "streaming readers with a shuffle buffer need the shuffled order")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffled order")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="processes reading and checking images (default: min(8, CPUs))")
    parser.add_argument("--index", nargs="+", metavar="SHARDS",
                        help="instead of writing: index and check existing shards (a pattern, glob or folder), "
                             "so that the ranks of a job do not all index them at start")


def main(args: argparse.Namespace) -> int:
    from ..data.shards import index_shards, parse_size, resolve_shards, write_shards

    if args.index:
        counts = index_shards([p for spec in args.index for p in resolve_shards(spec)])
        print(f"indexed {len(counts)} shards, {sum(counts.values())} samples")
        return 0
    if not args.src or not args.out:
        raise ValueError("give SRC and OUT (convnext shard SRC OUT), or --index SHARDS")
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    manifest = write_shards(args.src, args.out, splits, max_size=parse_size(args.shard_size),
                            max_count=args.max_count, shuffle=args.shuffle, seed=args.seed, workers=args.workers)
    total = sum(s["samples"] for s in manifest["splits"].values())
    skipped = sum(len(s["skipped"]) for s in manifest["splits"].values())
    print(f"wrote {total} samples to {args.out} ({', '.join(manifest['splits'])}), verified by reading every shard "
          f"back; {skipped} unreadable image(s) skipped")
    return 0
