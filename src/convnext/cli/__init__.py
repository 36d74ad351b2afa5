"""The `convnext` command: one subcommand per module of this package, each with `add_arguments(parser)` and
`main(args) -> int`. A module is imported only when its command runs, so `convnext --help` stays fast.

Every error reaches the user as one line naming the problem and a non-zero exit status; `--debug` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..malloc import tune_malloc

# name -> (module under convnext.cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("models", "list every model with params and GMACs beside the paper's"),
    "train": ("train", "train with a recipe (default: a small ConvNeXt on Fashion-MNIST)"),
    "pretrain": ("pretrain", "ConvNeXt V2's FCMAE masked pretraining with a recipe (default: on Fashion-MNIST)"),
    "eval": ("eval", "top-1/top-5 of a checkpoint on a data set"),
    "predict": ("predict", "top-k classes of images"),
    "convert": ("convert", "convert a checkpoint between layouts (official/timm/torchvision/hf/ours)"),
    "export": ("export", "export to ONNX, TorchScript or ExportedProgram, verified"),
    "benchmark": ("benchmark", "throughput, latency and memory of ours and the peers' models"),
    "flops": ("flops", "GMACs and params per stage at any input size"),
    "roadmap": ("roadmap", "the ResNet-50 -> ConvNeXt-T roadmap: table, figure, small-scale sweep"),
    "robustness": ("robustness", "ImageNet-C mCE and ImageNet-A/R/Sketch protocols"),
    "corrupt": ("corrupt", "write the 15 ImageNet-C corruptions x 5 severities of a data set"),
    "shard": ("shard", "write an image folder or Fashion-MNIST as WebDataset tar shards (or index shards)"),
    "train-detection": ("detection", "(Cascade) Mask R-CNN on ConvNeXt, COCO format"),
    "train-segmentation": ("segmentation", "UperNet on ConvNeXt, ADE20K format"),
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the chosen command's module is imported for its arguments."""
    parser = argparse.ArgumentParser(
        prog="convnext",
        description="ConvNeXt (A ConvNet for the 2020s): models, training, evaluation and checkpoints.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = next((a for a in (argv or []) if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:
            importlib.import_module(f"{__name__}.{module}").add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `convnext` console script."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    tune_malloc()  # every command allocates large tensors: reuse freed memory (convnext/malloc.py)
    try:
        module = importlib.import_module(f"{__name__}.{COMMANDS[args.command][0]}")
        return int(module.main(args) or 0)
    except KeyboardInterrupt:
        print(f"convnext {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a user's mistake or a broken file: one line, not a traceback
        if args.debug:
            raise
        print(f"convnext {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    ours = type(e).__module__.startswith("convnext.")
    if not (ours or isinstance(e, (ValueError, OSError, ImportError, SystemExit))):
        # not one of our user-facing errors: say what kind it is, and how to see where it came from
        text = f"{type(e).__name__}: {text} (run `convnext --debug ...` for the traceback)"
    return text


if __name__ == "__main__":
    sys.exit(main())
