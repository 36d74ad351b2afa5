"""ConvNeXt as a detection/segmentation backbone: `ConvNeXtFeatures` with torchvision's FPN on top."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, FeaturePyramidNetwork, LastLevelMaxPool

from ..api import create_model
from ..models import ConvNeXtFeatures


def create_backbone(
    name: str,
    *,
    pretrained: bool | str = False,
    drop_path_rate: float = 0.0,
    out_indices: tuple[int, ...] = (0, 1, 2, 3),
    **kwargs: Any,
) -> ConvNeXtFeatures:
    """The four-stage ConvNeXt backbone (strides 4/8/16/32, each output through its own LayerNorm).

    `pretrained` is passed to `create_model`, so a classification checkpoint in any layout the project
    reads (official, timm, torchvision, HF, ours) loads into the backbone; the classifier is dropped.
    """
    model = create_model(name, pretrained=pretrained, features_only=True, out_indices=out_indices,
                         drop_path_rate=drop_path_rate, **kwargs)
    if not isinstance(model, ConvNeXtFeatures):
        raise TypeError(f"{name} did not build a ConvNeXtFeatures backbone (got {type(model).__name__})")
    return model


def backbone_for(name: str, table: dict[str, str], kind: str, pretrained: bool | str, drop_path_rate: float,
                 backbone_kwargs: dict[str, Any]) -> ConvNeXtFeatures:
    """The backbone of the downstream model `name` (`table` maps model names to ConvNeXt names), with a
    suggestion of close names when `name` is unknown."""
    if name not in table:
        import difflib

        close = difflib.get_close_matches(name, table, n=3)
        raise ValueError(f"Unknown {kind} {name!r}.{' Did you mean ' + ', '.join(close) + '?' if close else ''} "
                         f"Available: {', '.join(table)}")
    return create_backbone(table[name], pretrained=pretrained, drop_path_rate=drop_path_rate, **backbone_kwargs)


class ConvNeXtFPN(nn.Module):
    """ConvNeXt stage outputs -> torchvision `FeaturePyramidNetwork`, the interface torchvision's detectors
    expect: `forward` returns an ordered dict of maps with `out_channels` channels, and `out_channels` is set.

    With the default `LastLevelMaxPool` the pyramid is P2-P6 (P6 a stride-2 max pool of P5), as mmdet's FPN
    with `num_outs=5, add_extra_convs=False` in the paper's Mask R-CNN setup.
    """

    def __init__(self, body: ConvNeXtFeatures, out_channels: int = 256, extra_blocks: ExtraFPNBlock | None = None):
        super().__init__()
        self.body = body
        in_channels = [body.dims[i] for i in body.out_indices]
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels,
                                         extra_blocks=LastLevelMaxPool() if extra_blocks is None else extra_blocks)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))
