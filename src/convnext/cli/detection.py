"""`convnext train-detection`: (Cascade) Mask R-CNN with a ConvNeXt backbone on COCO-format data (paper Table 3).

    convnext train-detection --train-images coco/train2017 --train-ann coco/annotations/instances_train2017.json \\
        --val-images coco/val2017 --val-ann coco/annotations/instances_val2017.json --pretrained convnext_tiny.pth
    torchrun --nproc_per_node 8 -m convnext train-detection ...      # the paper: 8 GPUs x 2 images
    convnext train-detection --synthetic 64 --epochs 12 ...          # a demo on generated shapes
    convnext train-detection --eval-only runs/maskrcnn_convnext_tiny/best.pt --val-images ... --val-ann ...

Defaults are the paper's 3x schedule: AdamW lr 1e-4, wd 0.05, layer decay 0.95, drop path 0.4, 36 epochs
with the lr divided by 10 at epochs 27 and 33, 500 warmup iterations, multi-scale training (short side
480-800, long side <= 1333) with flips.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from ..downstream.data import coco_detection, coco_of, collate_detection, num_coco_classes
from ..downstream.detection import MULTISCALE_MIN_SIZES, create_detector
from ..downstream.engine import DownstreamTask, load_trained
from ..downstream.metrics import evaluate_detection
from ..train.loop import resolve_device
from ._downstream import add_common_arguments, loop_config, run_and_report, run_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = parser.add_argument_group("data (COCO format: an image folder and an instances json per split)")
    d.add_argument("--train-images", help="training image folder")
    d.add_argument("--train-ann", help="training annotations (COCO instances json)")
    d.add_argument("--val-images", help="validation image folder")
    d.add_argument("--val-ann", help="validation annotations (COCO instances json)")
    d.add_argument("--num-classes", type=int, default=None,
                   help="classes including background (default: the largest category id + 1; COCO: 91)")
    d.add_argument("--min-size", type=int, nargs="+", default=list(MULTISCALE_MIN_SIZES),
                   help="training short sides, one drawn per batch; the last is used for evaluation")
    d.add_argument("--max-size", type=int, default=1333, help="longest side (default 1333)")
    d.add_argument("--crop-policy", type=float, default=0.5,
                   help="probability of the official random-crop policy (resize 400-600, crop 384-600; 0: off)")
    s = parser.add_argument_group("schedule")
    s.add_argument("--epochs", type=float, default=36, help="epochs (3x schedule: 36)")
    s.add_argument("--milestones", type=float, nargs="*", default=[27, 33], help="epochs where lr /= 10")
    s.add_argument("--max-iters", type=int, default=0, help="stop after this many iterations (short runs)")
    add_common_arguments(parser, "maskrcnn_convnext_tiny", layer_decay=0.95, warmup=500, batch=2)


def _data(args: argparse.Namespace):
    if args.synthetic:
        from ..downstream.synthetic import make_coco_shapes

        root = run_dir(args) / "data"
        if not (root / "train" / "annotations.json").exists():
            make_coco_shapes(root / "train", args.synthetic, seed=args.seed)
            make_coco_shapes(root / "val", max(4, args.synthetic // 4), seed=args.seed + 1)
        args.train_images, args.train_ann = root / "train" / "images", root / "train" / "annotations.json"
        args.val_images, args.val_ann = root / "val" / "images", root / "val" / "annotations.json"
    missing = [f"--{k.replace('_', '-')}" for k in ("val_images", "val_ann") if not getattr(args, k)]
    if not args.eval_only:
        missing += [f"--{k.replace('_', '-')}" for k in ("train_images", "train_ann") if not getattr(args, k)]
    if missing:
        raise ValueError(f"missing {', '.join(missing)} (or use --synthetic N for a demo on generated shapes)")
    val = coco_detection(args.val_images, args.val_ann, train=False)
    train = None if args.eval_only else coco_detection(args.train_images, args.train_ann, train=True,
                                                         crop_policy=args.crop_policy)
    return train, val


def _evaluator(args: argparse.Namespace, val):
    loader = torch.utils.data.DataLoader(val, batch_size=2, num_workers=args.workers, collate_fn=collate_detection)
    return lambda model: evaluate_detection(model, loader, coco_of(val), resolve_device(args.device))


def _loss(model, batch, device):
    images, targets = batch
    images = [im.to(device, non_blocking=True) for im in images]
    targets = [{k: v.to(device) for k, v in t.items() if isinstance(v, torch.Tensor)} for t in targets]
    return model(images, targets)


def main(args: argparse.Namespace) -> int:
    if args.eval_only:
        _, val = _data(args)
        model, _ = load_trained(args.eval_only, create_detector)
        print(json.dumps(_evaluator(args, val)(model.to(resolve_device(args.device)))))
        return 0

    def task() -> DownstreamTask:
        train, val = _data(args)
        num_classes = args.num_classes or num_coco_classes(train)
        model = create_detector(args.model, num_classes, pretrained_backbone=args.pretrained or False,
                                drop_path_rate=args.drop_path, min_size=tuple(args.min_size), max_size=args.max_size,
                                **args.model_args)
        return DownstreamTask("detection", model, train, collate_detection, _loss, _evaluator(args, val), "bbox_AP",
                    model.config)

    def cfg(t: DownstreamTask):
        per_epoch = len(t.train_set) // (args.batch_size * int(os.environ.get("WORLD_SIZE", "1")))
        if per_epoch == 0:
            raise ValueError(f"{len(t.train_set)} training images are fewer than one batch; lower --batch-size")
        iters = round(args.epochs * per_epoch)
        if args.max_iters:
            iters = min(iters, args.max_iters)
        milestones = tuple(round(m * per_epoch) for m in args.milestones)
        return loop_config(args, iters, "step", warmup_ratio=1e-3, milestones=milestones)

    return run_and_report(task, cfg, args.seed)
