"""`convnext predict`: the top-k classes of images."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..predict import predict


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMG", help="image files")
    parser.add_argument("--model", default=None,
                        help="model name (default: from --weights, or convnext_tiny with the official weights)")
    parser.add_argument("--weights", default=None,
                        help="checkpoint (ours, official, timm, torchvision or HF), a release tag such as "
                             "in22k_ft_in1k_384, or a URL; default: the model's official release")
    parser.add_argument("--size", type=int, default=224, help="input size (384: squash resize, no crop)")
    parser.add_argument("--topk", type=int, default=5, help="classes to print per image")


def main(args: argparse.Namespace) -> int:
    from ..api import create_model
    from ..checkpoints import CheckpointError, DownloadError, load

    try:
        if args.weights and args.model is None and Path(args.weights).exists():
            model = load(args.weights)
        else:
            model = create_model(args.model or "convnext_tiny", pretrained=args.weights or True)
        results = predict(model, args.images, topk=args.topk, size=args.size)
    except (CheckpointError, DownloadError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path, result in zip(args.images, results, strict=True):
        print(path)
        for rank, (idx, name, prob) in enumerate(zip(result.indices, result.names, result.probs, strict=True), 1):
            print(f"  {rank}. {prob:7.2%}  {name} ({idx})")
    return 0
