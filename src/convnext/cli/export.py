"""`convnext export`: ONNX, TorchScript and ExportedProgram files, verified against PyTorch on real images."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..api import create_model
from ..export import FORMATS, export, fold_layer_scale, sample_images, top1_agreement


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model name, e.g. convnext_tiny (see `convnext models`)")
    parser.add_argument("--weights", help="checkpoint file in any layout create_model reads (default: random init)")
    parser.add_argument("--format", required=True, choices=tuple(FORMATS))
    parser.add_argument("--out", help="output file (default: MODEL_SIZE.onnx / .ts / .pt2)")
    parser.add_argument("--size", type=int, nargs="+", default=[224], metavar="PX",
                        help="input height [width] (default 224)")
    parser.add_argument("--num-classes", type=int, help="classifier outputs (default: the checkpoint's, or 1000)")
    parser.add_argument("--in-chans", type=int, default=3)
    parser.add_argument("--fold-layer-scale", action="store_true",
                        help="fold gamma into pwconv2 first (checked for equal top-1 on the images)")
    parser.add_argument("--images", nargs="+", help="images to verify on (default: scikit-image's photographs)")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest allowed logit difference")


def main(args: argparse.Namespace) -> int:
    if len(args.size) > 2:
        raise SystemExit("convnext export: --size takes a height and an optional width")
    size = (args.size[0], args.size[-1])
    out = Path(args.out or f"{args.model}_{size[0]}x{size[1]}{FORMATS[args.format]}")
    if args.format == "exported-program" and out.suffix != ".pt2":
        raise SystemExit(f"convnext export: {out}: an ExportedProgram file must end in .pt2")
    model = create_model(args.model, pretrained=args.weights or False, num_classes=args.num_classes,
                         in_chans=args.in_chans).eval()
    images = sample_images(size, args.in_chans, args.images)
    if args.fold_layer_scale:
        folded = fold_layer_scale(model)
        same, diff = top1_agreement(model, folded, images)
        if same < 1.0:
            raise SystemExit(f"convnext export: folding layer scale changed the top-1 of {1 - same:.0%} of the "
                             f"images (logits differ by {diff:.3g}); not exporting it")
        print(f"layer scale folded: same top-1 on {len(images)} images, logits within {diff:.2g}")
        model = folded
    path, diff = export(model, out, args.format, size, images, args.atol)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB), dynamic batch; verified on {len(images)} real "
          f"images at batch 1 and {len(images)}: logits within {diff:.2g} of PyTorch's (atol {args.atol:g})")
    return 0
