"""The ConvNeXt state-dict layouts (official, timm, torchvision, HF transformers, and ConvNeXt V2's FCMAE
pretraining checkpoints): detect one from its keys and map between it and the official layout, by name, both ways.

Each layout is a table of (official key template, foreign key template) pairs. A template's `{i}`, `{j}`,
`{k}` stand for integers, `{p}` for `weight`/`bias`; torchvision numbers its `features` blocks 2i (stem and
downsampling) and 2i+1 (stages), written `{i2}` and `{i21}`. Tensors keep their values; only the few that
differ in shape are reshaped (torchvision's (C,1,1) layer scale, timm's 1x1-conv MLP weights, V2's GRN
parameters, the sparse FCMAE encoder's MinkowskiEngine kernels).

ConvNeXt V2 (GRN blocks) lives in the official, timm, HF (`ConvNextV2*`, prefix `convnextv2.`) and FCMAE
layouts; torchvision has no V2.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping

import torch

from .errors import CheckpointError

LAYOUTS = ("official", "timm", "torchvision", "hf", "fcmae")

# The official hierarchical keys (the isotropic model and the detection backbone's norm0..3 exist only in
# the official layout among these four).
STEM_CONV, STEM_LN = "downsample_layers.0.0.{p}", "downsample_layers.0.1.{p}"
DOWN = "downsample_layers.{i}.{k}.{p}"
DWCONV, NORM = "stages.{i}.{j}.dwconv.{p}", "stages.{i}.{j}.norm.{p}"
FC1, FC2 = "stages.{i}.{j}.pwconv1.{p}", "stages.{i}.{j}.pwconv2.{p}"
GAMMA = "stages.{i}.{j}.gamma"
GRN_GAMMA, GRN_BETA = "stages.{i}.{j}.grn.gamma", "stages.{i}.{j}.grn.beta"  # ConvNeXt V2, (1, 1, 1, 4C)
FINAL_NORM, HEAD = "norm.{p}", "head.{p}"
# The same keys split where the sparse FCMAE encoder differs by sub-key (its downsampling conv is a kernel)
DOWN_LN, DOWN_CONV, DOWN_CONV_BIAS = "downsample_layers.{i}.0.{p}", "downsample_layers.{i}.1.weight", \
    "downsample_layers.{i}.1.bias"
DWCONV_W, DWCONV_B = "stages.{i}.{j}.dwconv.weight", "stages.{i}.{j}.dwconv.bias"

_HF_STAGE = "convnext.encoder.stages.{i}"
_TV_BLOCK = "features.{i21}.{j}"
_SPARSE = "encoder.stages.{i}.{j}"
RULES: dict[str, list[tuple[str, str]]] = {
    "timm": [
        (STEM_CONV, "stem.0.{p}"), (STEM_LN, "stem.1.{p}"), (DOWN, "stages.{i}.downsample.{k}.{p}"),
        (DWCONV, "stages.{i}.blocks.{j}.conv_dw.{p}"), (NORM, "stages.{i}.blocks.{j}.norm.{p}"),
        (FC1, "stages.{i}.blocks.{j}.mlp.fc1.{p}"), (FC2, "stages.{i}.blocks.{j}.mlp.fc2.{p}"),
        (GAMMA, "stages.{i}.blocks.{j}.gamma"), (GRN_GAMMA, "stages.{i}.blocks.{j}.mlp.grn.weight"),
        (GRN_BETA, "stages.{i}.blocks.{j}.mlp.grn.bias"), (FINAL_NORM, "head.norm.{p}"), (HEAD, "head.fc.{p}"),
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
    # The official FCMAE pretraining checkpoint's encoder (SparseConvNeXtV2 on MinkowskiEngine): no final norm,
    # no head; its decoder (mask_token, proj, decoder, pred) has no classifier equivalent and is left out.
    "fcmae": [
        (STEM_CONV, "encoder.downsample_layers.0.0.{p}"), (STEM_LN, "encoder.downsample_layers.0.1.{p}"),
        (DOWN_LN, "encoder.downsample_layers.{i}.0.ln.{p}"), (DOWN_CONV, "encoder.downsample_layers.{i}.1.kernel"),
        (DOWN_CONV_BIAS, "encoder.downsample_layers.{i}.1.bias"), (DWCONV_W, _SPARSE + ".dwconv.kernel"),
        (DWCONV_B, _SPARSE + ".dwconv.bias"), (NORM, _SPARSE + ".norm.ln.{p}"),
        (FC1, _SPARSE + ".pwconv1.linear.{p}"), (FC2, _SPARSE + ".pwconv2.linear.{p}"),
        (GRN_GAMMA, _SPARSE + ".grn.gamma"), (GRN_BETA, _SPARSE + ".grn.beta"),
    ],
}
# HF's ConvNextV2 models: the ConvNext keys under the prefix "convnextv2.", with GRN's weight and bias
RULES["hf_v2"] = [(a, b.replace("convnext.", "convnextv2.", 1)) for a, b in RULES["hf"]] + [
    (GRN_GAMMA, "convnextv2.encoder.stages.{i}.layers.{j}.grn.weight"),
    (GRN_BETA, "convnextv2.encoder.stages.{i}.layers.{j}.grn.bias"),
]
# The FCMAE pretraining model's parts outside its encoder (its decoder), dropped when reading one
FCMAE_DECODER = ("mask_token", "proj.", "decoder.", "pred.")

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
    """Which layout a state dict is in, from its keys: "official", "timm", "torchvision", "hf" or "fcmae"."""
    keys = list(keys)
    present = set(keys)
    if any(k.startswith(("convnext.embeddings.", "convnextv2.embeddings.", "embeddings.patch_embeddings."))
           for k in keys):
        return "hf"
    if any(k.startswith("encoder.downsample_layers.") for k in keys):
        return "fcmae"
    if "features.0.0.weight" in present:
        return "torchvision"
    if "stem.0.weight" in present and any(".blocks." in k for k in keys):
        return "timm"
    if "downsample_layers.0.0.weight" in present or ("stem.weight" in present and "blocks.0.dwconv.weight" in present):
        return "official"
    raise CheckpointError(
        "Cannot tell which ConvNeXt layout this state dict is in (official, timm, torchvision, HF transformers or "
        f"FCMAE); its first keys are {keys[:5]}. Is it a ConvNeXt checkpoint? A training checkpoint may keep the "
        "weights under another key: pass key=... (CLI: --key)."
    )


def to_official(state_dict: Mapping[str, torch.Tensor], layout: str | None = None) -> dict[str, torch.Tensor]:
    """Rename (and reshape where needed) a state dict in any layout to the official one."""
    layout = layout or detect_layout(state_dict)
    _check_layout(layout)
    rules = layout
    if layout == "official":
        # GRN parameters as (1, 1, 1, 4C) whatever shape a file gives them: the released pt_only FCMAE encoders'
        # is not documented (users report their other keys), and a remapped sparse one would give (1, 4C)
        return {k: _from_foreign(GRN_GAMMA, v) if k.endswith((".grn.gamma", ".grn.beta")) else v
                for k, v in state_dict.items()}
    if layout == "hf":
        v2 = any(".grn." in k for k in state_dict)
        rules, prefix = ("hf_v2", "convnextv2.") if v2 else ("hf", "convnext.")
        if not any(k.startswith(prefix) for k in state_dict):
            # ConvNext(V2)Model (no classifier) has no "convnext(v2)." prefix; its keys are otherwise the same.
            state_dict = {f"{prefix}{k}": v for k, v in state_dict.items()}
    if layout == "fcmae":
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(FCMAE_DECODER)}
        if not any(k.endswith(".kernel") for k in state_dict):
            # FCMAE's dense encoder (ours, `convnext.pretrain.FCMAE`): the official keys under "encoder."
            return to_official({k.removeprefix("encoder."): v for k, v in state_dict.items()}, "official")
    out, unmapped = {}, []
    for key, value in state_dict.items():
        for official, foreign in _COMPILED[rules]:
            fields = foreign.match(key)
            if fields is not None:
                name = official.format(fields)
                out[name] = _from_foreign(official.template, value)
                break
        else:
            unmapped.append(key)
    if unmapped:
        raise CheckpointError(f"{len(unmapped)} key(s) of this {layout} state dict have no official equivalent: "
                              f"{unmapped[:5]}. Is it a ConvNeXt or ConvNeXt V2 checkpoint of a supported variant?")
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
    v2 = any(k.endswith(".grn.gamma") for k in state_dict)
    if v2 and layout == "torchvision":
        raise CheckpointError("torchvision has no ConvNeXt V2 (GRN blocks): write these weights in the official, "
                              "timm, HF or our (safetensors) layout.")
    rules = "hf_v2" if v2 and layout == "hf" else layout
    out, unmapped = {}, []
    for key, value in state_dict.items():
        for official, foreign in _COMPILED[rules]:
            fields = official.match(key)
            if fields is not None:
                out[foreign.format(fields)] = _to_foreign(official.template, value, layout, conv_mlp)
                break
        else:
            unmapped.append(key)
    if unmapped and layout == "fcmae":
        raise CheckpointError(
            f"{len(unmapped)} key(s) have no equivalent in an FCMAE encoder: {unmapped[:5]}. The FCMAE layout holds "
            "a ConvNeXt V2 encoder only (no final norm, no head): convert the encoder of a V2 model "
            "(drop norm.* and head.*)."
        )
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
    if template in (GRN_GAMMA, GRN_BETA):  # timm (4C,), sparse FCMAE (1, 4C)
        return value.reshape(1, 1, 1, -1)
    if template == DOWN_CONV and value.ndim == 3:  # MinkowskiConvolution kernel (k*k, in, out)
        kk, c_in, c_out = value.shape
        k = math.isqrt(kk)
        return value.permute(2, 1, 0).reshape(c_out, c_in, k, k).transpose(3, 2).contiguous()
    if template == DWCONV_W and value.ndim == 2:  # MinkowskiDepthwiseConvolution kernel (k*k, C)
        kk, c = value.shape
        k = math.isqrt(kk)
        return value.permute(1, 0).reshape(c, 1, k, k).transpose(3, 2).contiguous()
    if template in (DOWN_CONV_BIAS, DWCONV_B) and value.ndim == 2:  # Minkowski biases (1, C)
        return value.reshape(-1)
    return value


def _to_foreign(template: str, value: torch.Tensor, layout: str, conv_mlp: bool) -> torch.Tensor:
    if layout == "timm" and conv_mlp and template in (FC1, FC2) and value.ndim == 2:
        return value[:, :, None, None]
    if layout == "torchvision" and template == GAMMA:
        return value[:, None, None]
    if template in (GRN_GAMMA, GRN_BETA) and layout in ("timm", "fcmae"):
        return value.reshape(-1) if layout == "timm" else value.reshape(1, -1)
    if layout == "fcmae":  # the inverse of _from_foreign's MinkowskiEngine reshapes (what the official remap undoes)
        if template == DOWN_CONV:
            c_out, c_in, k, _ = value.shape
            return value.transpose(3, 2).reshape(c_out, c_in, k * k).permute(2, 1, 0).contiguous()
        if template == DWCONV_W:
            c, _, k, _ = value.shape
            return value.transpose(3, 2).reshape(c, k * k).permute(1, 0).contiguous()
        if template in (DOWN_CONV_BIAS, DWCONV_B):
            return value.reshape(1, -1)
    return value


def _add_identity_layer_scale(official: Mapping[str, torch.Tensor], out: dict[str, torch.Tensor]) -> None:
    """torchvision blocks always have a layer scale: a model without one is the same as a scale of ones."""
    dwconv, gamma, layer_scale = _Template(DWCONV), _Template(GAMMA), _Template(_TV_BLOCK + ".layer_scale")
    for key, value in official.items():
        fields = dwconv.match(key)
        if fields and fields["p"] == "weight" and gamma.format(fields) not in official:
            out[layer_scale.format(fields)] = torch.ones(value.shape[0], 1, 1, dtype=value.dtype)
