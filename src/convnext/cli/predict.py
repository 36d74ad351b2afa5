"""`convnext predict`: the top-k classes of images, with the model's own input format and class names.

    convnext predict shirt.png --weights runs/fashion_mnist/best.pt
    convnext predict cat.jpg dog.jpg --weights tiny_folder --json
    convnext predict cat.jpg --model convnext_base --weights in22k_ft_in1k_384
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._common import load_weights


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMG", help="image files")
    parser.add_argument("--weights", default=None,
                        help="a checkpoint: a training checkpoint (best.pt), our safetensors folder, an HF folder, "
                             "or official/timm/torchvision weights; or, with --model, a release tag such as "
                             "in22k_ft_in1k_384 or a URL (default: the model's official release)")
    parser.add_argument("--model", default=None,
                        help="model name, for a release tag or URL (default: the checkpoint's own, or convnext_tiny)")
    parser.add_argument("--size", type=int, default=None,
                        help="evaluate at this resolution instead of the checkpoint's (384 and above: squash, no crop)")
    parser.add_argument("--topk", type=int, default=5, help="classes to print per image")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object per image: {image, indices, names, probs}")


def main(args: argparse.Namespace) -> int:
    from ..fast import freeze
    from ..predict import predict

    if args.topk < 1:
        raise ValueError(f"--topk must be at least 1, not {args.topk}")
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:  # before loading a model, which may mean a download
        raise FileNotFoundError(f"Image not found: {missing[0]}" + (f" (and {len(missing) - 1} more)"
                                                                    if len(missing) > 1 else ""))
    model = load_weights(args.weights, args.model)
    results = predict(freeze(model), args.images, topk=args.topk, size=args.size, data_config=model.data_config)
    for path, result in zip(args.images, results, strict=True):
        if args.json:
            print(json.dumps({"image": path, **result.to_dict()}))
            continue
        print(path)
        for rank, (idx, name, prob) in enumerate(zip(result.indices, result.names, result.probs, strict=True), 1):
            print(f"  {rank}. {prob:7.2%}  {name} ({idx})")
    return 0
