"""`convnext export`: ONNX, TorchScript and ExportedProgram files, verified against PyTorch on real images.

    convnext export --weights runs/fashion_mnist/best.pt --format onnx      # size, channels, classes: the checkpoint's
    convnext export --model convnext_tiny --weights in1k --format torchscript --size 384
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..export import FORMATS, export, fold_layer_scale, sample_images, top1_agreement


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", default=None,
                        help="a checkpoint (training checkpoint, our folder, HF folder, official/timm/torchvision "
                             "weights); with --model also a release tag or URL (default: --model, random weights)")
    parser.add_argument("--model", default=None, help="model name (default: the checkpoint's own)")
    parser.add_argument("--format", required=True, choices=tuple(FORMATS))
    parser.add_argument("--out", help="output file (default: MODEL_HxW.onnx / .ts / .pt2)")
    parser.add_argument("--size", type=int, nargs="+", default=None, metavar="PX",
                        help="input height [width] (default: the checkpoint's input size, else 224)")
    parser.add_argument("--num-classes", type=int,
                        help="classifier outputs (default: the checkpoint's; another count re-initialises the head)")
    parser.add_argument("--in-chans", type=int, default=None,
                        help="input channels of a randomly initialised model (default 3; a checkpoint has its own)")
    parser.add_argument("--fold-layer-scale", action="store_true",
                        help="fold gamma into pwconv2 first (checked for equal top-1 on the images)")
    parser.add_argument("--images", nargs="+",
                        help="images to verify on, through the model's own transform (default: scikit-image's "
                             "photographs)")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest allowed logit difference")


def main(args: argparse.Namespace) -> int:
    from ..api import create_model
    from ..checkpoints.io import write_json
    from ._common import load_weights

    if args.size is not None and len(args.size) > 2:
        raise ValueError("--size takes a height and an optional width")
    if args.weights is None and args.model is None:
        raise ValueError("nothing to export: give --weights CHECKPOINT (or --model NAME for random weights)")
    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    if args.weights is None:
        model = create_model(args.model, optimize=False, in_chans=args.in_chans or 3, **kwargs)
    else:
        if args.in_chans is not None:
            raise ValueError("--in-chans is for a randomly initialised model; a checkpoint has its own input channels")
        model = load_weights(args.weights, args.model, optimize=False, **kwargs)
    model.eval()
    spec = model.data_config
    if args.size is not None:
        spec = spec.at_size((args.size[0], args.size[-1]))
    size = spec.input_size
    out = Path(args.out or f"{model.config['model']}_{size[0]}x{size[1]}{FORMATS[args.format]}")
    if args.format == "exported-program" and out.suffix != ".pt2":
        raise ValueError(f"{out}: an ExportedProgram file must end in .pt2")
    images = sample_images(spec, paths=args.images)
    if args.fold_layer_scale:
        folded = fold_layer_scale(model)
        same, diff = top1_agreement(model, folded, images)
        if same < 1.0:
            raise ValueError(f"folding layer scale changed the top-1 of {1 - same:.0%} of the images (logits differ "
                             f"by {diff:.3g}); not exporting it")
        print(f"layer scale folded: same top-1 on {len(images)} images, logits within {diff:.2g}")
        model = folded
    path, diff = export(model, out, args.format, size, images, args.atol)
    sidecar = path.with_name(path.name + ".json")
    write_json(spec.to_dict(), sidecar)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB), dynamic batch; verified on {len(images)} real "
          f"images at batch 1 and {len(images)}: logits within {diff:.2g} of PyTorch's (atol {args.atol:g})")
    print(f"input: {spec.summary()}; the file takes normalised images, its data config is in {sidecar}")
    return 0
