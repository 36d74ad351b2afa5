"""The ConvNeXt block (paper Figure 4) and the channels-first LayerNorm of the stem and downsampling layers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dimension of an NCHW tensor (the paper's "LN" in stem and downsampling);
    the parameters are the official layout's `weight` and `bias`."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__(num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Block(nn.Module):
    """ConvNeXt block: dwconv 7x7 -> LN -> pwconv1 (C->4C) -> GELU -> pwconv2 (4C->C) -> gamma -> drop path -> + x.

    As in the official code the pointwise layers are Linear layers on the NHWC permutation and `gamma` is the
    per-channel layer scale (None when `layer_scale_init_value` is 0 or None).
    """

    def __init__(self, dim: int, drop_path: float = 0.0, layer_scale_init_value: float | None = 1e-6,
                 kernel_size: int = 7, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, mlp_ratio * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(mlp_ratio * dim, dim)
        use_gamma = layer_scale_init_value is not None and layer_scale_init_value > 0
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale_init_value))) if use_gamma else None
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.dwconv(x)
        x = x.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
        x = self.norm(x)
        x = self.pwconv1(x)
        x = self.act(x)
        x = self.pwconv2(x)
        if self.gamma is not None:
            x = self.gamma * x
        x = x.permute(0, 3, 1, 2)
        return shortcut + self.drop_path(x)
