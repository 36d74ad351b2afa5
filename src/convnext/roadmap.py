"""`convnext roadmap`: the ResNet -> ConvNeXt roadmap as a table, as the paper's Figure 2, and as a
small-scale training sweep that resumes where it stopped.

    convnext roadmap                         # Table 10 with our params/GMACs, writes roadmap.png
    convnext roadmap --regime b              # Table 11: ResNet-200 -> ConvNeXt-B
    convnext roadmap --train --out runs/rm   # retrain every step at small scale, then table + figure
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .flops import count_macs, count_params
from .models.roadmap import REGIMES, Design, Regime, Step, build

TOLERANCE = 0.02  # GMACs: how close every step must come to the paper's figure


# ---------------------------------------------------------------------------------------------- table


def roadmap_rows(regime: Regime, size: int = 224) -> list[dict[str, Any]]:
    """One row per step: our params (M) and GMACs at `size`, the paper's GMACs and top-1, the difference.

    `ok` says whether we are within `TOLERANCE` of the paper's table figure. A step whose table figure no
    honest reading reaches also has `reference_gmacs`, the paper's other figure for it (named in `note`),
    and `reference_ok`.
    """
    rows = []
    for step in regime:
        with torch.device("meta"):  # shapes only: instant, no memory
            model = build(step)
        gmacs = count_macs(model, size) / 1e9
        # The paper counts at 224 only: at other sizes there is nothing to compare with.
        paper = step.paper_gmacs if size == 224 else None
        ref = step.gmacs_reference if size == 224 else None
        rows.append({
            "index": step.index, "step": step.name, "change": step.change, "group": step.group, "kept": step.kept,
            "params_m": count_params(model) / 1e6, "gmacs": gmacs,
            "paper_gmacs": paper, "paper_top1": step.paper_top1,
            "diff": None if paper is None else gmacs - paper,
            "ok": None if paper is None else abs(gmacs - paper) <= TOLERANCE,
            "reference_gmacs": ref, "reference_ok": None if ref is None else abs(gmacs - ref) <= TOLERANCE,
            "note": step.note,
        })
    return rows


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(regime: Regime, rows: list[dict], measured: dict[str, dict] | None = None,
                 size: int = 224) -> str:
    """The roadmap as text: our counts beside the paper's, measured small-scale top-1 when there is some."""
    measured = measured or {}
    head = (f"{'#':>2}  {'step':<20}{'params M':>9}{'GMACs':>8}{'paper':>7}{'diff':>7}  {'':2}{'top-1':>7}"
            + (f"{'ours (small scale)':>20}" if measured else "") + "  change")
    lines = [f"Roadmap {regime.name}: paper {regime.paper_source}; our GMACs at {size}x{size} "
             "(torch.utils.flop_counter, convs + matmuls, GMACs = FLOPs/2)", head, "-" * len(head)]
    notes = []
    for r in rows:
        mark = "" if r["ok"] is None else ("ok" if r["ok"] else "!!")
        if r["reference_gmacs"] is not None:
            verdict = "within" if r["reference_ok"] else "NOT within"
            notes.append(f"  !! step {r['index']} ({r['step']}): {r['note']}. Ours, {r['gmacs']:.3f}, is {verdict} "
                         f"{TOLERANCE} of {r['reference_gmacs']:.2f}.")
        ours = ""
        if measured:
            m = measured.get(r["step"])
            ours = f"{m['mean']:.2f} +- {m['std']:.2f} (n={m['n']})" if m else "-"
            ours = f"{ours:>20}"
        diff = "-" if r["diff"] is None else f"{r['diff']:+.3f}"
        name = r["step"] if r["kept"] else f"({r['step']})"
        lines.append(f"{r['index']:>2}  {name:<20}{r['params_m']:>9.2f}{r['gmacs']:>8.3f}"
                     f"{_fmt(r['paper_gmacs'], '.2f'):>7}{diff:>7}  {mark:2}{_fmt(r['paper_top1'], '.2f'):>7}"
                     f"{ours}  {r['change']}")
    ref_name, ref_top1, ref_gmacs = regime.reference
    lines.append(f"{'':>2}  {ref_name:<20}{'':>9}{'':>8}{ref_gmacs:>7.2f}{'':>7}  {'':2}{ref_top1:>7.2f}"
                 "  (reference)")
    lines.append(f"ok: within {TOLERANCE} GMACs of the paper; (name): tried, not kept; '-': the paper gives no "
                 "number.")
    if notes:
        lines.append("Where no reading can match the table (the paper disagrees with itself):")
        lines.extend(notes)
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- figure


def draw_figure(regime: Regime, rows: list[dict], path: str | Path, measured: dict[str, dict] | None = None,
                measured_label: str = "ours, small scale") -> Path:
    """The paper's Figure 2 as a PNG: steps down the side, bars of the paper's top-1 with GMACs beside them,
    and a second panel of our measured top-1 (mean +- std over seeds) when a sweep has been run."""
    from .plots import pyplot, save_figure

    plt = pyplot()

    measured = measured or {}
    n = len(rows)
    panels = 2 if measured else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 + 4 * (panels - 1) + 2.6, 0.4 * n + 1.8), sharey=True,
                             squeeze=False)
    y = list(range(n))[::-1]
    labels = [r["step"] if r["kept"] else f"{r['step']} (not kept)" for r in rows]
    palette = {"recipe": "#8c8c8c", "macro design": "#4c72b0", "ResNeXt": "#55a868", "inverted bottleneck": "#c44e52",
               "large kernel": "#8172b2", "micro design": "#dd8452"}
    colors = [palette.get(r["group"], "#4c72b0") if r["kept"] else "#d0d0d0" for r in rows]

    def bars(ax, values: list[tuple[int, float | None, float, str]], xlabel: str) -> None:
        known = [(v, e) for _, v, e, _ in values if v is not None]
        lo = math.floor(min(v for v, _ in known) - 1.5)
        hi = math.ceil(max(v + e for v, e in known) + 0.8)
        for yi, v, err, c in values:
            if v is None:  # a cell the paper (or the sweep) leaves empty
                ax.text(lo + 0.1, yi, "-", va="center", fontsize=8, color="#666")
                continue
            ax.barh(yi, v - lo, left=lo, color=c, xerr=err or None, capsize=2, edgecolor="white",
                    hatch="" if c != "#d0d0d0" else "//")
            ax.text(v + err + 0.05, yi, f"{v:.1f}", va="center", fontsize=8)
        ax.set_xlim(lo, hi)
        ax.set_xlabel(xlabel)

    ax = axes[0][0]
    paper = [(yi, r["paper_top1"], 0.0, c) for yi, r, c in zip(y, rows, colors, strict=True)]
    ref_name, ref_top1, _ = regime.reference
    bars(ax, paper + [(-1, ref_top1, 0.0, "#e0e0e0")], "ImageNet-1K top-1 (%), the paper")
    ax.axvline(ref_top1, color="#e07b39", ls="--", lw=1)
    ax.set_yticks(y + [-1], labels + [f"{ref_name} (reference)"], fontsize=8)
    ax.set_title(f"paper, {regime.paper_source}", fontsize=9)

    if measured:
        ax2 = axes[0][1]
        ours = [(yi, measured[r["step"]]["mean"], measured[r["step"]]["std"], c) if r["step"] in measured
                else (yi, None, 0.0, c) for yi, r, c in zip(y, rows, colors, strict=True)]
        bars(ax2, ours, f"top-1 (%), {measured_label}")
        raw = [(yi, measured[r["step"]]["mean_no_ema"]) for yi, r in zip(y, rows, strict=True)
               if measured.get(r["step"], {}).get("ema") and "mean_no_ema" in measured[r["step"]]]
        if raw:  # the raw model where the reported top-1 is the EMA model's
            ax2.plot([v for _, v in raw], [yi for yi, _ in raw], "k|", markersize=12, label="without EMA")
            ax2.legend(fontsize=7, loc="lower right")
            ax2.set_xlim(min(ax2.get_xlim()[0], math.floor(min(v for _, v in raw) - 1)),
                         max(ax2.get_xlim()[1], max(v for _, v in raw) + 1))
        ax2.set_title("ours: mean +- std over seeds", fontsize=9)

    last = axes[0][-1]
    last.text(1.02, n - 0.3, "GMACs ours (paper)", transform=last.get_yaxis_transform(), fontsize=8,
              fontweight="bold")
    for yi, r in zip(y, rows, strict=True):
        flag = r["ok"] is False
        text = f"{r['gmacs']:.2f}" + ("" if r["paper_gmacs"] is None else f" ({r['paper_gmacs']:.2f})")
        last.text(1.02, yi, text + (" !!" if flag else ""), transform=last.get_yaxis_transform(), va="center",
                  fontsize=8, color="#b00000" if flag else "#333")
    last.text(1.02, -1, f"({regime.reference[2]:.2f})", transform=last.get_yaxis_transform(), va="center",
              fontsize=8, color="#333")
    if any(r["ok"] is False for r in rows):
        fig.text(0.01, 0.005, "!! the paper's table figure cannot be matched: see docs/roadmap.md", fontsize=7,
                 color="#b00000")
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


# ---------------------------------------------------------------------------------------------- sweep


@dataclass(frozen=True)
class SweepConfig:
    """What a small-scale sweep trains: every step's design scaled by `width` and `depth`, at `img_size`.

    The recipe is one of the training engine's (`recipe`, its small-data default); `epochs` is that of
    the modern-recipe steps, and the original-recipe step (ResNet-50's 90 epochs against 300) trains
    `resnet_epoch_ratio` of it. `data` is "fashion-mnist" or the root of an ImageFolder (train/, val/).
    """

    regime: str = "t"
    recipe: str = "roadmap_small"
    data: str = "fashion-mnist"
    width: float = 0.25
    depth: float = 1 / 3
    img_size: int = 32
    epochs: int = 4
    resnet_epoch_ratio: float = 0.3
    batch_size: int = 128
    train_subset: int | None = None
    val_subset: int | None = None
    steps: tuple[int, ...] | None = None
    seeds: tuple[int, ...] = (0,)

    def design(self, step: Step) -> Design:
        """The step's design at this sweep's scale."""
        return step.design.scaled(self.width, self.depth)

    def epochs_for(self, step: Step) -> int:
        return max(1, round(self.epochs * (self.resnet_epoch_ratio if step.design.recipe == "resnet" else 1)))


# train_fn(step, design, seed, config, run_dir) -> {"top1": float, ...}; run_dir is private to (step, seed),
# so an engine that checkpoints there resumes an interrupted step.
TrainFn = Callable[[Step, Design, int, SweepConfig, Path], dict]


def _slug(step: Step) -> str:
    keep = "".join(c if c.isalnum() else "-" for c in step.name.lower())
    return f"{step.index:02d}-" + "-".join(p for p in keep.split("-") if p)


def _write_json(path: Path, obj: Any) -> None:
    """Write atomically: a sweep killed mid-write never leaves a truncated result behind."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def _config_json(cfg: SweepConfig) -> dict:
    d = asdict(cfg)
    # Which steps and seeds run may change between invocations of one sweep; the rest may not.
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items() if k not in ("steps", "seeds")}


def run_sweep(cfg: SweepConfig, out: str | Path, train_fn: TrainFn,
              log: Callable[[str], None] = print) -> dict[str, dict]:
    """Train every (step, seed) of the sweep not yet finished in `out`, then summarise all results there.

    A finished run is the file `out/runs/<step>/seed<k>.json`; it is written last and atomically, so an
    interrupted sweep re-runs only what did not finish (the engine's own checkpoints in the run's
    directory let it resume within a step). A sweep directory holds one configuration: resuming with a
    different one is refused rather than mixing results.
    """
    out = Path(out)
    regime = REGIMES[cfg.regime]
    unknown = sorted(set(cfg.steps or ()) - set(range(len(regime))))
    if unknown:
        raise ValueError(f"no step {unknown} in the {regime.name} roadmap: steps are 0..{len(regime) - 1} "
                         "(see `convnext roadmap`)")
    out.mkdir(parents=True, exist_ok=True)
    cfg_file = out / "sweep.json"
    current = _config_json(cfg)
    if cfg_file.exists():
        before = json.loads(cfg_file.read_text())
        changed = {k: (before.get(k), v) for k, v in current.items() if before.get(k) != v}
        if changed:
            raise ValueError(f"{out} holds a sweep with other settings {changed} (was, now); resume it with the "
                             "same settings or choose another --out directory")
    else:
        _write_json(cfg_file, current)

    steps = [s for s in regime if cfg.steps is None or s.index in cfg.steps]
    for step in steps:
        for seed in cfg.seeds:
            run_dir = out / "runs" / _slug(step)
            result_file = run_dir / f"seed{seed}.json"
            if result_file.exists():
                log(f"[roadmap] step {step.index} {step.name} seed {seed}: done, skipped")
                continue
            run_dir.mkdir(parents=True, exist_ok=True)
            design = cfg.design(step)
            log(f"[roadmap] step {step.index} {step.name} seed {seed}: training {cfg.epochs_for(step)} epochs")
            t0 = time.time()
            result = dict(train_fn(step, design, seed, cfg, run_dir / f"seed{seed}"))
            if not isinstance(result.get("top1"), (int, float)) or math.isnan(result["top1"]):
                raise RuntimeError(f"train_fn returned no valid 'top1' for step {step.name} seed {seed}: {result}")
            result.update(step=step.name, index=step.index, seed=seed, seconds=round(time.time() - t0, 1),
                          design=asdict(design), epochs=cfg.epochs_for(step))
            _write_json(result_file, result)
            log(f"[roadmap] step {step.index} {step.name} seed {seed}: top-1 {result['top1']:.2f}")
    return summarize(out)


def load_results(out: str | Path) -> list[dict]:
    """Every finished run in a sweep directory."""
    return [json.loads(p.read_text()) for p in sorted(Path(out).glob("runs/*/seed*.json"))]


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(out: str | Path) -> dict[str, dict]:
    """Per step: mean and (sample) std of top-1 over the finished seeds, their number and time.

    `mean`/`std` are of the reported top-1 (the EMA model's where EMA was on, as in the paper);
    `mean_no_ema`/`std_no_ema` are of the raw model's, where the train_fn reported it.
    """
    by_step: dict[str, list[dict]] = {}
    for r in load_results(out):
        by_step.setdefault(r["step"], []).append(r)
    summary = {}
    for name, rs in by_step.items():
        mean, std = _mean_std([r["top1"] for r in rs])
        summary[name] = {"mean": mean, "std": std, "n": len(rs), "seeds": sorted(r["seed"] for r in rs),
                         "seconds": sum(r.get("seconds", 0) for r in rs), "index": rs[0]["index"],
                         "ema": any(r.get("ema", False) for r in rs)}
        if all("top1_no_ema" in r for r in rs):
            summary[name]["mean_no_ema"], summary[name]["std_no_ema"] = _mean_std([r["top1_no_ema"] for r in rs])
    return summary


def sweep_table(cfg: SweepConfig, summary: dict[str, dict]) -> str:
    """A Markdown table of the sweep: each step's scaled model size beside the paper's and our top-1."""
    regime = REGIMES[cfg.regime]
    in_chans = 1 if cfg.data == "fashion-mnist" else 3
    lines = [f"| # | step | params M (scaled) | MMACs at {cfg.img_size} | paper top-1 | ours top-1 | EMA | "
             "ours without EMA | seeds | train s |", "|---|---|---|---|---|---|---|---|---|---|"]

    def pm(mean: float | None, std: float, n: int) -> str:
        return "-" if mean is None else (f"{mean:.2f} +- {std:.2f}" if n > 1 else f"{mean:.2f}")

    for step in regime:
        m = summary.get(step.name)
        if m is None:
            continue
        with torch.device("meta"):
            model = build(cfg.design(step), num_classes=10, in_chans=in_chans)
        macs = count_macs(model, cfg.img_size, in_chans=in_chans) / 1e6
        lines.append(f"| {step.index} | {step.name}{'' if step.kept else ' (not kept)'} | "
                     f"{count_params(model) / 1e6:.3f} | {macs:.1f} | {_fmt(step.paper_top1, '.2f')} | "
                     f"{pm(m['mean'], m['std'], m['n'])} | {'yes' if m.get('ema') else 'no'} | "
                     f"{pm(m.get('mean_no_ema'), m.get('std_no_ema', 0.0), m['n'])} | {m['n']} | "
                     f"{m['seconds']:.0f} |")
    return "\n".join(lines)


# What the original (ResNet, 90-epoch) recipe leaves out of the modern one (paper Section 2.1). The engine's
# optimizer is AdamW for both: SGD is not part of the shared recipe.
ORIGINAL_RECIPE = ["data.mixup=0", "data.cutmix=0", "data.auto_augment=null", "data.reprob=0",
                   "data.label_smoothing=0"]


def train_step(step: Step, design: Design, seed: int, cfg: SweepConfig, run_dir: Path) -> dict:
    """The sweep's `train_fn`: one step and seed with the shared training engine and `cfg.recipe`.

    EMA is off for the BatchNorm steps, as in the paper; the original-recipe step drops the augmentation
    and regularisation of the modern recipe and trains `resnet_epoch_ratio` of the epochs. The run lives
    in `run_dir`, and resumes from its checkpoints there if the sweep was interrupted inside it.
    """
    from .data.datasets import build_datasets
    from .train import train
    from .train.config import load_config

    modern = design.recipe == "modern"
    fmnist = cfg.data == "fashion-mnist"
    overrides = [
        f"optim.epochs={cfg.epochs_for(step)}", f"optim.batch_size={cfg.batch_size}",
        f"data.input_size={28 if fmnist else cfg.img_size}", f"run.seed={seed}", f"run.out_dir={run_dir.parent}",
        f"run.name={run_dir.name}", "run.resume=auto", "run.progress=false", "run.tensorboard=false",
        "run.plots=false", "run.keep_last=1", f"run.eval_every={cfg.epochs_for(step)}",  # evaluate once, at the end
    ]
    if not fmnist:
        overrides += ["data.dataset=imagefolder", f"data.root={cfg.data}"]
    if cfg.train_subset:
        overrides.append(f"data.limit_train={cfg.train_subset}")
    if cfg.val_subset:
        overrides.append(f"data.limit_val={cfg.val_subset}")
    if not modern:
        overrides += ORIGINAL_RECIPE
    tcfg = load_config(cfg.recipe, overrides)
    tcfg.run.ema = tcfg.run.ema and design.norm == "ln"
    train_set, val_set, num_classes, in_chans = build_datasets(tcfg.data)
    model: torch.nn.Module = build(design, num_classes=num_classes, in_chans=in_chans,
                                   drop_path_rate=tcfg.model.drop_path_rate if modern else 0.0)
    if fmnist and cfg.img_size != 28:
        # The engine keeps Fashion-MNIST at its native 28x28; four stages after a stride-4 stem need more
        # (28 -> 7 -> 3 -> 1 -> 0), so the network sees the images resized to img_size.
        model = torch.nn.Sequential(torch.nn.Upsample(size=(cfg.img_size,) * 2, mode="bilinear"), model)
    result = train(tcfg, model=model, train_set=train_set, val_set=val_set, num_classes=num_classes)
    final = result.final_ema_top1 if tcfg.run.ema and result.final_ema_top1 is not None else result.final_top1
    return {"top1": final, "top1_no_ema": result.final_top1, "best_top1": result.best_top1, "ema": tcfg.run.ema,
            "train_time_s": result.train_time_s, "img_per_s": result.img_per_s, "run_dir": result.run_dir}
