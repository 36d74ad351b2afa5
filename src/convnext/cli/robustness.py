"""`convnext robustness`: the paper's Table 8 protocols on a checkpoint.

- imagenet-c: ImageNet-C folders (corruption/severity/class), per-corruption and per-severity errors,
  mCE normalised by AlexNet (or by --baseline REPORT.json), unnormalised mCE, relative mCE.
- imagenet-a, imagenet-r: the 1000-way classifier restricted to the data set's 200 classes.
- imagenet-sketch: plain 1000-class top-1.
- corrupted: any copy written by `convnext corrupt`; mCE normalised by --baseline REPORT.json, the report of
  a baseline model on the same copy (AlexNet's numbers only exist for ImageNet).

Writes OUT/robustness_<suite>.json and, for the corruption suites, OUT/robustness_<suite>.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..data_config import DataSpec
from ..robustness.metrics import ALEXNET_ERRORS, CORRUPTIONS, SEVERITIES, alexnet_clean_error, summarize

SUITES = ("imagenet-c", "imagenet-a", "imagenet-r", "imagenet-sketch", "corrupted")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True,
                        help="a checkpoint (any layout convnext.load reads); its data config sets size, crop, "
                             "normalisation and channels unless the options below say otherwise")
    parser.add_argument("--model", default=None,
                        help="build this model and load --weights into it (default: what the checkpoint says)")
    parser.add_argument("--suite", required=True, choices=SUITES)
    parser.add_argument("--data", required=True, help="the suite's root folder")
    parser.add_argument("--clean-data", help="clean class folders (e.g. the ImageNet val set) for relative mCE")
    parser.add_argument("--baseline", default=None,
                        help="'alexnet' (default for imagenet-c) or a robustness_*.json report of the baseline "
                             "model on the same data; it normalises CE and relative CE")
    parser.add_argument("--corruptions", nargs="+", default=list(CORRUPTIONS), metavar="NAME")
    parser.add_argument("--severities", nargs="+", type=int, default=list(SEVERITIES), choices=SEVERITIES)
    parser.add_argument("--num-classes", type=int, help="with --model: classifier outputs (default: the file's)")
    parser.add_argument("--in-chans", type=int, default=None, help="with --model: input channels (default 3)")
    parser.add_argument("--size", type=int, default=None, help="input resolution (default: the checkpoint's)")
    parser.add_argument("--crop-pct", type=float, default=None,
                        help="resize to size/crop_pct then center-crop (default: the checkpoint's; 1.0 for "
                             "ImageNet-C, whose images are already 224 center crops)")
    parser.add_argument("--mean", type=float, nargs="+", help="normalisation mean (default: the checkpoint's)")
    parser.add_argument("--std", type=float, nargs="+", help="normalisation std (default: the checkpoint's)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="data-loading processes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--limit", type=int, help="score only N evenly spaced images per folder (a quick look)")
    parser.add_argument("--out", default=".", help="folder for the JSON report and the chart")


def _data_config(args: argparse.Namespace, spec: DataSpec) -> DataSpec:
    """The model's data config with the command line's changes: a size, a crop, a normalisation."""
    if args.size:
        spec = spec.at_size(args.size)
    crop_pct = args.crop_pct if args.crop_pct is not None else (
        1.0 if args.suite in ("imagenet-c", "corrupted") else None)
    if crop_pct is not None:
        spec = spec.replace(crop_pct=crop_pct, crop_mode="center")
    if args.mean or args.std:
        mean, std = tuple(args.mean or spec.mean), tuple(args.std or spec.std)
        if len(mean) != spec.in_chans or len(std) != spec.in_chans:
            raise ValueError(f"--mean/--std need {spec.in_chans} values for this {spec.in_chans}-channel model "
                             f"(got {len(mean)}/{len(std)})")
        spec = spec.replace(mean=mean, std=std)
    return spec


def _baseline(args: argparse.Namespace) -> tuple[str | None, dict | None, float | None]:
    """(name, per-corruption errors, clean error) of the normalising model."""
    name = args.baseline or ("alexnet" if args.suite == "imagenet-c" else None)
    if name is None:
        return None, None, None
    if name == "alexnet":
        return name, ALEXNET_ERRORS, alexnet_clean_error()
    path = Path(name)
    if not path.is_file():
        raise SystemExit(f"convnext robustness: --baseline {name} is neither 'alexnet' nor a report file")
    report = json.loads(path.read_text())
    if "errors" not in report:
        raise SystemExit(f"convnext robustness: {path} has no 'errors'; pass a report written by this command")
    return str(path), report["errors"], report.get("clean_error")


def main(args: argparse.Namespace) -> int:
    from ..api import create_model, load
    from ..data.transforms import transform as eval_transform_of
    from ..robustness.chart import plot_corruption_errors
    from ..robustness.evaluate import evaluate_corruptions, image_folder, top1_error
    from ..robustness.subsets import imagenet_synsets, subset_indices

    if args.model:
        model = create_model(args.model, pretrained=args.weights, num_classes=args.num_classes,
                             in_chans=args.in_chans or 3)
    else:
        model = load(args.weights)
    model = model.to(args.device).eval()
    spec = _data_config(args, model.data_config)
    transform = eval_transform_of(spec)
    mode = "L" if spec.in_chans == 1 else "RGB"
    loader_kwargs = dict(batch_size=args.batch_size, workers=args.workers, device=args.device, limit=args.limit)
    report: dict = {"suite": args.suite, "model": model.config["model"], "weights": str(args.weights),
                    "data": str(args.data), "data_config": spec.to_dict()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    if args.suite in ("imagenet-c", "corrupted"):
        name, base_errors, base_clean = _baseline(args)
        if base_errors is not None:
            missing = [c for c in args.corruptions if c not in base_errors]
            if missing:
                raise SystemExit(f"convnext robustness: the baseline {name} has no errors for {missing}")
            base_errors = {c: base_errors[c] for c in args.corruptions}
        if name == "alexnet":
            first = Path(args.data) / args.corruptions[0] / str(args.severities[0])
            classes = [p.name for p in first.iterdir() if p.is_dir()] if first.is_dir() else []
            if classes and not set(classes) <= set(imagenet_synsets()):
                print(f"warning: {first} holds non-ImageNet classes ({classes[0]}, ...); AlexNet's errors only "
                      "normalise ImageNet-C. Use --suite corrupted with --baseline REPORT.json.", file=sys.stderr)
        errors = evaluate_corruptions(model, args.data, transform, args.corruptions, args.severities, mode,
                                      **loader_kwargs)
        clean = None
        if args.clean_data:
            clean = top1_error(model, image_folder(args.clean_data, transform, mode), desc="clean", **loader_kwargs)
        report.update(summarize(errors, clean, base_errors, base_clean), baseline=name, baseline_errors=base_errors)
        chart = plot_corruption_errors(report, out / f"robustness_{args.suite}.png", title=model.config["model"])
        report["chart"] = str(chart)
        lines = [f"{c:>18}: " + " ".join(f"{100 * e:5.1f}" for e in errors[c])
                 + (f"   CE {100 * report['ce'][c]:5.1f}" if "ce" in report else "") for c in errors]
        print("top-1 error (%) per severity\n" + "\n".join(lines))
        for key in ("mce", "unnormalized_mce", "relative_mce", "clean_error"):
            if report.get(key) is not None:
                print(f"{key}: {100 * report[key]:.2f}")
    else:
        keep = subset_indices(args.suite) if args.suite in ("imagenet-a", "imagenet-r") else None
        dataset = image_folder(args.data, transform, mode)
        not_imagenet = [c for c in dataset.classes if c not in imagenet_synsets()]
        if not_imagenet:
            raise SystemExit(f"convnext robustness: {args.suite} class folders must be ImageNet WordNet ids "
                             f"(n01440764, ...); {args.data} has {not_imagenet[:3]}")
        error = top1_error(model, dataset, keep=keep, desc=args.suite, **loader_kwargs)
        report.update(top1=1.0 - error, error=error, classes=len(keep) if keep else "all")
        print(f"{args.suite} top-1: {100 * (1 - error):.2f}%")
    path = out / f"robustness_{args.suite}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"report: {path}")
    return 0
