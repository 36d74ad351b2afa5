"""The four ConvNeXt state-dict layouts (official, timm, torchvision, HF transformers): detect one from its
keys and map between it and the official layout, by name, both ways.

Each layout is a table of (official key template, foreign key template) pairs. A template's `{i}`, `{j}`,
`{k}` stand for integers, `{p}` for `weight`/`bias`; torchvision numbers its `features` blocks 2i (stem and
downsampling) and 2i+1 (stages), written `{i2}` and `{i21}`. Tensors keep their values; only the few that
differ in shape are reshaped (torchvision's (C,1,1) layer scale, timm's 1x1-conv MLP weights).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import torch

from .errors import CheckpointError

LAYOUTS = ("official", "timm", "torchvision", "hf")

# The official hierarchical keys (the isotropic model and the detection backbone's norm0..3 exist only in
# the official layout among these four).
STEM_CONV, STEM_LN = "downsample_layers.0.0.{p}", "downsample_layers.0.1.{p}"
DOWN = "downsample_layers.{i}.{k}.{p}"
DWCONV, NORM = "stages.{i}.{j}.dwconv.{p}", "stages.{i}.{j}.norm.{p}"
FC1, FC2 = "stages.{i}.{j}.pwconv1.{p}", "stages.{i}.{j}.pwconv2.{p}"
GAMMA = "stages.{i}.{j}.gamma"
FINAL_NORM, HEAD = "norm.{p}", "head.{p}"

_HF_STAGE = "convnext.encoder.stages.{i}"
_TV_BLOCK = "features.{i21}.{j}"
RULES: dict[str, list[tuple[str, str]]] = {
    "timm": [
        (STEM_CONV, "stem.0.{p}"), (STEM_LN, "stem.1.{p}"), (DOWN, "stages.{i}.downsample.{k}.{p}"),
        (DWCONV, "stages.{i}.blocks.{j}.conv_dw.{p}"), (NORM, "stages.{i}.blocks.{j}.norm.{p}"),
        (FC1, "stages.{i}.blocks.{j}.mlp.fc1.{p}"), (FC2, "stages.{i}.blocks.{j}.mlp.fc2.{p}"),
        (GAMMA, "stages.{i}.blocks.{j}.gamma"), (FINAL_NORM, "head.norm.{p}"), (HEAD, "head.fc.{p}"),
    ],
    "torchvision": [
        (STEM_CONV, "features.0.0.{p}"), (STEM_LN, "features.0.1.{p}"), (DOWN, "features.{i2}.{k}.{p}"),
        (DWCONV, _TV_BLOCK + ".block.0.{p}"), (NORM, _TV_BLOCK + ".block.2.{p}"),
        (FC1, _TV_BLOCK + ".block.3.{p}"), (FC2, _TV_BLOCK + ".block.5.{p}"),
        (GAMMA, _TV_BLOCK + ".layer_scale"), (FINAL_NORM, "classifier.0.{p}"), (HEAD, "classifier.2.{p}"),
    ],
    "hf": [
        (STEM_CONV, "convnext.embeddings.patch_embeddings.{p}"), (STEM_LN, "convnext.embeddings.layernorm.{p}"),
        (DOWN, _HF_STAGE + ".downsampling_layer.{k}.{p}"), (DWCONV, _HF_STAGE + ".layers.{j}.dwconv.{p}"),
        (NORM, _HF_STAGE + ".layers.{j}.layernorm.{p}"), (FC1, _HF_STAGE + ".layers.{j}.pwconv1.{p}"),
        (FC2, _HF_STAGE + ".layers.{j}.pwconv2.{p}"), (GAMMA, _HF_STAGE + ".layers.{j}.layer_scale_parameter"),
        (FINAL_NORM, "convnext.layernorm.{p}"), (HEAD, "classifier.{p}"),
    ],
}

# placeholder -> (logical field, encode official value, decode foreign value or None when it cannot be one)
_FIELDS: dict[str, tuple[str, Callable[[int], int], Callable[[int], int | None]]] = {
    "i": ("i", int, int), "j": ("j", int, int), "k": ("k", int, int),
    "i2": ("i", lambda i: 2 * i, lambda d: d // 2 if d % 2 == 0 else None),
    "i21": ("i", lambda i: 2 * i + 1, lambda s: (s - 1) // 2 if s % 2 == 1 else None),
}


class _Template:
    """A key template compiled to a regex; `match` gives logical fields, `format` writes them back."""

    def __init__(self, template: str) -> None:
        self.template = template
        self.names = re.findall(r"\{(\w+)\}", template)
        pattern = re.escape(template)
        for name in self.names:
            group = r"(?P<p>weight|bias)" if name == "p" else rf"(?P<{name}>\d+)"
            pattern = pattern.replace(re.escape("{" + name + "}"), group)
        self.regex = re.compile(pattern + "$")

    def match(self, key: str) -> dict[str, int | str] | None:
        m = self.regex.match(key)
        if m is None:
            return None
        fields: dict[str, int | str] = {}
        for name, value in m.groupdict().items():
            if name == "p":
                fields["p"] = value
                continue
            field, _, decode = _FIELDS[name]
            decoded = decode(int(value))
            if decoded is None:
                return None
            fields[field] = decoded
        return fields

    def format(self, fields: Mapping[str, int | str]) -> str:
        values = {n: fields["p"] if n == "p" else _FIELDS[n][1](int(fields[_FIELDS[n][0]])) for n in self.names}
        return self.template.format(**values)


_COMPILED = {layout: [(_Template(a), _Template(b)) for a, b in rules] for layout, rules in RULES.items()}


def detect_layout(keys: Mapping[str, object] | list[str]) -> str:
    """Which layout a state dict is in, from its keys: "official", "timm", "torchvision" or "hf"."""
    keys = list(keys)
    present = set(keys)
    if any(".grn." in k or k.endswith(".grn.gamma") for k in keys):
        raise CheckpointError("This is a ConvNeXt-V2 checkpoint (it has GRN layers); this library implements "
                              "ConvNeXt (V1), whose blocks have no GRN, so these weights cannot be loaded.")
    if any(k.startswith(("convnext.embeddings.", "embeddings.patch_embeddings.")) for k in keys):
        return "hf"
    if "features.0.0.weight" in present:
        return "torchvision"
    if "stem.0.weight" in present and any(".blocks." in k for k in keys):
        return "timm"
    if "downsample_layers.0.0.weight" in present or ("stem.weight" in present and "blocks.0.dwconv.weight" in present):
        return "official"
    raise CheckpointError(
        "Cannot tell which ConvNeXt layout this state dict is in (official, timm, torchvision or HF transformers); "
        f"its first keys are {keys[:5]}. Is it a ConvNeXt checkpoint? A training checkpoint may keep the "
        "weights under another key: pass key=... (CLI: --key)."
    )


def to_official(state_dict: Mapping[str, torch.Tensor], layout: str | None = None) -> dict[str, torch.Tensor]:
    """Rename (and reshape where needed) a state dict in any layout to the official one."""
    layout = layout or detect_layout(state_dict)
    _check_layout(layout)
    if layout == "official":
        return dict(state_dict)
    if layout == "hf" and not any(k.startswith("convnext.") for k in state_dict):
        # ConvNextModel (no classifier) has no "convnext." prefix; its keys are otherwise the same.
        state_dict = {f"convnext.{k}": v for k, v in state_dict.items()}
    out, unmapped = {}, []
    for key, value in state_dict.items():
        for official, foreign in _COMPILED[layout]:
            fields = foreign.match(key)
            if fields is not None:
                name = official.format(fields)
                out[name] = _from_foreign(official.template, value)
                break
        else:
            unmapped.append(key)
    if unmapped:
        raise CheckpointError(f"{len(unmapped)} key(s) of this {layout} state dict have no official equivalent: "
                              f"{unmapped[:5]}. Is it a ConvNeXt (V1) checkpoint of a supported variant?")
    return out


def from_official(
    state_dict: Mapping[str, torch.Tensor], layout: str, *, conv_mlp: bool = False
) -> dict[str, torch.Tensor]:
    """Rename an official-layout state dict to `layout`.

    Args:
        conv_mlp: for timm: write the MLP weights as 1x1 convs (C_out, C_in, 1, 1), as timm's
            `conv_mlp=True` models (convnext_atto .. convnext_nano) store them.
    """
    _check_layout(layout)
    if layout == "official":
        return dict(state_dict)
    out, unmapped = {}, []
    for key, value in state_dict.items():
        for official, foreign in _COMPILED[layout]:
            fields = official.match(key)
            if fields is not None:
                out[foreign.format(fields)] = _to_foreign(official.template, value, layout, conv_mlp)
                break
        else:
            unmapped.append(key)
    if unmapped:
        raise CheckpointError(
            f"{len(unmapped)} key(s) have no {layout} equivalent: {unmapped[:5]}. The {layout} layout holds only "
            "the hierarchical classifier (no isotropic model, no detection-backbone norm0..3): keep these weights "
            "in the official layout or in ours (safetensors)."
        )
    if layout == "torchvision":
        _add_identity_layer_scale(state_dict, out)
    return out


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"Unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")


def _from_foreign(template: str, value: torch.Tensor) -> torch.Tensor:
    if template in (FC1, FC2) and value.ndim == 4:  # timm conv_mlp: (out, in, 1, 1)
        return value.flatten(1)
    if template == GAMMA and value.ndim == 3:  # torchvision: (C, 1, 1)
        return value.flatten()
    return value


def _to_foreign(template: str, value: torch.Tensor, layout: str, conv_mlp: bool) -> torch.Tensor:
    if layout == "timm" and conv_mlp and template in (FC1, FC2) and value.ndim == 2:
        return value[:, :, None, None]
    if layout == "torchvision" and template == GAMMA:
        return value[:, None, None]
    return value


def _add_identity_layer_scale(official: Mapping[str, torch.Tensor], out: dict[str, torch.Tensor]) -> None:
    """torchvision blocks always have a layer scale: a model without one is the same as a scale of ones."""
    dwconv, gamma, layer_scale = _Template(DWCONV), _Template(GAMMA), _Template(_TV_BLOCK + ".layer_scale")
    for key, value in official.items():
        fields = dwconv.match(key)
        if fields and fields["p"] == "weight" and gamma.format(fields) not in official:
            out[layer_scale.format(fields)] = torch.ones(value.shape[0], 1, 1, dtype=value.dtype)
