"""The ConvNeXt block and the channels-first LayerNorm it is built from (paper Figure 4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

COMPUTE_PATHS = ("linear", "conv")


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dimension of an NCHW tensor (the paper's "LN" in stem and downsampling).

    Permuting to NHWC and back is free when the tensor is stored channels_last, which is how the fast
    path keeps it; the parameters are the official layout's `weight` and `bias`.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__(num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Block(nn.Module):
    """ConvNeXt block: dwconv 7x7 -> LN -> pwconv1 (C->4C) -> GELU -> pwconv2 (4C->C) -> gamma -> drop path -> + x.

    The parameters are stored exactly as in the official code (Linear pointwise layers, a per-channel
    `gamma`), whatever `compute_path` runs them:

    - ``"linear"``: the official reference: permute to NHWC, LayerNorm and two Linear layers, permute back.
    - ``"conv"``: the same weights used as 1x1 convolutions on a channels_last tensor, which lets oneDNN
      run the pointwise layers without the layout changes around them.
    """

    def __init__(
        self,
        dim: int,
        drop_path: float = 0.0,
        layer_scale_init_value: float | None = 1e-6,
        kernel_size: int = 7,
        mlp_ratio: int = 4,
    ) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, mlp_ratio * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(mlp_ratio * dim, dim)
        if layer_scale_init_value is not None and layer_scale_init_value > 0:
            self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale_init_value)))
        else:
            self.gamma = None
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.compute_path = "linear"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compute_path == "conv":
            return x + self.drop_path(self._residual_conv(x))
        return x + self.drop_path(self._residual_linear(x))

    def _residual_linear(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dwconv(x)
        x = x.permute(0, 2, 3, 1)
        x = self.pwconv2(self.act(self.pwconv1(self.norm(x))))
        if self.gamma is not None:
            x = self.gamma * x
        return x.permute(0, 3, 1, 2)

    def _residual_conv(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dwconv(x)
        # LN over channels: on channels_last storage the NHWC view is contiguous, so no copy is made.
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.norm.normalized_shape, self.norm.weight, self.norm.bias,
                         self.norm.eps).permute(0, 3, 1, 2)
        x = F.conv2d(x, self.pwconv1.weight[:, :, None, None], self.pwconv1.bias)
        x = self.act(x)
        w2, b2 = self.pwconv2.weight, self.pwconv2.bias
        if self.gamma is not None:
            # gamma * (W x + b) == (gamma W) x + gamma b: fold the layer scale into the second pointwise conv.
            w2, b2 = self.gamma[:, None] * w2, self.gamma * b2
        return F.conv2d(x, w2[:, :, None, None], b2)
