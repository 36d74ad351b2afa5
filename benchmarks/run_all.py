"""Regenerate benchmarks/RESULTS.md, its JSON and its bar charts in one command (`make bench`, ~10 min quiet).

Measures, in one process with the same protocol (batch 32 at 224, 2 threads, 1 warm-up + 3 timed runs per
model, models interleaved within each run, medians reported):

- inference: ours (each compute path) vs timm, torchvision and HF ConvNeXt-T, Swin-T and ResNet-50, in fp32,
  bf16 autocast and bf16 weights;
- a training step (forward, backward, AdamW): ours vs timm and torchvision ConvNeXt-T and Swin-T, fp32 and bf16;
- ONNX Runtime on our exported model, when `convnext.export` is present;
- GMACs per stage of ConvNeXt-T at classification and downstream sizes;
- how far each compute path's logits are from the reference path's.

Usage: python benchmarks/run_all.py [--quick] [--out benchmarks]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from convnext import create_model, tune_malloc  # noqa: E402
from convnext.benchmark import (  # noqa: E402
    build_for_counting,  # noqa: E402
    format_table,
    plot,
    run,
)
from convnext.flops import format_breakdown, stage_breakdown  # noqa: E402

PAPER_A100 = {"ConvNeXt-T": 1943.5, "Swin-T": 1325.6}  # Table 12, img/s, A100 TF32 channels_last
INFER_MODELS = ["ours:convnext_tiny", "ours:convnext_tiny@linear", "ours:convnext_tiny@conv", "timm:convnext_tiny",
                "tv:convnext_tiny", "hf:convnext_tiny", "timm:swin_tiny_patch4_window7_224", "tv:resnet50"]
TRAIN_MODELS = ["ours:convnext_tiny", "timm:convnext_tiny", "tv:convnext_tiny", "timm:swin_tiny_patch4_window7_224"]
SIZES = [(224, 224), (384, 384), (1280, 800), (2048, 512)]
PLAIN_SUFFIX = "_glibc_default"  # results measured before tune_malloc, under glibc's default allocator


def _find(report: dict, model: str, mode: str, precision: str) -> float | None:
    for r in report["results"]:
        if (r["model"], r["mode"], r["precision"]) == (model, mode, precision):
            return r["img_per_s"]
    return None


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def path_agreement(size: int) -> str:
    """Max |logit difference| of each compute path vs the reference, on ConvNeXt-T with trained-like gamma."""
    torch.manual_seed(0)
    ref = create_model("convnext_tiny", compute_path="linear").eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("gamma"):
                p.uniform_(0.5, 1.5)  # 1e-6 (the init) would hide any folding error
    x = torch.randn(4, 3, size, size)
    rows = ["| path | precision | max abs diff vs reference fp32 | logit spread (std) | same top-1 |",
            "|---|---|---|---|---|"]
    with torch.inference_mode():
        expected = ref(x)
        for path in ("conv", "fused"):
            ref.set_compute_path(path)
            for precision in ("fp32", "bf16"):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    got = ref(x).float()
                same = bool((got.argmax(1) == expected.argmax(1)).all())
                rows.append(f"| {path} | {precision}{' autocast' if precision == 'bf16' else ''} | "
                            f"{(got - expected).abs().max().item():.2e} | {expected.std().item():.3f} | {same} |")
    return "\n".join(rows)


def _env_lines(report: dict) -> str:
    env = report["env"]
    peaks = ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in report["peaks_gflops"].items())
    return (f"- CPU: {env['cpu']} ({env['cpu_count']} cores), {env['threads']} torch threads, oneDNN "
            f"{'on' if env['mkldnn'] else 'off'}, malloc tuned: {env.get('malloc_tuned', 'not recorded')}; "
            f"matmul peak: {peaks}\n"
            f"- torch {env['torch']}, timm {env.get('timm')}, torchvision {env.get('torchvision')}, transformers "
            f"{env.get('transformers')}, onnxruntime {env.get('onnxruntime')}, Python {env['python']}\n"
            f"- load average (1 min) at start / end: {env['load_avg_1m']:.1f} / {env['load_avg_1m_end']:.1f}; "
            f"batch {report['results'][0]['batch_size']}, {env['warmup']} warm-up + {env['reps']} timed runs, "
            f"models interleaved per run, inference under {env['grad_mode']}")


def _load_warning(*reports: dict) -> str:
    loads = [r["env"][k] for r in reports for k in ("load_avg_1m", "load_avg_1m_end") if r["env"].get(k) is not None]
    cores = reports[0]["env"]["cpu_count"] or 1
    # The benchmark's own threads keep the load near `cores`: only more than that means other work was running.
    if not loads or max(loads) <= cores + 1:
        return ""
    return (f"\n**Measured on a shared machine** (load average up to {max(loads):.1f} on {cores} cores): absolute "
            "img/s are far below a quiet machine's and min-max spreads are wide; the ratios come from interleaved "
            "runs, so load hit every model alike, but re-run on a quiet machine before quoting numbers.\n")


def _claims(infer: dict, train: dict, infer_models: list[str], train_models: list[str]) -> list[tuple[str, str, str]]:
    """The issue's speed claims as (claim, measured ratio, target) from one inference and one training report."""
    ours, timm_t = infer_models[0], infer_models[3]
    tr_ours, tr_timm = train_models[0], train_models[1]
    return [
        ("fp32 inference, ours / timm",
         _ratio(_find(infer, ours, "infer", "fp32"), _find(infer, timm_t, "infer", "fp32")), ">= 1.6x"),
        ("bf16 autocast inference, ours / timm (autocast)",
         _ratio(_find(infer, ours, "infer", "bf16"), _find(infer, timm_t, "infer", "bf16")), ">= 1.3x"),
        ("bf16 weights inference, ours / timm (autocast)",
         _ratio(_find(infer, ours, "infer", "bf16-weights"), _find(infer, timm_t, "infer", "bf16")), ">= 1.3x"),
        ("best bf16 inference, ours / timm fp32", _ratio(
            max(filter(None, [_find(infer, ours, "infer", p) for p in ("bf16", "bf16-weights")]), default=None),
            _find(infer, timm_t, "infer", "fp32")), ">= 4x"),
        ("training step fp32, ours / timm", _ratio(_find(train, tr_ours, "train", "fp32"),
                                                   _find(train, tr_timm, "train", "fp32")), ">= 1.3x"),
        ("training step bf16, ours / timm", _ratio(_find(train, tr_ours, "train", "bf16"),
                                                   _find(train, tr_timm, "train", "bf16")), ">= 1.3x"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models and images: a smoke test of the script")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--render-only", action="store_true", help="rewrite RESULTS.md from results/*.json")
    args = parser.parse_args()
    results_dir = args.out / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    batch, size = (4, (64, 64)) if args.quick else (32, (224, 224))
    infer_models = [m.replace("convnext_tiny", "convnext_atto") for m in INFER_MODELS[:4]] if args.quick \
        else INFER_MODELS
    train_models = [m.replace("convnext_tiny", "convnext_atto") for m in TRAIN_MODELS[:2]] if args.quick \
        else TRAIN_MODELS
    start = time.time()
    common = dict(batch_size=batch, img_size=size, threads=args.threads, reps=args.reps,
                  peak_size=1024 if args.quick else 4096)

    if args.render_only:  # re-render RESULTS.md from the JSON of the last run, measuring nothing
        infer, train = (json.loads((results_dir / f"{n}.json").read_text()) for n in ("inference", "train"))
        plain = {n: json.loads(f.read_text()) for n in ("inference", "train")
                 if (f := results_dir / f"{n}{PLAIN_SUFFIX}.json").exists()}
        ort_file = results_dir / "onnxruntime.json"
        ort = json.loads(ort_file.read_text()) if ort_file.exists() else None
        minutes = infer["env"].get("script_minutes", "(not recorded)")
    else:
        # Twice, every model under the same allocator each time: glibc's default first (a plain Python process,
        # as a timm or torchvision user has it), then tuned as every `convnext` command runs (docs/speed.md).
        # tune_malloc cannot be undone within a process, hence this order.
        plain = {"inference": run(infer_models, ["infer"], ["fp32", "bf16", "bf16-weights"], **common),
                 "train": run(train_models, ["train"], ["fp32", "bf16"], **common)}
        if not tune_malloc():
            print("warning: malloc could not be tuned here (not glibc, or CONVNEXT_NO_MALLOC_TUNING): both runs "
                  "use the default allocator", file=sys.stderr)
        infer = run(infer_models, ["infer"], ["fp32", "bf16", "bf16-weights"], **common)
        train = run(train_models, ["train"], ["fp32", "bf16"], **common)
        ort = None
        if importlib.util.find_spec("convnext.export") is not None:
            ort = run([infer_models[0], infer_models[0].replace("ours:", "ort:")], ["infer"], ["fp32"], **common)
        minutes = f"{(time.time() - start) / 60:.1f} min"
        infer["env"]["script_minutes"] = minutes
        reports = {"inference": infer, "train": train, "onnxruntime": ort,
                   **{f"{name}{PLAIN_SUFFIX}": report for name, report in plain.items()}}
        for name, report in reports.items():
            if report is not None:
                (results_dir / f"{name}.json").write_text(json.dumps(report, indent=1))
                plot(report, results_dir / f"{name}.png")

    ours, swin = infer_models[0], "timm:swin_tiny_patch4_window7_224"
    tuned_claims = _claims(infer, train, infer_models, train_models)
    plain_claims = _claims(plain["inference"], plain["train"], infer_models, train_models) if plain else None
    claim_rows = "\n".join(f"| {c} | {plain_claims[i][1] if plain_claims else '-'} | {v} | {t} |"
                           for i, (c, v, t) in enumerate(tuned_claims))
    swin_rows = []
    for precision in ("fp32", "bf16", "bf16-weights"):
        t, s = _find(infer, ours, "infer", precision), _find(infer, swin, "infer", precision)
        if t and s:
            swin_rows.append(f"| this CPU, {precision} | {t:.1f} | {s:.1f} | {t / s:.2f}x |")
    swin_rows.append(f"| paper Table 12 (A100, TF32) | {PAPER_A100['ConvNeXt-T']} | {PAPER_A100['Swin-T']} | "
                     f"{PAPER_A100['ConvNeXt-T'] / PAPER_A100['Swin-T']:.2f}x |")
    flops_model = "convnext_atto" if args.quick else "convnext_tiny"
    flops = format_breakdown(stage_breakdown(build_for_counting(flops_model), SIZES), SIZES)
    ort_section = (format_table(ort) if ort else
                   "Not measured: `convnext.export` is not in this checkout (the `ort:` backend imports "
                   "`convnext.export.export_onnx`).")
    plain_section = (f"{_env_lines(plain['inference'])}\n\n{format_table(plain['inference'])}\n\n"
                     f"{format_table(plain['train'])}" if plain else "Not measured in this run.")
    command = "python benchmarks/run_all.py" + (" --quick" if args.quick else "")
    md = f"""# Speed results

Regenerate everything here (tables, `results/*.json`, `results/*.png`) with `{command}` (or `make bench`).
Every number below was measured by that command in one process; nothing is copied by hand.

{_env_lines(infer)}
- wall time of the whole script: {minutes}
{_load_warning(infer, train)}

## Targets

Each column is one run with every model under the same allocator: glibc's default (a plain Python process,
as a timm or torchvision user has it), then tuned the way every `convnext` command runs (`tune_malloc`,
docs/speed.md), which speeds up the peers' models as much as ours or more.

| claim | measured, glibc default malloc | measured, tuned malloc | target |
|---|---|---|---|
{claim_rows}

## ConvNeXt-T vs Swin-T (paper Table 12 reports +47% on an A100)

| setting | ConvNeXt-T (ours) img/s | Swin-T (timm) img/s | ratio |
|---|---|---|---|
{chr(10).join(swin_rows)}

## Inference, batch {batch} at {size[0]}x{size[1]} (tuned malloc)

"vs first" is relative to the first row of each group (ours with the automatic path). `@linear` is the
official reference computation, `@conv` 1x1 convolutions, plain `ours` the "fused" path (docs/speed.md).
Memory is the peak tensor memory one step adds. `% matmul peak` is achieved FLOP/s over a square matmul's
in that dtype.

{format_table(infer)}

![inference](results/inference.png)

## Training step (forward, backward, AdamW), batch {batch} at {size[0]}x{size[1]} (tuned malloc)

{_env_lines(train)}

{format_table(train)}

![train](results/train.png)

## Under glibc's default allocator (the same models, measured first in the same process)

{plain_section}

## ONNX Runtime

{ort_section}

## GMACs and params per stage, {flops_model} (`convnext flops {flops_model} --size 224 384 1280x800 2048x512`)

{flops}

## Compute paths against the reference (ConvNeXt-T, random weights, gamma in [0.5, 1.5])

{path_agreement(size[0])}
"""
    (args.out / "RESULTS.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
