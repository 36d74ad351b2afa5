"""Rewrite a checkpoint in another layout (or in ours): what `convnext convert` does."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..data_config import DataSpec
from .errors import CheckpointError
from .io import write_json, write_state_dict
from .layouts import LAYOUTS, from_official
from .matching import infer_config
from .ours import save_state_dict
from .pretrained import imagenet_class_names
from .source import Source, read_source

TARGETS = (*LAYOUTS, "safetensors")


def convert(src: str | os.PathLike | Source, dst: str | os.PathLike, to: str = "safetensors", *,
            key: str | None = None, conv_mlp: bool = False) -> tuple[Path, str]:
    """Read `src` (any layout, wrapped or not, ours, a training checkpoint; or a `Source` already read) and
    write it to `dst` in layout `to`:

    - "safetensors" (the default): ours (model.safetensors + config.json with the model config and, where the
      source records one, the data config: input format and class names), loadable with `convnext.load`;
    - "official": {"model": state_dict} with torch.save (a .safetensors `dst` gets the bare state dict);
    - "timm", "torchvision": the bare state dict (torch.save, or safetensors for a .safetensors `dst`);
      `conv_mlp` writes timm's 1x1-conv MLP weights (timm's convnext(v2)_atto..nano use them);
    - "hf": a directory for `ConvNextForImageClassification.from_pretrained` (`ConvNextV2...` for a V2 model;
      config.json with the class names as id2label, preprocessor_config.json, model.safetensors), or just the
      weights for a .safetensors/.bin `dst`;
    - "fcmae": a V2 encoder (no final norm or head) as the official FCMAE pretraining code saves it,
      {"model": state_dict} with MinkowskiEngine's kernel shapes.
    Returns the weights file written and the layout `src` was in.
    """
    if to not in TARGETS:
        raise ValueError(f"Unknown target {to!r}; choose one of {', '.join(TARGETS)}")
    source = src if isinstance(src, Source) else read_source(src, key)
    official = source.state_dict
    dst = Path(dst)
    if to == "safetensors":
        return save_state_dict(official, dst, source.model_config, source.data_config), source.layout
    out = from_official(official, to, conv_mlp=conv_mlp)
    if to == "hf" and dst.suffix not in (".safetensors", ".bin"):
        write_json(hf_config(official, source.data_config), dst / "config.json")
        if source.data_config is not None:
            write_json(source.data_config.to_hf(), dst / "preprocessor_config.json")
        dst = dst / "model.safetensors"
    elif to in ("official", "fcmae") and dst.suffix != ".safetensors":
        out = {"model": out}
    write_state_dict(out, dst)
    return dst, source.layout


def hf_config(official: dict, data_config: DataSpec | None = None) -> dict[str, Any]:
    """The transformers ConvNextConfig (ConvNextV2Config for a V2 model) of an official-layout state dict;
    id2label and image_size from `data_config` where given (else ImageNet's names for 1000/21841 classes,
    "class i" otherwise).

    layer_norm_eps is written as 1e-6, the value every other implementation uses for the final LayerNorm,
    so that the HF model computes exactly what ours does (HF's own default there is 1e-12).
    """
    cfg = infer_config(official)
    if "features_only" in cfg or "downsample_layers.0.0.weight" not in official:
        raise CheckpointError("The HF layout holds the hierarchical classifier only (no isotropic model or "
                              "detection backbone).")
    n_stages = 1 + max(int(k.split(".")[1]) for k in official if k.startswith("stages."))
    depths = [1 + max(int(k.split(".")[2]) for k in official if k.startswith(f"stages.{i}.")) for i in range(n_stages)]
    names = list(data_config.class_names or []) if data_config else []
    if len(names) != cfg["num_classes"]:
        names = imagenet_class_names(cfg["num_classes"])
    stem = official["downsample_layers.0.0.weight"]
    v2 = "stages.0.0.grn.gamma" in official
    if v2 and official["stages.0.0.dwconv.weight"].shape[-1] != 7:
        raise CheckpointError("HF's ConvNextV2 has 7x7 depthwise kernels only; keep this model in the official, "
                              "timm or our layout.")
    arch = ({"architectures": ["ConvNextV2ForImageClassification"], "model_type": "convnextv2"} if v2 else
            {"architectures": ["ConvNextForImageClassification"], "model_type": "convnext",
             "layer_scale_init_value": 1e-6 if "stages.0.0.gamma" in official else 0.0})
    return {
        **arch, "num_channels": stem.shape[1], "patch_size": stem.shape[-1], "num_stages": n_stages,
        "hidden_sizes": [official[f"stages.{i}.0.dwconv.weight"].shape[0] for i in range(n_stages)],
        "depths": depths, "hidden_act": "gelu", "initializer_range": 0.02, "layer_norm_eps": 1e-6,
        "drop_path_rate": 0.0, "image_size": data_config.input_size[0] if data_config else 224,
        "id2label": {str(i): n for i, n in enumerate(names)}, "label2id": {n: i for i, n in enumerate(names)},
    }
