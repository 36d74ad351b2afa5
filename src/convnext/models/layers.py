"""The ConvNeXt block (paper Figure 4), the ConvNeXt V2 block with Global Response Normalization (V2 paper
Figure 5, Eq. 1-3), and the channels-first LayerNorm of the stem and downsampling layers."""

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


class GRN(nn.Module):
    """Global Response Normalization (ConvNeXt V2, Eq. 1-3) on NHWC activations, the official `GRN`:
    per sample and channel the L2 norm over H x W, divided by its mean over the channels (+ eps), then
    `gamma * (x * n) + beta + x`. `gamma` and `beta` start at zero, so GRN starts as the identity.

    The norms are computed in at least fp32 whatever the input's dtype: a sum of squares over all H x W
    positions of a 4C-wide activation overflows fp16 (the known V2 fp16 pitfall: NaN or all-zero outputs).
    Their ratio to the mean is at most the channel count, so it is cast back to the input's dtype.

    `visible` (N, H, W, 1, bool) restricts the statistics to the visible positions of a masked input (FCMAE's
    dense masked encoder): masked positions are left out of the norms, as the sparse encoder, which has none.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        return self.gamma * (x * self.response(x, visible).to(x.dtype)) + self.beta + x

    def response(self, x: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        """The normalised global response n (N, 1, 1, C), in at least fp32."""
        stats = x if visible is None else torch.where(visible, x, 0.0)
        gx = torch.linalg.vector_norm(stats, ord=2, dim=(1, 2), keepdim=True,
                                      dtype=torch.promote_types(x.dtype, torch.float32))
        return gx / (gx.mean(dim=-1, keepdim=True) + self.eps)


class BlockV2(nn.Module):
    """ConvNeXt V2 block: dwconv 7x7 -> LN -> pwconv1 (C->4C) -> GELU -> GRN -> pwconv2 (4C->C) -> drop path -> + x.
    The official `convnextv2.Block`: GRN in the MLP and no layer scale.

    `visible` (N, 1, H, W, bool) runs the block as FCMAE's dense masked encoder does (the official JAX code):
    the input is zeroed at masked positions before the depthwise conv and its output after it, and GRN's
    statistics see only visible positions, so nothing flows from masked to visible positions.
    """

    def __init__(self, dim: int, drop_path: float = 0.0, kernel_size: int = 7, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, mlp_ratio * dim)
        self.act = nn.GELU()
        self.grn = GRN(mlp_ratio * dim)
        self.pwconv2 = nn.Linear(mlp_ratio * dim, dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        shortcut = x
        if visible is not None:
            x = torch.where(visible, x, 0.0)
        x = self.dwconv(x)
        if visible is not None:
            x = torch.where(visible, x, 0.0)
        x = x.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
        x = self.norm(x)
        x = self.pwconv1(x)
        x = self.act(x)
        x = self.grn(x, None if visible is None else visible.permute(0, 2, 3, 1))
        x = self.pwconv2(x)
        x = x.permute(0, 3, 1, 2)
        return shortcut + self.drop_path(x)
