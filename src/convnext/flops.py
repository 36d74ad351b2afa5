"""FLOP and parameter counting with torch.utils.flop_counter (GMACs = FLOPs / 2, as the paper counts), in
total and per stage, at any input size; and the `convnext flops` command."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from . import fast


def count_params(model: nn.Module) -> int:
    """Number of parameters (all of them, trainable or not)."""
    return sum(p.numel() for p in model.parameters())


RULES = ("macs", "fvcore")
# fvcore's count for a LayerNorm with an affine transform: 5 operations per element (its `norm_flop_counter`)
FVCORE_LAYER_NORM = 5


def count_macs(model: nn.Module, size: int | tuple[int, int] = 224, in_chans: int = 3, rule: str = "macs") -> int:
    """Multiply-accumulates of one forward pass on a single image of `size` (an int or (H, W)).

    `rule` says what counts: "macs", the convolutions and linear layers (the ConvNeXt paper's GFLOPs);
    "fvcore", those plus 5 per element of every channels-last `nn.LayerNorm`, which is what fvcore counts on
    the official ConvNeXt-V2 code (whose channels-first LayerNorm is written out in elementwise ops that
    fvcore does not count) and what the V2 README's FLOPs match (docs: 13 of its 14 figures; tests/test_v2.py).

    The input is made on the model's device, so a model built on the "meta" device (see `convnext flops`)
    is counted without memory or compute, even XL at 2048x512.
    """
    return _module_macs(model, size, in_chans, rule)[""]


@torch.no_grad()
def _module_macs(model: nn.Module, size: int | tuple[int, int], in_chans: int, rule: str = "macs"
                 ) -> dict[str, int]:
    """MACs per module name ("" for the whole model, "stages.0", "stages.0.1.dwconv", ...)."""
    if rule not in RULES:
        raise ValueError(f"Unknown counting rule {rule!r}; choose one of {', '.join(RULES)}")
    h, w = (size, size) if isinstance(size, int) else size
    x = torch.zeros(1, in_chans, h, w, device=next(model.parameters()).device)
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    # fused kernels (oneDNN Linear+GELU) have no FLOP formula: count the reference ops, which do the same math
    extra: dict[str, int] = {}
    hooks = []
    if rule == "fvcore":
        def count_norm(name: str, output: torch.Tensor) -> None:
            parts = name.split(".")
            for prefix in ["", *(".".join(parts[:i]) for i in range(1, len(parts) + 1))]:
                extra[prefix] = extra.get(prefix, 0) + FVCORE_LAYER_NORM * output.numel()

        hooks = [m.register_forward_hook(lambda m, i, o, n=name: count_norm(n, o))
                 for name, m in model.named_modules() if type(m) is nn.LayerNorm]  # not LayerNorm2d
    try:
        with fast.reference(model), counter:
            model(x)
    finally:
        for h in hooks:
            h.remove()
    model.train(was_training)
    counts = {}
    for name, ops in counter.get_flop_counts().items():
        if name == "Global":
            counts[""] = sum(ops.values()) // 2
        elif "." in name:  # "ConvNeXt.stages.0" -> "stages.0"; the bare class name repeats Global
            counts[name.split(".", 1)[1]] = sum(ops.values()) // 2
    counts.setdefault("", 0)
    for name, n in extra.items():
        counts[name] = counts.get(name, 0) + n
    return counts


def _roots(model: nn.Module) -> list[str]:
    """Disjoint submodules covering the model: its children, with ModuleLists opened one level."""
    roots = []
    for name, child in model.named_children():
        if isinstance(child, nn.ModuleList):
            roots += [f"{name}.{i}" for i in range(len(child))]
        else:
            roots.append(name)
    return roots


def _stage_of(model: nn.Module, root: str) -> str:
    """The paper's grouping: stem; stage i = its downsampling layer + its blocks (+ a backbone's norm i); head."""
    from .models import ConvNeXt, ConvNeXtIsotropic

    parts = root.split(".")
    if isinstance(model, ConvNeXt):
        if parts[0] == "downsample_layers":
            return "stem" if parts[1] == "0" else f"stage{parts[1]}"
        if parts[0] == "stages":
            return f"stage{parts[1]}"
        if parts[0][:4] == "norm" and parts[0][4:].isdigit():
            return f"stage{parts[0][4:]}"
        return "head"
    if isinstance(model, ConvNeXtIsotropic):
        return {"stem": "stem", "blocks": "blocks"}.get(parts[0], "head")
    return parts[0]


def stage_breakdown(model: nn.Module, sizes: Sequence[int | tuple[int, int]] = (224,),
                    in_chans: int = 3) -> list[dict[str, object]]:
    """Params and MACs per stage: one row per stage in forward order plus a "total" row.

    Each row is {"stage", "params", "macs": [MACs at each size]}; the stage rows sum to the total (work
    done outside any submodule, if any, is a row "other").
    """
    per_size = [_module_macs(model, s, in_chans) for s in sizes]
    roots = _roots(model)
    stages: dict[str, dict[str, object]] = {}
    for root in roots:
        row = stages.setdefault(_stage_of(model, root), {"params": 0, "macs": [0] * len(sizes)})
        row["params"] += count_params(model.get_submodule(root))
        row["macs"] = [m + counts.get(root, 0) for m, counts in zip(row["macs"], per_size, strict=True)]
    total_params = count_params(model)
    other_params = total_params - sum(r["params"] for r in stages.values())
    other_macs = [c[""] - sum(r["macs"][i] for r in stages.values()) for i, c in enumerate(per_size)]
    if other_params or any(other_macs):
        stages["other"] = {"params": other_params, "macs": other_macs}
    rows = sorted(({"stage": k, **v} for k, v in stages.items()), key=_forward_order)
    rows.append({"stage": "total", "params": total_params, "macs": [c[""] for c in per_size]})
    return rows


def _forward_order(row: dict[str, object]) -> int:
    # ConvNeXt lists all downsampling layers before all stages; show the stages in the order data meets them.
    name = str(row["stage"])
    if name == "stem":
        return -1
    return int(name[5:]) if name[:5] == "stage" and name[5:].isdigit() else 100


def format_breakdown(rows: list[dict[str, object]], sizes: Sequence[tuple[int, int]]) -> str:
    """A Markdown table: stage, params (M) and GMACs at each size."""
    head = "| stage | params (M) | " + " | ".join(f"GMACs {h}x{w}" for h, w in sizes) + " |"
    lines = [head, "|---" * (2 + len(sizes)) + "|"]
    for r in rows:
        macs = " | ".join(f"{m / 1e9:.3f}" for m in r["macs"])
        lines.append(f"| {r['stage']} | {r['params'] / 1e6:.3f} | {macs} |")
    return "\n".join(lines)


def model_table(pattern: str = "*") -> list[dict]:
    """One row per registered model: our params (M) and GMACs at 224 and 384, and the paper's figures."""
    from .models import MODELS, build_model, list_models

    rows = []
    for name in list_models(pattern):
        with torch.device("meta"):  # counting needs shapes only: even XL costs no memory
            model = build_model(name)
        paper = MODELS[name].paper
        rows.append({
            "model": name,
            "params_m": count_params(model) / 1e6,
            "gmacs_224": count_macs(model, 224, rule=MODELS[name].count_rule) / 1e9,
            "gmacs_384": count_macs(model, 384, rule=MODELS[name].count_rule) / 1e9,
            "count_rule": MODELS[name].count_rule,
            "paper_params_m": paper.get("params"),
            "paper_gmacs_224": paper.get("gmacs_224"),
            "paper_gmacs_384": paper.get("gmacs_384"),
            "paper_top1": paper.get("top1"),
        })
    return rows
