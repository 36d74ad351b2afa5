"""`convnext eval`: top-1/top-5 of a checkpoint on a data set, through the model's own input format.

    convnext eval --weights runs/fashion_mnist/best.pt                 # the data set it was trained on
    convnext eval --weights runs/fashion_mnist/best.pt --data my_fashion_photos   # <folder>/val/<class>/<image>
    convnext eval --weights convnext_tiny_1k_224_ema.pth --data /data/imagenet --split val
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch
from torch import nn

from ..evaluate import TTA_MODES, evaluate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True,
                        help="a checkpoint: a training checkpoint (best.pt, last-*.pt), our safetensors folder, an HF "
                             "folder, or official/timm/torchvision weights (with --model also a release tag or URL)")
    parser.add_argument("--data", default=None,
                        help="'fashion_mnist' or an ImageNet-layout folder (class sub-folders in --split, named after "
                             "the model's classes or one per class in class order); default: the checkpoint's own "
                             "data set")
    parser.add_argument("--split", default="val", help="sub-folder of --data to evaluate (default: val)")
    parser.add_argument("--model", default=None,
                        help="model name, to read the weights into that model (default: the checkpoint's own)")
    parser.add_argument("--ema", default=None,
                        help="also evaluate these EMA weights (default: best_ema.pt beside a best.pt, or the EMA "
                             "inside a last-*.pt checkpoint)")
    parser.add_argument("--input-size", type=int, default=None,
                        help="eval resolution (default: the checkpoint's data config)")
    parser.add_argument("--crop-pct", type=float, default=None,
                        help="resize to size/crop_pct and center-crop (default: the checkpoint's data config)")
    parser.add_argument("--tta", choices=TTA_MODES, default=None,
                        help="test-time augmentation: 'hflip' averages the predictions for each image and its mirror "
                             "(default: as the checkpoint's recipe scored validation and test, run.tta; else none)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def main(args: argparse.Namespace) -> int:
    from ..api import create_model, read_source
    from ..checkpoints import build_from_source
    from ..fast import freeze
    from ..train.loop import resolve_device

    device = resolve_device(args.device)
    source = read_source(args.weights) if Path(args.weights).exists() else None
    if args.model:
        model = create_model(args.model, pretrained=args.weights)
    elif source is None:
        raise FileNotFoundError(f"Checkpoint not found: {args.weights}")
    else:
        model = build_from_source(source)
    loader = _loader(args, source, model)
    if args.tta is None:  # score as the run that chose these weights did, so its reported figures reproduce
        recipe_run = (source.recipe or {}).get("run") if source is not None else None
        args.tta = recipe_run.get("tta", "none") if isinstance(recipe_run, dict) else "none"
    results = {"weights": args.weights, "tta": args.tta,
               **evaluate(freeze(model.to(device)), loader, device, tta=args.tta)}

    ema_path = args.ema or (str(Path(args.weights).with_name("best_ema.pt"))
                            if Path(args.weights).name == "best.pt" else None)
    ema_model = None
    if ema_path and Path(ema_path).exists():
        ema_model = build_from_source(read_source(ema_path))
    elif ema_path is None and source is not None and source.ema is not None:
        ema_model = build_from_source(dataclasses.replace(source, state_dict=source.ema))
        ema_path = f"{args.weights} (its EMA weights)"
    if ema_model is not None:
        ema = evaluate(freeze(ema_model.to(device)), loader, device, tta=args.tta)
        results.update(ema_top1=ema["top1"], ema_top5=ema["top5"], ema_weights=ema_path)
    if args.json:
        print(json.dumps(results))
    else:
        print(f"{args.weights}: top-1 {results['top1']:.2f}%  top-5 {results['top5']:.2f}%  "
              f"({results['n']} images{', hflip TTA' if args.tta == 'hflip' else ''})")
        if "ema_top1" in results:
            print(f"{ema_path} (EMA): top-1 {results['ema_top1']:.2f}%  top-5 {results['ema_top5']:.2f}%")
    return 0


def _loader(args: argparse.Namespace, source, model: nn.Module) -> torch.utils.data.DataLoader:
    """The evaluation images: the checkpoint's own data set as training evaluated it, Fashion-MNIST, or a
    folder read through the model's own transform with its classes mapped onto the model's."""
    from ..data.datasets import CheckedImageFolder, SeededDataset, build_datasets, collate_skipping
    from ..data.transforms import transform
    from ..evaluate import folder_class_map
    from ..train.config import DataConfig, from_dict

    recipe = source.recipe if source is not None else None
    if args.data and args.data != "fashion_mnist":
        spec = model.data_config
        if args.input_size:
            spec = spec.at_size(args.input_size)
        if args.crop_pct:
            spec = spec.replace(crop_pct=args.crop_pct, crop_mode="center")
        val = CheckedImageFolder(Path(args.data) / args.split, transform(spec))
        mapping = folder_class_map(val.classes, spec.class_names, model.num_classes, f"{Path(args.data) / args.split}")
        val.samples = val.imgs = [(path, mapping[t]) for path, t in val.samples]
        val.targets = [t for _, t in val.samples]
        if args.limit:
            val = torch.utils.data.Subset(val, range(min(args.limit, len(val))))
    else:
        if args.data == "fashion_mnist":
            data = DataConfig(dataset="fashion_mnist", input_size=28)
        elif recipe is not None:
            data = from_dict(recipe).data
        else:
            raise ValueError(f"{args.weights} does not record the data set it was trained on: pass --data FOLDER "
                             f"(class sub-folders in FOLDER/{args.split}) or --data fashion_mnist.")
        data.val_split = args.split
        data.limit_val, data.num_workers = args.limit, args.workers
        if args.input_size:
            data.input_size = args.input_size
        if args.crop_pct:
            data.crop_pct = args.crop_pct
        _, val, _, _ = build_datasets(data, for_training=False)
    return torch.utils.data.DataLoader(SeededDataset(val), batch_size=args.batch_size, num_workers=args.workers,
                                       collate_fn=collate_skipping)
