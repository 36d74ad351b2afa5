"""`convnext eval`: top-1/top-5 of a checkpoint on a data set.

    convnext eval --weights runs/fashion_mnist/best.pt
    convnext eval --weights convnext_tiny_1k_224_ema.pth --model convnext_tiny --data /data/imagenet --split val
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..evaluate import TTA_MODES, evaluate, load_for_eval


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True, help="a training checkpoint (.pt) or weights in any layout")
    parser.add_argument("--data", default=None,
                        help="'fashion_mnist' or an ImageNet-layout folder (with class sub-folders in --split); "
                             "default: the checkpoint's own data set")
    parser.add_argument("--split", default="val", help="sub-folder of --data to evaluate (default: val)")
    parser.add_argument("--model", default=None, help="model name, for weights that are not our checkpoints")
    parser.add_argument("--ema", default=None,
                        help="also evaluate these EMA weights (default: best_ema.pt beside a best.pt, or the EMA "
                             "inside a last-*.pt checkpoint)")
    parser.add_argument("--input-size", type=int, default=None, help="eval resolution (default: the checkpoint's "
                        "or 224)")
    parser.add_argument("--crop-pct", type=float, default=None,
                        help="resize to size/crop_pct and center-crop (default: 0.875 below 384, squash at 384+)")
    parser.add_argument("--tta", choices=TTA_MODES, default="none",
                        help="test-time augmentation: 'hflip' averages the predictions for each image and its mirror")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def main(args: argparse.Namespace) -> int:
    from ..data.datasets import DataError, SeededDataset, build_datasets, collate_skipping
    from ..train.config import DataConfig, from_dict
    from ..train.loop import resolve_device

    device = resolve_device(args.device)
    try:
        model, cfg, embedded_ema = load_for_eval(args.weights, args.model)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    data = from_dict(cfg).data if cfg else DataConfig()
    if args.data:
        if args.data == "fashion_mnist":
            data = DataConfig(dataset="fashion_mnist", input_size=data.input_size if cfg else 28)
        else:
            data = DataConfig(dataset="imagefolder", root=args.data, input_size=data.input_size)
    data.val_split = args.split
    overrides = {"limit_val": args.limit, "num_workers": args.workers}
    if args.input_size:
        overrides["input_size"] = args.input_size
    if args.crop_pct:
        overrides["crop_pct"] = args.crop_pct
    for key, value in overrides.items():
        setattr(data, key, value)
    try:
        _, val, num_classes, _ = build_datasets(data, for_training=False)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    loader = torch.utils.data.DataLoader(SeededDataset(val), batch_size=args.batch_size, num_workers=args.workers,
                                         collate_fn=collate_skipping)
    model.to(device)
    results = {"weights": args.weights, "tta": args.tta, **evaluate(model, loader, device, tta=args.tta)}
    ema_path = args.ema or (str(Path(args.weights).with_name("best_ema.pt"))
                            if Path(args.weights).name == "best.pt" else None)
    ema_model = None
    if ema_path and Path(ema_path).exists():
        ema_model, _, _ = load_for_eval(ema_path, args.model)
    elif ema_path is None and embedded_ema is not None:
        ema_model, ema_path = embedded_ema, f"{args.weights} (its EMA weights)"
    if ema_model is not None:
        ema = evaluate(ema_model.to(device), loader, device, tta=args.tta)
        results.update(ema_top1=ema["top1"], ema_top5=ema["top5"], ema_weights=ema_path)
    if args.json:
        print(json.dumps(results))
    else:
        print(f"{args.weights}: top-1 {results['top1']:.2f}%  top-5 {results['top5']:.2f}%  "
              f"({results['n']} images{', hflip TTA' if args.tta == 'hflip' else ''})")
        if "ema_top1" in results:
            print(f"{ema_path} (EMA): top-1 {results['ema_top1']:.2f}%  top-5 {results['ema_top5']:.2f}%")
    return 0
