"""The `convnext` command: one subcommand per job, each defined in the module that does the job.

Every command module provides `add_arguments(parser)` and `main(args) -> int`; they are imported only
when their command runs, so `convnext --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .malloc import tune_malloc

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("convnext.models.report", "list every model with params and GMACs beside the paper's"),
    "convert": ("convnext.checkpoints.cli", "convert a checkpoint between layouts (official/timm/torchvision/hf)"),
    "predict": ("convnext.predict", "top-5 ImageNet classes for images"),
    "train": ("convnext.train.cli", "train with a recipe (default: a small ConvNeXt on Fashion-MNIST)"),
    "eval": ("convnext.evaluate", "top-1/top-5 of a checkpoint on a data set"),
    "roadmap": ("convnext.roadmap", "the ResNet-50 -> ConvNeXt-T roadmap: table, figure, small-scale sweep"),
    "benchmark": ("convnext.benchmark", "throughput, latency and memory of ours and the peers' models"),
    "flops": ("convnext.flops", "GMACs and params per stage at any input size"),
    "robustness": ("convnext.robustness.cli", "ImageNet-C mCE and ImageNet-A/R/Sketch protocols"),
    "corrupt": ("convnext.robustness.corrupt", "write the 15 ImageNet-C corruptions x 5 severities of a data set"),
    "export": ("convnext.export", "export to ONNX, TorchScript or ExportedProgram, verified"),
    "train-detection": ("convnext.downstream.detection_cli", "(Cascade) Mask R-CNN on ConvNeXt, COCO format"),
    "train-segmentation": ("convnext.downstream.segmentation_cli", "UperNet on ConvNeXt, ADE20K format"),
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convnext",
        description="ConvNeXt (A ConvNet for the 2020s): models, training, evaluation and checkpoints.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = next((a for a in (argv or []) if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        # Only the chosen command's module is imported: its arguments are all that is needed.
        if name == wanted:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `convnext` console script."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    tune_malloc()  # every command allocates large tensors: reuse freed memory (convnext/malloc.py)
    module = importlib.import_module(COMMANDS[args.command][0])
    return int(module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
