"""Model names, their architectures and the paper's figures for them; `create_model` and `list_models`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .convnext import ConvNeXt, ConvNeXtFeatures
from .isotropic import ConvNeXtIsotropic


@dataclass(frozen=True)
class ModelSpec:
    """One named model: its class, constructor arguments, and what the paper reports for it.

    `paper` holds the paper's printed figures (params in millions, GMACs at 224/384 (and 512), top-1), used
    by `convnext models` to print them beside our counts; `None` where the paper gives none. `count_rule`
    says which operations those GMACs count, so that ours are counted the same way.
    """

    cls: type[nn.Module]
    kwargs: dict[str, Any]
    paper: dict[str, float | None] = field(default_factory=dict)
    count_rule: str = "macs"  # how the paper's GMACs count (`convnext.flops.count_macs`' `rule`)


def _h(depths, dims, **paper) -> ModelSpec:
    return ModelSpec(ConvNeXt, {"depths": depths, "dims": dims}, paper)


def _v2(depths, dims, **paper) -> ModelSpec:
    # The ConvNeXt-V2 README's FLOPs also count the block LayerNorms, as fvcore counts them (see flops.py)
    return ModelSpec(ConvNeXt, {"depths": depths, "dims": dims, "use_grn": True}, paper, count_rule="fvcore")


def _iso(depth, dim, layer_scale, **paper) -> ModelSpec:
    return ModelSpec(ConvNeXtIsotropic, {"depth": depth, "dim": dim, "layer_scale_init_value": layer_scale}, paper)


# Paper Table 9 / the official README (reference/paper.md section 1). ConvNeXt-V2 sizes with V1 blocks.
MODELS: dict[str, ModelSpec] = {
    "convnext_atto": _h((2, 2, 6, 2), (40, 80, 160, 320), params=3.7, gmacs_224=0.55),
    "convnext_femto": _h((2, 2, 6, 2), (48, 96, 192, 384), params=5.2, gmacs_224=0.78),
    "convnext_pico": _h((2, 2, 6, 2), (64, 128, 256, 512), params=9.1, gmacs_224=1.37),
    "convnext_nano": _h((2, 2, 8, 2), (80, 160, 320, 640), params=15.6, gmacs_224=2.45),
    "convnext_tiny": _h((3, 3, 9, 3), (96, 192, 384, 768), params=28.59, gmacs_224=4.46, gmacs_384=13.09, top1=82.1),
    "convnext_small": _h((3, 3, 27, 3), (96, 192, 384, 768), params=50.22, gmacs_224=8.68, gmacs_384=25.52,
                         top1=83.1),
    "convnext_base": _h((3, 3, 27, 3), (128, 256, 512, 1024), params=88.59, gmacs_224=15.35, gmacs_384=45.12,
                        top1=83.8),
    "convnext_large": _h((3, 3, 27, 3), (192, 384, 768, 1536), params=197.77, gmacs_224=34.36,
                         gmacs_384=100.98, top1=84.3),
    "convnext_xlarge": _h((3, 3, 27, 3), (256, 512, 1024, 2048), params=350.20, gmacs_224=60.92,
                          gmacs_384=179.03, top1=87.0),
    "convnext_iso_small": _iso(18, 384, 0.0, params=22.31, gmacs_224=4.29, top1=79.7),
    "convnext_iso_base": _iso(18, 768, 0.0, params=87.08, gmacs_224=16.90, top1=82.0),
    "convnext_iso_large": _iso(36, 1024, 1e-6, params=305.94, gmacs_224=59.70, top1=82.6),
    # ConvNeXt V2 (GRN blocks, no layer scale): the official README as printed (reference/convnext-v2.md section 2).
    # Params and FLOPs at 224 from its IN-1K tables, at 384/512 from its IN-22K tables; top-1: FCMAE -> IN-1K, 224.
    "convnextv2_atto": _v2((2, 2, 6, 2), (40, 80, 160, 320), params=3.7, gmacs_224=0.55, top1=76.7),
    "convnextv2_femto": _v2((2, 2, 6, 2), (48, 96, 192, 384), params=5.2, gmacs_224=0.78, top1=78.5),
    "convnextv2_pico": _v2((2, 2, 6, 2), (64, 128, 256, 512), params=9.1, gmacs_224=1.37, top1=80.3),
    "convnextv2_nano": _v2((2, 2, 8, 2), (80, 160, 320, 640), params=15.6, gmacs_224=2.45, gmacs_384=7.21,
                           top1=81.9),
    "convnextv2_tiny": _v2((3, 3, 9, 3), (96, 192, 384, 768), params=28.6, gmacs_224=4.47, gmacs_384=13.1,
                           top1=83.0),
    "convnextv2_base": _v2((3, 3, 27, 3), (128, 256, 512, 1024), params=89, gmacs_224=15.4, gmacs_384=45.2,
                           top1=84.9),
    "convnextv2_large": _v2((3, 3, 27, 3), (192, 384, 768, 1536), params=198, gmacs_224=34.4, gmacs_384=101.1,
                            top1=85.8),
    "convnextv2_huge": _v2((3, 3, 27, 3), (352, 704, 1408, 2816), params=660, gmacs_224=115, gmacs_384=337.9,
                           gmacs_512=600.8, top1=86.3),
    # Ours, not the paper's: 28x28 inputs (Fashion-MNIST). A 2x2 stem and three stages at 14, 7 and 3 pixels.
    # 3x3 depthwise kernels: on 14x14 to 3x3 maps a 7x7 kernel mostly sees padding; 3x3 measured 2.5 points
    # better after 6 epochs and 25% faster (benchmarks/fashion_mnist.md).
    "convnext_fmnist": ModelSpec(ConvNeXt, {"depths": (2, 2, 2), "dims": (32, 64, 128), "patch_size": 2,
                                            "kernel_size": 3}),
    # The same with V2 blocks, for FCMAE pretraining on Fashion-MNIST (recipes/v2/fcmae_fashion_mnist.yaml).
    "convnextv2_fmnist": ModelSpec(ConvNeXt, {"depths": (2, 2, 2), "dims": (32, 64, 128), "patch_size": 2,
                                              "kernel_size": 3, "use_grn": True}),
}
# XL's top-1 is the 22K->1K figure: the paper trains XL on ImageNet-22K only.

IN22K_CLASSES = 21841


def list_models(pattern: str = "*") -> list[str]:
    """Names of the models `create_model` builds, optionally filtered by a shell-style pattern."""
    from fnmatch import fnmatch

    return [n for n in MODELS if fnmatch(n, pattern)]


def unknown_model(name: str) -> ValueError:
    """The error for a model name that is not registered, with the nearest names."""
    import difflib

    close = difflib.get_close_matches(name, MODELS, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ValueError(f"Unknown model {name!r}.{hint} See `convnext models` for the list.")


def build_model(
    name: str,
    *,
    num_classes: int = 1000,
    in_chans: int = 3,
    drop_path_rate: float = 0.0,
    layer_scale_init_value: float | None = None,
    head_init_scale: float = 1.0,
    features_only: bool = False,
    out_indices: tuple[int, ...] = (0, 1, 2, 3),
    **kwargs: Any,
) -> nn.Module:
    """The reference network `name` with random weights (`convnext.create_model` adds weights and speed).

    Args:
        name: one of `list_models()`.
        num_classes: classifier outputs; `IN22K_CLASSES` = 21841 for the 22K head; 0 for pooled features.
        in_chans: input channels.
        drop_path_rate: stochastic depth of the last block.
        layer_scale_init_value: initial `gamma` (default 1e-6; the isotropic S/B default to none; V2 models
            have no layer scale and refuse a value > 0).
        head_init_scale: scale of the initial classifier weights.
        features_only: the detection/segmentation backbone (hierarchical models only), whose forward gives
            the `out_indices` stage outputs, each through its own LayerNorm.
        **kwargs: further constructor arguments (e.g. `patch_size`, `kernel_size`, `depths`, `dims`).

    The model's `config` attribute holds `{"model": name, **arguments}`: what rebuilds it (config.json).
    """
    if name not in MODELS:
        raise unknown_model(name)
    spec = MODELS[name]
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}  # JSON gives lists
    args = {**spec.kwargs, **kwargs, "in_chans": in_chans, "drop_path_rate": drop_path_rate,
            "head_init_scale": head_init_scale}
    if layer_scale_init_value is not None:
        if args.get("use_grn") and layer_scale_init_value:
            raise ValueError(f"{name} is a ConvNeXt V2 model: its blocks have GRN and no layer scale, so "
                             f"layer_scale_init_value={layer_scale_init_value} cannot apply; leave it unset (None).")
        args["layer_scale_init_value"] = layer_scale_init_value
    if features_only:
        if spec.cls is not ConvNeXt:
            raise ValueError(f"features_only needs a hierarchical model; {name} is isotropic")
        model: nn.Module = ConvNeXtFeatures(out_indices=tuple(out_indices), **args)
        model.config = {"model": name, **args, "features_only": True, "out_indices": tuple(out_indices)}
    else:
        model = spec.cls(num_classes=num_classes, **args)
        model.config = {"model": name, **args, "num_classes": num_classes}
    return model
