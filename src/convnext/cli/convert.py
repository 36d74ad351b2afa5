"""`convnext convert SRC DST --to LAYOUT`: rewrite a checkpoint in another layout (or in ours)."""

from __future__ import annotations

import argparse

from ..checkpoints.convert import TARGETS, convert


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="checkpoint to read: any layout, file or directory (ours, HF)")
    parser.add_argument("dst", help="where to write (a directory for --to safetensors/hf, else a file)")
    parser.add_argument("--to", required=True, choices=TARGETS,
                        help="layout to write (fcmae: a ConvNeXt V2 encoder as the official pretraining saves it)")
    parser.add_argument("--key", default=None,
                        help="entry of a wrapped checkpoint holding the weights (default: model / state_dict; "
                             "e.g. model_ema for the EMA weights of an official training checkpoint)")
    parser.add_argument("--timm-conv-mlp", action="store_true",
                        help="write timm's 1x1-conv MLP weights (needed by timm's convnext_atto..nano and "
                             "convnextv2_atto..nano)")


def main(args: argparse.Namespace) -> int:
    out, layout = convert(args.src, args.dst, args.to, key=args.key, conv_mlp=args.timm_conv_mlp)
    print(f"{args.src} ({layout} layout) -> {out} ({args.to})")
    return 0

