"""`convnext train-segmentation`: UperNet with a ConvNeXt backbone on ADE20K-format data (paper Table 4).

    convnext train-segmentation --data ADEChallengeData2016 --pretrained convnext_tiny.pth
    torchrun --nproc_per_node 8 -m convnext train-segmentation --data ...   # the paper: 8 GPUs x 2 images
    convnext train-segmentation --eval-only runs/upernet_convnext_tiny/best.pt --data ... \\
        --scales 0.5 0.75 1.0 1.25 1.5 1.75 --flip                            # multi-scale mIoU
    convnext train-segmentation --synthetic 64 --iters 300 ...               # a demo on generated shapes

Defaults are the paper's: 160k iterations, AdamW lr 1e-4, wd 0.05, stage-wise lr decay 0.9, poly schedule
with 1500 warmup iterations, drop path 0.4, 512x512 crops of images rescaled by 0.5-2.0 around 2048x512.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from ..downstream.data import ADE20KSegmentation, SegmentationEvalTransform, segmentation_train_transform
from ..downstream.engine import DownstreamTask, load_trained
from ..downstream.metrics import evaluate_segmentation
from ..downstream.segmentation import create_segmenter, segmentation_loss
from ..train.loop import resolve_device
from ._downstream import add_common_arguments, loop_config, run_and_report, run_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = parser.add_argument_group("data (ADE20K layout: ROOT/images/SPLIT/*.jpg, ROOT/annotations/SPLIT/*.png)")
    d.add_argument("--data", help="data set root")
    d.add_argument("--train-split", default="training")
    d.add_argument("--val-split", default="validation")
    d.add_argument("--num-classes", type=int, default=150, help="classes after reduce_zero_label (ADE20K: 150)")
    d.add_argument("--no-reduce-zero-label", action="store_true",
                   help="labels are already 0..N-1 with 255 ignored (ADE20K's 0 = 'other' is otherwise ignored)")
    d.add_argument("--crop", type=int, default=512, help="training crop (default 512)")
    d.add_argument("--scale", type=int, nargs=2, default=[512, 2048], metavar=("SHORT", "LONG"),
                   help="image scale: training rescales it by 0.5-2.0, evaluation resizes to it (512 2048)")
    e = parser.add_argument_group("evaluation")
    e.add_argument("--scales", type=float, nargs="+", default=[1.0],
                   help="test scales (multi-scale as the paper: 0.5 0.75 1.0 1.25 1.5 1.75 with --flip)")
    e.add_argument("--flip", action="store_true", help="also average horizontally flipped predictions")
    e.add_argument("--test-mode", default="whole", choices=["whole", "slide"],
                   help="whole image, or sliding --crop windows with --test-stride as the official configs")
    e.add_argument("--test-stride", type=int, default=341, help="sliding-window stride (default 341)")
    s = parser.add_argument_group("schedule")
    s.add_argument("--iters", type=int, default=160_000, help="iterations (paper 160k)")
    add_common_arguments(parser, "upernet_convnext_tiny", layer_decay=0.9, warmup=1500, batch=2)


def _data_root(args: argparse.Namespace):
    if args.synthetic:
        from ..downstream.synthetic import make_ade_shapes

        root = run_dir(args) / "data"
        if not (root / "annotations" / "validation").exists():
            make_ade_shapes(root, "training", args.synthetic, seed=args.seed)
            make_ade_shapes(root, "validation", max(4, args.synthetic // 4), seed=args.seed + 1)
        args.train_split, args.val_split = "training", "validation"
        return root
    if not args.data:
        raise ValueError("missing --data ROOT (or use --synthetic N for a demo on generated shapes)")
    return args.data


def _evaluator(args: argparse.Namespace, root):
    short, long = args.scale
    val = ADE20KSegmentation(root, args.val_split, SegmentationEvalTransform(short, long),
                             reduce_zero_label=not args.no_reduce_zero_label)
    loader = torch.utils.data.DataLoader(val, batch_size=1, num_workers=args.workers)  # images differ in size
    return lambda model: evaluate_segmentation(model, loader, args.num_classes, args.scales, args.flip,
                                               args.test_mode, args.crop, args.test_stride, resolve_device(args.device))


def _loss(model, batch, device):
    images, labels = batch
    return segmentation_loss(model(images.to(device, non_blocking=True)), labels.to(device, non_blocking=True))


def _collate(items):
    images, labels = zip(*items, strict=True)
    return torch.stack(images), torch.stack(labels)


def main(args: argparse.Namespace) -> int:
    if args.eval_only:
        root = _data_root(args)
        model, _ = load_trained(args.eval_only, create_segmenter)
        metrics = _evaluator(args, root)(model.to(resolve_device(args.device)))
        metrics.pop("IoU")
        print(json.dumps(metrics))
        return 0

    def task() -> DownstreamTask:
        root = _data_root(args)
        short, long = args.scale
        train = ADE20KSegmentation(root, args.train_split, segmentation_train_transform(args.crop, short, long),
                                   reduce_zero_label=not args.no_reduce_zero_label)
        model = create_segmenter(args.model, args.num_classes, pretrained_backbone=args.pretrained or False,
                                 drop_path_rate=args.drop_path, **args.model_args)
        return DownstreamTask("segmentation", model, train, _collate, _loss, _evaluator(args, root), "mIoU",
                              model.config)

    def cfg(t: DownstreamTask):
        if len(t.train_set) < args.batch_size * int(os.environ.get("WORLD_SIZE", "1")):
            raise ValueError(f"{len(t.train_set)} training images are fewer than one batch; lower --batch-size")
        return loop_config(args, args.iters, "poly", warmup_ratio=1e-6)

    return run_and_report(task, cfg, args.seed)
