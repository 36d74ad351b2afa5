"""`create_model(name, pretrained=...)`: resolve the weights (a release tag, a URL or a path), build the model
they fit and load them; a different class count re-initialises only the head."""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models import LayerNorm2d, build_model
from .errors import CheckpointError
from .io import load_state_dict
from .matching import load_checked
from .ours import read_config
from .pretrained import Release, download, find_release, release_url

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


def create_pretrained(
    name: str,
    pretrained: bool | str,
    *,
    num_classes: int | None = None,
    features_only: bool = False,
    out_indices: Sequence[int] = (0, 1, 2, 3),
    **kwargs: Any,
) -> nn.Module:
    """The reference model `name` (`build_model` arguments in `kwargs`) with the weights `pretrained`: True, a
    release tag, a URL or a path.

    Classification weights load into a `features_only` backbone too (their pooled norm and head are
    dropped; the backbone's norm0..norm3 keep their initialisation, with a warning), as do the official
    detection/segmentation backbone files. `num_classes` other than the file's re-initialises the head.
    An encoder without final norm and head (ConvNeXt V2's FCMAE pretraining weights) loads into a classifier
    whose norm and head keep their initialisation (num_classes defaults to 0 then: pooled features), with a
    note when it has a head to fine-tune.
    """
    path, release = resolve_weights(name, pretrained)
    state_dict = load_state_dict(path)
    file_cfg = read_config(path)
    if file_cfg is not None:
        if file_cfg["model"] != name:
            raise CheckpointError(f"{path} holds a {file_cfg['model']}, not a {name}: use convnext.load(path) or "
                                  f"create_model({file_cfg['model']!r}, pretrained=path).")
        kwargs.update({k: v for k, v in file_cfg.items() if k in ARCH_KEYS})
    source = f"{path}" + (f" ({release.file})" if release else "")

    if features_only:
        state_dict, allow = _for_backbone(state_dict, tuple(out_indices))
        with torch.device("meta"):
            model = build_model(name, features_only=True, out_indices=tuple(out_indices), **kwargs)
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
                warnings.warn(f"{source} has a {file_classes}-class head; the model has num_classes={classes}, so "
                              "its head was re-initialised (all other weights loaded).", stacklevel=3)
        with torch.device("meta"):
            model = build_model(name, num_classes=classes, **kwargs)
    # Built on the meta device and given the file's tensors: no time spent on a random init they replace.
    load_checked(model, state_dict, source=source, allow_missing=allow, assign=True)
    _init_missing(model, allow, kwargs.get("head_init_scale", 1.0))
    return model


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
