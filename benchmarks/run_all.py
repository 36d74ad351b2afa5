"""Ours against every peer at its best, one interleaved run, appended to a history (`make bench`).

One run measures ConvNeXt-T, batch 32 at 224 (and batch-1 latency), with 2 threads, every model in this
process under the same tuned allocator (`convnext.tune_malloc()`, called before anything is allocated):

- inference: ours (frozen, optimized, compiled) against timm eager NCHW, channels_last, compiled (Inductor
  with freezing) and channels_last + compiled, torchvision, our ONNX export in ONNX Runtime, and timm's model
  in OpenVINO; fp32 and bf16 (autocast; OpenVINO's bf16 hint);
- a training step (forward, backward, AdamW): ours (optimized, compiled) against timm eager, channels_last
  and compiled; fp32 and bf16.

Models alternate within each repetition, so load from elsewhere hits them alike. The record (date, commit,
CPU and its ISA, versions, load average before and after, the matmul peak, which of our kernels ran, every
result and every model that could not run here) is APPENDED to benchmarks/results/history.jsonl, and
benchmarks/RESULTS.md is regenerated from the whole history: newest run first, grouped by CPU.

    python benchmarks/run_all.py [--note TEXT]      # about 10-15 minutes on 2 cores
    python benchmarks/run_all.py --quick            # a 2-minute smoke run of the script (written to a temp dir)
    python benchmarks/run_all.py --render-only      # RESULTS.md from the history, measuring nothing
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from convnext import fast  # noqa: E402
from convnext.benchmark import (  # noqa: E402
    env_load,
    format_summary,
    format_table,
    load_averages,
    run,
    summarize,
)
from convnext.malloc import tune_malloc  # noqa: E402

MODEL = "convnext_tiny"
INFER = ["ours:{m}", "ours:{m}@optimized", "ours:{m}@compiled", "timm:{m}", "timm:{m}@cl", "timm:{m}@compiled",
         "timm:{m}@cl+compiled", "tv:{m}", "ort:{m}", "ov:{m}"]
TRAIN = ["ours:{m}", "ours:{m}@compiled", "timm:{m}", "timm:{m}@cl", "timm:{m}@compiled"]
# --quick: every kind of subject once, on a small model and image, with as few compiled graphs as possible
QUICK_INFER = ["ours:{m}", "ours:{m}@compiled", "timm:{m}", "timm:{m}@cl", "timm:{m}@compiled", "ort:{m}", "ov:{m}"]
QUICK_TRAIN = ["ours:{m}", "timm:{m}@compiled"]
HISTORY = HERE / "results" / "history.jsonl"
RESULTS_MD = HERE / "RESULTS.md"


# ---------------------------------------------------------------------------------------------- the record


def git_commit(root: Path = HERE.parent) -> str | None:
    """HEAD's short hash, with "-dirty" where tracked files under src/ or benchmarks/ differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "src", "benchmarks"],
                               cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("-dirty" if dirty else "")


def make_record(infer: dict[str, Any], train: dict[str, Any], *, command: str, note: str, quick: bool,
                load_before: list[float] | None, load_after: list[float] | None, seconds: float) -> dict[str, Any]:
    """One history entry from the inference and training reports of one run."""
    env = infer["env"]
    caps = fast.capabilities()
    versions = {k: env[k] for k in ("torch", "python", "timm", "torchvision", "transformers", "onnxruntime",
                                    "openvino") if env.get(k)}
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(), "command": command, "quick": quick, "note": note,
        "cpu": {"name": env["cpu"], "isa": env["isa"], "flags": env["cpu_flags"], "cores": env["cpu_count"],
                "bf16": env["bf16"], "notes": list(caps.notes)},
        "threads": env["threads"], "allocator": "glibc, tuned (convnext.tune_malloc)" if env["malloc_tuned"]
        else "glibc default (not tuned)", "versions": versions,
        "load_avg_before": load_before, "load_avg_after": load_after, "minutes": round(seconds / 60, 1),
        "peaks_gflops": infer["peaks_gflops"], "peaks_gflops_train": train["peaks_gflops"],
        "kernels": {**env.get("ours_paths", {}), **train["env"].get("ours_paths", {})},
        "engines": {**env.get("engines", {}), **train["env"].get("engines", {})},
        "protocol": {k: env[k] for k in ("warmup", "reps", "latency_reps", "grad_mode")},
        "load_during": {**env.get("load_during", {}), **train["env"].get("load_during", {})},
        "results": infer["results"] + train["results"],
        "failures": infer["failures"] + train["failures"],
    }


def append_record(record: dict[str, Any], history: Path = HISTORY) -> None:
    """Append one record (one JSON line) to the history; earlier records are never rewritten."""
    history.parent.mkdir(parents=True, exist_ok=True)
    with open(history, "a") as f:
        f.write(json.dumps(record, sort_keys=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_history(history: Path = HISTORY) -> list[dict[str, Any]]:
    """Every record of the history, oldest first."""
    if not history.exists():
        return []
    return [json.loads(line) for line in history.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------- RESULTS.md


def cpu_key(record: dict[str, Any]) -> str:
    """The heading a record is grouped under: the CPU's name and what ATen dispatched to on it."""
    cpu = record["cpu"]
    return f"{cpu['name']} ({cpu.get('isa') or 'ISA not recorded'}, {cpu.get('cores', '?')} cores)"


def _load(values: Iterable[float] | None) -> str:
    return " / ".join(f"{v:.2f}" for v in values) if values else "not recorded"


def render_record(record: dict[str, Any]) -> str:
    """One run's section: what ran where, the summary against the best peers, then every result."""
    cpu = record["cpu"]
    versions = ", ".join(f"{k} {v}" for k, v in record.get("versions", {}).items())
    peaks = ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in record.get("peaks_gflops", {}).items())
    lines = [
        f"### {record['date']}, commit {record.get('commit') or 'not recorded'}"
        + (" (quick smoke run)" if record.get("quick") else "")
        + (f" (imported; {record.get('allocator')})" if record.get("imported") else ""), "",
        f"- command: `{record['command']}`" + (f"; {record['minutes']} min" if record.get("minutes") else ""),
        f"- CPU: {cpu['name']}, {cpu.get('cores', '?')} cores, ATen ISA {cpu.get('isa') or 'not recorded'}, bf16 "
        f"{cpu.get('bf16') or 'not recorded'}; {record.get('threads', '?')} threads; allocator: "
        f"{record.get('allocator', 'not recorded')}",
        f"- load average (1/5/15 min) before: {_load(record.get('load_avg_before'))}; after: "
        f"{_load(record.get('load_avg_after'))}" + (
            "; 1-min as each group started: " + ", ".join(f"{v:.1f}" for v in record["load_during"].values())
            if record.get("load_during") else ""),
        f"- matmul peak (square n=4096): {peaks or 'not recorded'}",
        f"- versions: {versions or 'not recorded'}",
    ]
    if record.get("note"):
        lines.append(f"- note: {record['note']}")
    for mode, line in record.get("kernels", {}).items():
        lines.append(f"- our kernels, {mode}: {line}")
    for f in record.get("failures", []):
        lines.append(f"- not measured: {f['model']} ({f['stage']}): {f['reason']}")
    report = {"results": record["results"]}
    lines += ["", format_summary(report), "", "<details><summary>every result</summary>", "",
              format_table(report), "", "</details>", ""]
    return "\n".join(lines)


def render_across_runs(runs: list[dict[str, Any]]) -> str:
    """One CPU's runs side by side: per allocator and (mode, precision, batch), the median and the range of
    "ours / best peer" over the runs of the current protocol (imported and smoke runs left out), and how many."""
    ratios: dict[tuple[str, str, str, int], list[tuple[float, str]]] = {}
    for r in sorted(runs, key=lambda r: r["date"]):
        if r.get("imported") or r.get("quick"):
            continue
        for s in summarize({"results": r["results"]}):
            if s["ratio"]:
                key = (r.get("allocator", "not recorded"), s["mode"], s["precision"], s["batch_size"])
                ratios.setdefault(key, []).append((s["ratio"], r["date"]))
    if not ratios:
        return ""
    lines = ["### Across runs", "",
             "\"ours / best peer\" over every run below of the current protocol (peers at their best, in one "
             "process): the median, the lowest and highest, and how many runs.", "",
             "| allocator | mode | precision | batch | median | min-max | runs | dates |",
             "|---|---|---|---|---|---|---|---|"]
    for (alloc, mode, precision, batch), vals in ratios.items():
        xs = [v for v, _ in vals]
        lines.append(f"| {alloc} | {mode} | {precision} | {batch} | **{statistics.median(xs):.2f}x** | "
                     f"{min(xs):.2f}-{max(xs):.2f}x | {len(xs)} | {', '.join(d for _, d in vals)} |")
    return "\n".join(lines) + "\n"


def render(records: list[dict[str, Any]], quick: bool = False) -> str:
    """RESULTS.md from the history: grouped by CPU (the CPU of the newest run first), newest run first; smoke
    runs (--quick) only where `quick` is set."""
    full = [r for r in records if quick or not r.get("quick")]
    order = sorted(range(len(full)), key=lambda i: (full[i]["date"], i), reverse=True)
    groups: dict[str, list[dict[str, Any]]] = {}
    for i in order:
        groups.setdefault(cpu_key(full[i]), []).append(full[i])
    out = ["# Speed results", "",
           "Generated by `python benchmarks/run_all.py` from every run recorded in "
           "[results/history.jsonl](results/history.jsonl); edit neither by hand. Each run is one process, every "
           "model in it under the same allocator, the same threads and the same batch, the models alternating "
           "within each repetition; medians of the repetitions. \"ours / best peer\" compares our fastest variant "
           "with the fastest peer variant running the same architecture in that run. Throughput is img/s; "
           "\"first call\" is the untimed first step (allocation, oneDNN primitives, compilation); peak memory "
           "is the tensor memory one step adds. Runs marked imported were measured by the earlier run_all "
           "(peers eager NCHW only) and taken from the git history of benchmarks/results/.", ""]
    for key, runs in groups.items():
        out += [f"## {key}", ""]
        across = render_across_runs(runs)
        out += [across] if across else []
        out += [render_record(r) for r in runs]
    return "\n".join(out).rstrip() + "\n"


def write_results(records: list[dict[str, Any]], path: Path = RESULTS_MD, quick: bool = False) -> Path:
    path.write_text(render(records, quick))
    return path


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="convnext_atto at 64x64, batch 4, 1 rep: a smoke run of the script, recorded in a "
                             "temp folder unless --out is given")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for results/history.jsonl and RESULTS.md (default: benchmarks/)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--note", default="", help="recorded with the run (e.g. why the machine was busy)")
    parser.add_argument("--render-only", action="store_true", help="regenerate RESULTS.md from the history")
    args = parser.parse_args(argv)
    # First, before any model exists: every model, ours and the peers', runs under the same tuned allocator, as
    # in every `convnext` command (under glibc's default, each large activation is a fresh mmap: docs/speed.md).
    tuned = tune_malloc()
    out = args.out or (Path(tempfile.mkdtemp(prefix="convnext-bench-quick-")) if args.quick else HERE)
    history, results_md = out / "results" / "history.jsonl", out / "RESULTS.md"
    if args.render_only:
        print(f"wrote {write_results(read_history(history), results_md)}")
        return 0
    if not tuned:
        print("warning: malloc could not be tuned here (not glibc, another allocator preloaded, or "
              "CONVNEXT_NO_MALLOC_TUNING): every model runs under the default allocator", file=sys.stderr)
    model = "convnext_atto" if args.quick else MODEL
    infer_models = [m.format(m=model) for m in (QUICK_INFER if args.quick else INFER)]
    train_models = [m.format(m=model) for m in (QUICK_TRAIN if args.quick else TRAIN)]
    common = dict(batch_size=4 if args.quick else 32, img_size=(64, 64) if args.quick else (224, 224),
                  threads=args.threads, reps=1 if args.quick else args.reps, peak_size=1024 if args.quick else 4096)
    load_before = load_averages()
    print(f"load average before: {_load(load_before)} on {os.cpu_count()} cores")
    start = time.time()
    infer = run(infer_models, ["infer"], ["fp32", "bf16"], latency_batch=None if args.quick else 1, **common)
    train = run(train_models, ["train"], ["fp32"] if args.quick else ["fp32", "bf16"], **common)
    command = "python benchmarks/run_all.py" + " ".join(
        [""] + (["--quick"] if args.quick else []) + ([f"--threads {args.threads}"] if args.threads != 2 else [])
        + ([f"--reps {args.reps}"] if args.reps != 3 else []))
    load_after = load_averages()
    note = args.note
    # This run's own threads keep the load near --threads: more than that means other jobs shared the cores.
    during = [v for r in (infer, train) for v in r["env"].get("load_during", {}).values() if v is not None]
    busiest = max([v[0] for v in (load_before, load_after) if v] + during + [env_load() or 0.0])
    if busiest > args.threads + 0.5:
        note = "; ".join(filter(None, [note, f"busy machine: 1-minute load average up to {busiest:.1f} on "
                                             f"{os.cpu_count()} cores (other jobs shared them)"]))
    record = make_record(infer, train, command=command, note=note, quick=args.quick, load_before=load_before,
                         load_after=load_after, seconds=time.time() - start)
    append_record(record, history)
    print(render_record(record))
    print(f"appended to {history}; wrote {write_results(read_history(history), results_md, args.quick)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
