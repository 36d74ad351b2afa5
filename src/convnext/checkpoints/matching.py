"""Fitting an official-layout state dict to a model: what architecture a state dict describes, and strict
loading whose errors name the offending keys and the likely cause."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ..models import MODELS, ConvNeXt, ConvNeXtIsotropic
from .errors import CheckpointError

_BACKBONE_NORM = re.compile(r"norm(\d+)\.")


def infer_config(state_dict: Mapping[str, torch.Tensor], name: str | None = None) -> dict[str, Any]:
    """The `create_model` arguments an official-layout state dict was made with: {"model": name, ...}.

    The name is `name` if given (e.g. the one a training recipe records) and the same kind of network (V1 or
    V2: GRN parameters; hierarchical or isotropic), else the registered model with the same depths, widths and
    block kind; the stem, kernel, widths, layer scale and class count come from the tensor shapes, so the
    config rebuilds any variant the file holds. An encoder without final norm and head (FCMAE pretraining
    weights) gives num_classes 0.
    """
    sd = state_dict
    if "stem.weight" in sd:  # isotropic
        dim, in_chans, patch, _ = sd["stem.weight"].shape
        depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        arch: dict[str, Any] = {"depth": depth, "dim": dim}
        cfg: dict[str, Any] = {"in_chans": in_chans, "patch_size": patch}
        has_gamma = "blocks.0.gamma" in sd
    elif "downsample_layers.0.0.weight" in sd:
        n_stages = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("stages."))
        depths = [1 + max((int(k.split(".")[2]) for k in sd if k.startswith(f"stages.{i}.")), default=-1)
                  for i in range(n_stages)]
        dims = [sd[f"stages.{i}.0.dwconv.weight"].shape[0] for i in range(n_stages)]
        arch = {"depths": depths, "dims": dims, "use_grn": "stages.0.0.grn.gamma" in sd}
        _, in_chans, patch, _ = sd["downsample_layers.0.0.weight"].shape
        cfg = {"in_chans": in_chans, "patch_size": patch, "kernel_size": sd["stages.0.0.dwconv.weight"].shape[-1]}
        has_gamma = "stages.0.0.gamma" in sd
    else:
        raise CheckpointError(f"Not an official-layout ConvNeXt state dict (first keys {list(sd)[:5]}).")
    if name not in MODELS or _spec_arch(MODELS[name].kwargs, arch).keys() != arch.keys() \
            or _spec_arch(MODELS[name].kwargs, arch).get("use_grn") != arch.get("use_grn"):
        name = next((n for n, s in MODELS.items() if _spec_arch(s.kwargs, arch) == arch), None) or (
            "convnext_iso_small" if "depth" in arch else "convnextv2_tiny" if arch["use_grn"] else "convnext_tiny")
    cfg.update({k: v for k, v in arch.items() if k != "use_grn"})
    layer_scale = 1e-6 if has_gamma else 0.0
    if not arch.get("use_grn") and MODELS[name].kwargs.get("layer_scale_init_value", 1e-6) != layer_scale:
        cfg["layer_scale_init_value"] = layer_scale
    backbone = sorted(int(m.group(1)) for k in sd if (m := _BACKBONE_NORM.match(k)) and k.endswith(".weight"))
    if backbone:
        cfg.update(features_only=True, out_indices=backbone)
    else:
        cfg["num_classes"] = sd["head.weight"].shape[0] if "head.weight" in sd else 0
    # Leave out what building `name` already gives (its registry entry over the constructor's defaults), so
    # the config reads like a create_model call.
    defaults = _plain({**{k: p.default for k, p in inspect.signature(MODELS[name].cls).parameters.items()},
                       **MODELS[name].kwargs})
    return {"model": name, **{k: v for k, v in cfg.items() if k == "num_classes" or defaults.get(k, v) != v
                              or k in ("layer_scale_init_value", "features_only", "out_indices")}}


def _plain(d: Mapping[str, Any]) -> dict[str, Any]:
    """Tuples as lists, so a registry entry compares equal to the same values read from a file."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _spec_arch(kwargs: Mapping[str, Any], arch: Mapping[str, Any]) -> dict[str, Any]:
    """A registered model's values of the `arch` keys, as infer_config compares them."""
    out = _plain({k: v for k, v in kwargs.items() if k in arch})
    if "use_grn" in arch:
        out["use_grn"] = bool(kwargs.get("use_grn", False))
    return out


def load_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str = "the checkpoint",
                 allow_missing: Iterable[str] = (), assign: bool = False) -> None:
    """`model.load_state_dict(state_dict)`, strict, except keys under the prefixes `allow_missing` (which
    keep their initialisation); a misfit raises a CheckpointError naming keys, counts and the likely cause.

    `assign=True` makes the file's tensors the model's parameters (for a model built on the meta device),
    cast to the model's dtype."""
    allow = tuple(allow_missing)
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and not (allow and k.startswith(allow))]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: {tuple(state_dict[k].shape)} in the file, {tuple(v.shape)} in the model"
              for k, v in own.items() if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = [f"{len(keys)} {what} ({_few(keys)})" for what, keys in
                 (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if keys]
        raise CheckpointError(f"{source} does not fit the model: {'; '.join(parts)}. "
                              f"Likely cause: {_likely_cause(model, state_dict, missing, unexpected, shapes)}")
    if assign:
        state_dict = {k: v.to(own[k].dtype) for k, v in state_dict.items()}
    # Checked above: nothing unexpected, and only the allowed keys missing.
    model.load_state_dict(state_dict, strict=False, assign=assign)


def _few(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def _likely_cause(model: nn.Module, sd: Mapping[str, torch.Tensor], missing: list[str], unexpected: list[str],
                  shapes: list[str]) -> str:
    file_backbone = any(_BACKBONE_NORM.match(k) for k in sd)
    model_backbone = any(_BACKBONE_NORM.match(k) for k in model.state_dict())
    if file_backbone and not model_backbone:
        return ("the file is a detection/segmentation backbone (norm0..norm3, no classifier) and the model a "
                "classifier: build it with features_only=True.")
    if model_backbone and not file_backbone and not shapes and all(k.startswith(("norm", "head")) for k in unexpected):
        return ("the file is a classifier and the model a backbone: create_model(name, pretrained=path, "
                "features_only=True) loads it (norm0..norm3 then keep their initialisation).")
    if shapes and all(s.startswith("head.") for s in shapes) and not missing and not unexpected:
        rows = sd["head.weight"].shape[0]
        hint = " (21841 = an ImageNet-22K head)" if rows == 21841 else ""
        return (f"a different class count: the file's classifier has {rows} classes{hint}, the model's "
                f"{model.num_classes}. Pass num_classes={rows}, or load with create_model(name, pretrained=path, "
                "num_classes=N) to re-initialise only the head.")
    if any(k.startswith(("stem.", "features.", "convnext.", "classifier.")) for k in unexpected) and \
            not isinstance(model, ConvNeXtIsotropic):
        return ("the state dict is not in the official layout: read it with convnext.load_state_dict(path), "
                "which detects and converts timm, torchvision and HF layouts.")
    try:
        file_cfg = infer_config(sd)
    except CheckpointError:
        return "this is not a ConvNeXt state dict in the official layout."
    model_arch = _arch(model)
    file_arch = {k: file_cfg.get(k, MODELS[file_cfg["model"]].kwargs.get(k, False if k == "use_grn" else None))
                 for k in model_arch}
    file_arch = {k: list(v) if isinstance(v, tuple) else v for k, v in file_arch.items()}
    if file_arch != model_arch:
        return (f"a different model: the file looks like {file_cfg['model']} ({_fmt(file_arch)}), the model has "
                f"{_fmt(model_arch)}. Create the matching model, or use convnext.load(path), which reads the "
                "architecture from the file.")
    return "the file was saved from a model with other options (layer scale, stem, in_chans); compare the keys above."


def _arch(model: nn.Module) -> dict[str, Any]:
    if isinstance(model, ConvNeXt):
        return {"depths": list(model.depths), "dims": list(model.dims), "use_grn": model.use_grn}
    if isinstance(model, ConvNeXtIsotropic):
        return {"depth": len(model.blocks), "dim": model.num_features}
    return {}


def _fmt(arch: dict[str, Any]) -> str:
    text = ", ".join(f"{k} {tuple(v) if isinstance(v, list) else v}" for k, v in arch.items() if k != "use_grn")
    return text + (", ConvNeXt V2 (GRN) blocks" if arch.get("use_grn") else "")
