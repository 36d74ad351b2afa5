"""`convnext roadmap`: the ResNet-50 -> ConvNeXt-T roadmap: table, Figure 2, small-scale sweep."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..models.roadmap import REGIMES
from ..roadmap import (
    SweepConfig,
    _write_json,
    draw_figure,
    format_table,
    roadmap_rows,
    run_sweep,
    summarize,
    sweep_table,
    train_step,
)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,3,16, not {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = SweepConfig()
    parser.add_argument("--regime", choices=sorted(REGIMES), default="t",
                        help="t: ResNet-50 -> ConvNeXt-T (Table 10); b: ResNet-200 -> ConvNeXt-B (Table 11)")
    parser.add_argument("--size", type=int, default=224, help="input size the GMACs are counted at (224)")
    parser.add_argument("--figure", default="roadmap.png", help="where to write the Figure 2 PNG ('' for none)")
    parser.add_argument("--out", default="runs/roadmap",
                        help="sweep directory: --train writes there; its results are shown when it has some")
    t = parser.add_argument_group("small-scale sweep (--train)")
    t.add_argument("--train", action="store_true", help="retrain the steps at small scale, resuming in --out")
    t.add_argument("--recipe", default=defaults.recipe, help="training recipe (name or YAML) every step uses")
    t.add_argument("--data", default=defaults.data, help="'fashion-mnist' or an ImageFolder root (train/ val/)")
    t.add_argument("--width", type=float, default=defaults.width, help="width scale of every step")
    t.add_argument("--depth", type=float, default=defaults.depth, help="depth scale of every step")
    t.add_argument("--img-size", type=int, default=defaults.img_size, help="training and evaluation input size")
    t.add_argument("--epochs", type=int, default=defaults.epochs, help="epochs of the modern-recipe steps")
    t.add_argument("--batch-size", type=int, default=defaults.batch_size)
    t.add_argument("--train-subset", type=int, default=None, help="train on the first N images (smoke runs)")
    t.add_argument("--val-subset", type=int, default=None, help="evaluate on the first N images (smoke runs)")
    t.add_argument("--steps", type=_int_list, default=None, help="step indices to train, e.g. 0,1,16 (all)")
    t.add_argument("--seeds", type=_int_list, default=defaults.seeds, help="seeds, e.g. 0,1,2")


def main(args: argparse.Namespace) -> int:
    regime = REGIMES[args.regime]
    measured: dict[str, dict] = {}
    if args.train:
        cfg = SweepConfig(regime=args.regime, recipe=args.recipe, data=args.data, width=args.width, depth=args.depth,
                          img_size=args.img_size, epochs=args.epochs, batch_size=args.batch_size,
                          train_subset=args.train_subset, val_subset=args.val_subset, steps=args.steps,
                          seeds=args.seeds)
        try:
            measured = run_sweep(cfg, args.out, train_step)
        except ValueError as e:  # settings that cannot run (bad step, changed sweep, recipe typo, data): say so
            print(f"convnext roadmap: error: {e}", file=sys.stderr)
            return 2
        table = sweep_table(cfg, measured)
        (Path(args.out) / "results.md").write_text(table + "\n")
        _write_json(Path(args.out) / "results.json", measured)
        print(table)
    elif (Path(args.out) / "sweep.json").exists():
        measured = summarize(args.out)
        if json.loads((Path(args.out) / "sweep.json").read_text()).get("regime") != args.regime:
            measured = {}
    rows = roadmap_rows(regime, args.size)
    print(format_table(regime, rows, measured, args.size))
    if args.figure:
        path = draw_figure(regime, rows, args.figure, measured)
        print(f"figure: {path}")
    return 0
