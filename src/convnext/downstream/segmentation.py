"""UperNet with a ConvNeXt backbone (paper Table 4), as mmseg's `UPerHead` + auxiliary `FCNHead`.

The heads follow mmseg 0.x exactly in structure and width: a pyramid pooling module (scales 1, 2, 3, 6) on
the last stage, FPN laterals and 3x3 convs on the others, a 3x3 fusion conv over the four upsampled levels,
all 512 channels with BatchNorm + ReLU, dropout 0.1, a 1x1 classifier; an auxiliary FCN head (one 3x3
conv, 256 channels) on stage 3 (index 2) whose loss is weighted 0.4 during training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import Conv2dNormActivation

from ..flops import count_macs, count_params
from ..models import MODELS, ConvNeXt, ConvNeXtFeatures
from .backbone import backbone_for

# The paper's Table 4 (reference/paper.md section 7): UperNet 160k, GMACs at 2048x512, params in millions,
# mIoU single-scale / multi-scale.
PAPER_SEGMENTATION: dict[str, dict[str, float]] = {
    "upernet_convnext_tiny": {"gmacs": 939, "params": 60, "miou_ss": 46.0, "miou_ms": 46.7},
    "upernet_convnext_small": {"miou_ms": 49.6},
    "upernet_convnext_base": {"miou_ms": 49.9},
}

SEGMENTERS: dict[str, str] = {f"upernet_{n}": n for n, s in MODELS.items() if s.cls is ConvNeXt}


def _cbr(cin: int, cout: int, k: int) -> Conv2dNormActivation:
    # mmseg's ConvModule: conv without bias -> BN -> ReLU
    return Conv2dNormActivation(cin, cout, k, norm_layer=nn.BatchNorm2d, activation_layer=nn.ReLU)


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling: adaptive average pools at several scales, 1x1 conv each, upsampled back."""

    def __init__(self, in_channels: int, channels: int, pool_scales: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), _cbr(in_channels, channels, 1)) for s in pool_scales
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [_resize(stage(x), x.shape[2:]) for stage in self.stages]


class UperHead(nn.Module):
    """UperNet's decode head: PPM on the last level, top-down FPN on the others, fused at stride 4."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 512,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1) -> None:
        super().__init__()
        self.psp = PyramidPooling(in_channels[-1], channels, pool_scales)
        self.bottleneck = _cbr(in_channels[-1] + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(_cbr(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(_cbr(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = _cbr(len(in_channels) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        last = feats[-1]
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats[:-1], strict=True)]
        laterals.append(self.bottleneck(torch.cat([last, *self.psp(last)], 1)))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[2:])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals[:-1], strict=True)] + [laterals[-1]]
        size = outs[0].shape[2:]
        fused = self.fpn_bottleneck(torch.cat([outs[0]] + [_resize(o, size) for o in outs[1:]], 1))
        return self.conv_seg(self.dropout(fused))


class FCNHead(nn.Module):
    """The auxiliary head: one 3x3 conv + BN + ReLU, dropout, 1x1 classifier (mmseg FCNHead, num_convs=1)."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.conv = _cbr(in_channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(self.conv(x)))


class UperNet(nn.Module):
    """ConvNeXt backbone + `UperHead` (+ auxiliary `FCNHead` on the backbone output `aux_index`).

    `forward` returns `{"out": logits}` at the input's resolution, plus `"aux"` in training mode when there
    is an auxiliary head (torchvision's segmentation-model convention); the auxiliary head costs nothing at
    inference.
    """

    def __init__(self, backbone: ConvNeXtFeatures, num_classes: int, channels: int = 512,
                 aux_channels: int | None = 256, aux_index: int = 2) -> None:
        super().__init__()
        self.backbone = backbone
        in_channels = [backbone.dims[i] for i in backbone.out_indices]
        self.decode_head = UperHead(in_channels, num_classes, channels)
        self.aux_index = aux_index
        self.auxiliary_head = FCNHead(in_channels[aux_index], num_classes, aux_channels) if aux_channels else None
        self.num_classes = num_classes

    @property
    def num_layer_groups(self) -> int:
        """The official configs' `num_layers` (6 for T, 12 for S/B/L/XL), here the backbone's layer groups."""
        return self.backbone.num_layer_groups

    def layer_group(self, param_name: str) -> int:
        """Stage-wise lr decay group, as the official mmseg `LearningRateDecayOptimizerConstructor` with
        `decay_type="stage_wise"`: stem and downsampling layers 0, stage i's blocks i + 1, everything else
        (output norms, heads) num_layer_groups + 1. With the scale decay ** (num_layer_groups + 1 - group)
        that gives T: downsampling 0.9^7, stages 0.9^6..0.9^3, heads 1 (the official jump from 0.9^3 to 1
        is kept: it is what the paper's numbers were trained with)."""
        parts = param_name.split(".")
        if parts[0] == "backbone" and parts[1] == "downsample_layers":
            return 0
        if parts[0] == "backbone" and parts[1] == "stages":
            return int(parts[2]) + 1
        return self.num_layer_groups + 1

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)
        out = {"out": _resize(self.decode_head(feats), x.shape[2:])}
        if self.training and self.auxiliary_head is not None:
            out["aux"] = _resize(self.auxiliary_head(feats[self.aux_index]), x.shape[2:])
        return out


def create_segmenter(
    name: str,
    num_classes: int = 150,
    *,
    pretrained_backbone: bool | str = False,
    drop_path_rate: float = 0.0,
    channels: int = 512,
    aux_channels: int | None = 256,
    backbone_kwargs: dict[str, Any] | None = None,
) -> UperNet:
    """Build UperNet on a ConvNeXt backbone: "upernet_convnext_tiny" etc. (`list_segmenters()`).

    Args:
        num_classes: output classes (150 for ADE20K).
        pretrained_backbone: passed to `create_model(..., pretrained=)` (a classification checkpoint in any
            layout the project reads, or a release tag).
        drop_path_rate: the backbone's stochastic depth (the official T config: 0.4).
        channels: the decode head's width (512 in the paper's setup).
        aux_channels: the auxiliary FCN head's width; None drops the auxiliary head.
        backbone_kwargs: extra `create_model` arguments (e.g. `depths=`, `dims=` for tiny test models).

    The result's `config` rebuilds it: `create_segmenter(**model.config)`.
    """
    backbone_kwargs = dict(backbone_kwargs or {})
    body = backbone_for(name, SEGMENTERS, "segmenter", pretrained_backbone, drop_path_rate, backbone_kwargs)
    model = UperNet(body, num_classes, channels, aux_channels)
    model.config = {"name": name, "num_classes": num_classes, "drop_path_rate": drop_path_rate,
                    "channels": channels, "aux_channels": aux_channels, "backbone_kwargs": backbone_kwargs}
    return model


def list_segmenters() -> list[str]:
    """Names `create_segmenter` accepts."""
    return list(SEGMENTERS)


def segmentation_loss(outputs: dict[str, torch.Tensor], target: torch.Tensor, aux_weight: float = 0.4,
                      ignore_index: int = 255) -> dict[str, torch.Tensor]:
    """Cross-entropy of the decode head plus `aux_weight` x that of the auxiliary head (mmseg's 1.0 / 0.4)."""
    losses = {"loss_seg": F.cross_entropy(outputs["out"], target, ignore_index=ignore_index)}
    if "aux" in outputs:
        losses["loss_aux"] = aux_weight * F.cross_entropy(outputs["aux"], target, ignore_index=ignore_index)
    return losses


def segmenter_flops(name: str = "upernet_convnext_tiny", size: tuple[int, int] = (512, 2048),
                    num_classes: int = 150) -> dict[str, float | str | None]:
    """GMACs of the inference forward (backbone + decode head, as mmseg's `get_flops.py` counted) and params
    (M, auxiliary head included, as mmseg counted them) of a segmenter built on the meta device, beside
    the paper's figures."""
    with torch.device("meta"):
        model = create_segmenter(name, num_classes)
    paper = PAPER_SEGMENTATION.get(name, {})
    return {"gmacs": count_macs(model, size) / 1e9, "params": count_params(model) / 1e6,
            # the paper's figures are for its own input size only
            "paper_gmacs": paper.get("gmacs") if tuple(size) == (512, 2048) else None,
            "paper_params": paper.get("params"), "size": f"{size[0]}x{size[1]}"}
