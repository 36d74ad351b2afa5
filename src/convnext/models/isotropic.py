"""Isotropic ConvNeXt (paper Section 3.6 / Table 9): a ViT-style 16x16 patchify stem, no downsampling."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint_sequential

from .convnext import ConvNeXtBase, _init_weights
from .layers import Block


class ConvNeXtIsotropic(ConvNeXtBase):
    """`depth` ConvNeXt blocks of width `dim` at stride 16, with no norm after the stem and a LayerNorm
    after global average pooling. The state dict matches the official `convnext_isotropic.py`
    (`stem.*`, `blocks.j.*`, `norm.*`, `head.*`)."""

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        depth: int = 18,
        dim: int = 384,
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float | None = 0.0,
        head_init_scale: float = 1.0,
        patch_size: int = 16,
    ) -> None:
        super().__init__()
        self.num_features = dim
        self.grad_checkpointing = False
        self.stem = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.Sequential(*[Block(dim, rates[j], layer_scale_init_value) for j in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.apply(_init_weights)
        self._init_head(num_classes, head_init_scale)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The block output feature map (N, dim, H/16, W/16)."""
        x = self.stem(x)
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint_sequential(self.blocks, len(self.blocks), x, use_reentrant=False)
        return self.blocks(x)

    @property
    def num_layer_groups(self) -> int:
        """Layer groups for layer-wise lr decay, the head's group excluded: one per block."""
        return len(self.blocks)

    def layer_group(self, param_name: str) -> int:
        """Layer-wise lr decay group: stem 0, block j -> j + 1, final norm and head num_layer_groups + 1."""
        parts = param_name.split(".")
        if parts[0] == "stem":
            return 0
        if parts[0] == "blocks":
            return int(parts[1]) + 1
        return self.num_layer_groups + 1
