"""Building the model a checkpoint holds: resolve the weights (a release tag, a URL or a path), build the
network they fit, load them and attach the data config; a different class count re-initialises only the head."""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data_config import DataSpec
from ..models import LayerNorm2d, build_model
from .errors import CheckpointError
from .matching import load_checked
from .pretrained import Release, download, find_release, imagenet_class_names, release_data_config, release_url
from .source import Source

# config.json entries that define the architecture: a file in our format rebuilds exactly what it was.
ARCH_KEYS = ("depths", "dims", "depth", "dim", "in_chans", "patch_size", "kernel_size", "layer_scale_init_value",
             "use_grn")
_BACKBONE_NORM = re.compile(r"norm(\d+)\.")


def resolve_weights(name: str, pretrained: bool | str) -> tuple[Path, Release | None]:
    """The local file `pretrained` means for model `name` (downloading a release or URL first) and the
    release it is, if any."""
    if pretrained is True:
        release = find_release(name, True)
        return download(release_url(release), size=release.size, sha256=release.sha256), release
    text = str(pretrained)
    if text.startswith(("http://", "https://")):
        return download(text), None
    if Path(text).exists():
        return Path(text), None
    if "/" not in text and "\\" not in text and "." not in text:
        release = find_release(name, text)
        return download(release_url(release), size=release.size, sha256=release.sha256), release
    raise CheckpointError(f"Checkpoint not found: {text}")


def build_from_source(
    source: Source,
    name: str | None = None,
    *,
    release: Release | None = None,
    num_classes: int | None = None,
    features_only: bool | None = None,
    out_indices: Sequence[int] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """The reference model a checkpoint holds, with its weights and `model.data_config`.

    `name=None` rebuilds what the file says (`convnext.load`): its whole model config, with `kwargs` as
    overrides. A `name` builds that model (`create_model(name, pretrained=...)`): from a file that names its
    model only the architecture is taken, and it must be the same model.

    Classification weights load into a `features_only` backbone too (their pooled norm and head are
    dropped; the backbone's norm0..norm3 keep their initialisation, with a warning), as do the official
    detection/segmentation backbone files. `num_classes` other than the file's re-initialises the head.
    An encoder without final norm and head (ConvNeXt V2's FCMAE pretraining weights) loads into a classifier
    whose norm and head keep their initialisation (num_classes defaults to 0 then: pooled features), with a
    note when it has a head to fine-tune.
    """
    config = {k: v for k, v in source.model_config.items() if k != "model"}
    if name is None:
        name = source.model_config["model"]
        merged = {**config, **kwargs}
        num_classes = merged.get("num_classes") if num_classes is None else num_classes
        features_only = merged.get("features_only") if features_only is None else features_only
        out_indices = merged.get("out_indices") if out_indices is None else out_indices
        kwargs = {k: v for k, v in merged.items() if k not in ("num_classes", "features_only", "out_indices")}
    elif source.recorded:
        if source.model_config["model"] != name:
            raise CheckpointError(f"{source.path} holds a {source.model_config['model']}, not a {name}: use "
                                  f"convnext.load(path) or create_model({source.model_config['model']!r}, "
                                  "pretrained=path).")
        kwargs = {**{k: v for k, v in config.items() if k in ARCH_KEYS}, **kwargs}
    features_only = bool(features_only)
    out_indices = tuple(out_indices) if out_indices is not None else (0, 1, 2, 3)
    state_dict = source.state_dict
    label = f"{source.path}" + (f" ({release.file})" if release else "")

    if features_only:
        state_dict, allow = _for_backbone(state_dict, out_indices)
        with torch.device("meta"):
            model = build_model(name, features_only=True, out_indices=out_indices, **kwargs)
    else:
        file_classes = state_dict["head.weight"].shape[0] if "head.weight" in state_dict else None
        encoder_only = file_classes is None and "norm.weight" not in state_dict and "stem.weight" not in state_dict \
            and not any(_BACKBONE_NORM.match(k) for k in state_dict)
        default = file_classes or (release.num_classes if release else 0 if encoder_only else 1000)
        classes = default if num_classes is None else num_classes
        allow = ()
        if encoder_only:
            allow = ("norm.", "head.")
            fresh = f"its final norm and {classes}-class head keep" if classes else "its final norm keeps"
            warnings.warn(f"{source} holds an encoder without final norm and head (FCMAE pretraining weights): "
                          f"{fresh} the initialisation; fine-tune before use.", stacklevel=3)
        elif file_classes is not None and classes != file_classes:
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith("head.")}
            allow = ("head.",)
            if classes:
                warnings.warn(f"{label} has a {file_classes}-class head; the model has num_classes={classes}, so "
                              "its head was re-initialised (all other weights loaded).", stacklevel=3)
        with torch.device("meta"):
            model = build_model(name, num_classes=classes, **kwargs)
    # Built on the meta device and given the file's tensors: no time spent on a random init they replace.
    load_checked(model, state_dict, source=label, allow_missing=allow, assign=True)
    _init_missing(model, allow, kwargs.get("head_init_scale", 1.0))
    spec = source.data_config or (release_data_config(release) if release else None)
    model.data_config = data_config_for(model, spec)
    return model


def data_config_for(model: nn.Module, spec: DataSpec | None = None) -> DataSpec:
    """`spec` fitted to `model` (class names dropped where the head has another size), or, where no data
    config is known, the default: RGB models get ImageNet's input format (224, bicubic, crop_pct 0.875) and,
    with 1000 or 21841 outputs, ImageNet's class names; other channel counts get ImageNet's mean/std averaged
    over the channels."""
    in_chans = model.config["in_chans"]
    num_classes = getattr(model, "num_classes", 0) if not model.config.get("features_only") else 0
    if spec is None:
        names = tuple(imagenet_class_names(num_classes)) if num_classes in (1000, 21841) else None
        spec = DataSpec.for_channels(in_chans, class_names=names)
    elif spec.in_chans != in_chans:
        raise CheckpointError(f"The data config says {spec.in_chans} input channel(s) but the model has {in_chans}: "
                              "the checkpoint's data config does not belong to its weights.")
    return spec.for_classes(num_classes)


def _init_missing(model: nn.Module, prefixes: tuple[str, ...], head_init_scale: float) -> None:
    """Give the modules the file did not cover (a re-initialised head, backbone norms) their usual init."""
    for prefix in prefixes:
        name = prefix.rstrip(".")
        if name == "head":
            model.reset_classifier(model.num_classes, head_init_scale)
        elif name == "norm":
            model.norm = nn.LayerNorm(model.num_features, eps=1e-6)
        else:
            setattr(model, name, LayerNorm2d(model.dims[int(name[4:])]))
    left = [n for n, t in model.state_dict().items() if t.is_meta]
    if left:  # a bug, not a user error: every tensor must come from the file or an init
        raise RuntimeError(f"Tensors left uninitialised: {left[:5]}")


def _for_backbone(state_dict: dict, out_indices: tuple[int, ...]) -> tuple[dict, tuple[str, ...]]:
    """A state dict for ConvNeXtFeatures: a classifier's norm/head dropped; norm_i outside out_indices dropped."""
    kept = {}
    for key, value in state_dict.items():
        m = _BACKBONE_NORM.match(key)
        if key.startswith(("norm.", "head.")) or (m and int(m.group(1)) not in out_indices):
            continue
        kept[key] = value
    norms = tuple(f"norm{i}." for i in out_indices)
    if any(k.startswith(norms) for k in kept):
        return kept, ()
    warnings.warn("Classification weights loaded into a backbone: their pooled norm and head were dropped and the "
                  f"output norms {', '.join(n.rstrip('.') for n in norms)} keep their initialisation "
                  "(train them with the detector).", stacklevel=4)
    return kept, norms
