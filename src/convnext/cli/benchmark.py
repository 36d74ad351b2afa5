"""`convnext benchmark`: throughput, latency, peak memory and GMACs of ours and the peers' models."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..benchmark import DEFAULT_MODELS, MODES, PRECISIONS, format_summary, format_table, plot, run
from ._common import parse_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `convnext benchmark`."""
    parser.add_argument("models", nargs="*", default=None,
                        help="SOURCE:NAME[@VARIANT], SOURCE in ours, timm, tv, hf, ort, ov. ours:NAME@VARIANT runs "
                             "ours 'frozen' (the default for inference), 'optimized' (convnext.optimize only), "
                             "'reference' or 'compiled'; ours:PATH a checkpoint. Peers: timm/tv/hf:NAME eager NCHW, "
                             "@cl (channels_last), @compiled (Inductor, freezing for inference) or @cl+compiled. "
                             "ort:NAME our ONNX export in ONNX Runtime; ov:NAME timm's NAME in OpenVINO (@ours: "
                             "ours; needs the bench extra). Default: the --weights checkpoint, else "
                             f"{' '.join(DEFAULT_MODELS)}")
    parser.add_argument("--weights", default=None,
                        help="benchmark this checkpoint (as ours:PATH): its model, input channels and size")
    parser.add_argument("--batch-size", "-b", type=int, default=32)
    parser.add_argument("--img-size", type=parse_size, default=None,
                        help="N or HxW (default: the checkpoint's input size, else 224)")
    parser.add_argument("--mode", nargs="+", default=["infer"], choices=MODES)
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=PRECISIONS,
                        help="bf16/fp16: autocast; bf16-weights: model and input cast to bf16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--latency-batch", type=int, default=None,
                        help="also time inference at this batch size (e.g. 1: latency)")
    parser.add_argument("--latency-reps", type=int, default=None,
                        help="timed repetitions at --latency-batch (default 5x --reps)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions (median, min and max reported)")
    parser.add_argument("--channels-last", action="store_true", help="feed and store every model channels_last")
    parser.add_argument("--compile", action="store_true", help="torch.compile every model")
    parser.add_argument("--no-grad", action="store_true", help="infer under no_grad instead of inference_mode")
    parser.add_argument("--paper-protocol", action=argparse.BooleanOptionalAction, default=None,
                        help="Table 12 on GPU: TF32 + channels_last (default on CUDA)")
    parser.add_argument("--peak-size", type=int, default=4096, help="side of the square matmul timed for the peak")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--plot", type=Path, default=None, help="write a bar chart PNG here")


def main(args: argparse.Namespace) -> int:
    """Run `convnext benchmark`."""
    models = list(args.models or ([] if args.weights else DEFAULT_MODELS))
    if args.weights:
        models.insert(0, f"ours:{args.weights}")
    report = run(models, args.mode, args.precision, args.batch_size, args.img_size, args.device,
                 args.threads, args.warmup, args.reps, args.channels_last, args.compile,
                 "no_grad" if args.no_grad else "inference_mode", args.paper_protocol, args.peak_size,
                 args.latency_batch, args.latency_reps)
    print(format_table(report))
    if any(r["model"].startswith("ours:") for r in report["results"]) and \
            any(not r["model"].startswith("ours:") for r in report["results"]):
        print()
        print(format_summary(report))
    for f in report["failures"]:
        print(f"not measured: {f['model']} ({f['stage']}): {f['reason']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    if args.plot:
        print(f"wrote {plot(report, args.plot)}")
    return 0
