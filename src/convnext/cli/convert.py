"""`convnext convert SRC DST [--to LAYOUT]`: rewrite a checkpoint in another layout, by default in ours.

    convnext convert runs/fashion_mnist/best.pt fmnist_model    # a folder convnext.load reads, data config inside
    convnext convert convnext_tiny_1k_224_ema.pth tiny_hf --to hf
"""

from __future__ import annotations

import argparse

from ..checkpoints.convert import TARGETS, convert


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="checkpoint to read: a training checkpoint, any layout, file or folder (ours, HF)")
    parser.add_argument("dst", help="where to write (a directory for --to safetensors/hf, else a file)")
    parser.add_argument("--to", default="safetensors", choices=TARGETS,
                        help="layout to write (default: safetensors, ours: model.safetensors + config.json with the "
                             "model and data config, loadable by convnext.load; fcmae: a ConvNeXt V2 encoder as the "
                             "official pretraining saves it)")
    parser.add_argument("--key", default=None,
                        help="entry of a wrapped checkpoint holding the weights (default: model / state_dict; "
                             "e.g. ema in a last-*.pt, model_ema in an official training checkpoint)")
    parser.add_argument("--timm-conv-mlp", action="store_true",
                        help="write timm's 1x1-conv MLP weights (needed by timm's convnext_atto..nano and "
                             "convnextv2_atto..nano)")


def main(args: argparse.Namespace) -> int:
    from ..api import read_source

    source = read_source(args.src, args.key)
    out, layout = convert(source, args.dst, args.to, conv_mlp=args.timm_conv_mlp)
    kind = "training checkpoint, " if source.kind == "training" else ""
    print(f"{args.src} ({kind}{layout} layout) -> {out} ({args.to})")
    if source.data_config is not None and args.to in ("safetensors", "hf"):
        print(f"data config: {source.data_config.summary()}")
    return 0
