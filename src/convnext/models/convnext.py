"""ConvNeXt (Liu et al., "A ConvNet for the 2020s", CVPR 2022) and ConvNeXt V2 (Woo et al., "ConvNeXt V2: Co-designing
and Scaling ConvNets with Masked Autoencoders", CVPR 2023), in the official state-dict layouts."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .layers import Block, BlockV2, LayerNorm2d


class ConvNeXtBase(nn.Module):
    """What the hierarchical and isotropic ConvNeXt share: the head (pool -> LN -> Linear) and gradient
    checkpointing. Subclasses define `forward_features`."""

    num_features: int

    def _init_head(self, num_classes: int, head_init_scale: float) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.head, nn.Linear):
            _init_weights(self.head)
            with torch.no_grad():
                self.head.weight.mul_(head_init_scale)
                self.head.bias.mul_(head_init_scale)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in the backward pass instead of storing them (per stage or block)."""
        self.grad_checkpointing = enable

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pooling -> LayerNorm -> classifier (skipped with `pre_logits`)."""
        x = self.norm(x.mean((-2, -1)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int, head_init_scale: float = 1.0) -> None:
        """Replace the classifier by a freshly initialised one with `num_classes` outputs."""
        self._init_head(num_classes, head_init_scale)


class ConvNeXt(ConvNeXtBase):
    """The hierarchical ConvNeXt: a patchify stem, four stages of blocks with LN + 2x2/2 conv downsampling
    between them, and a head of global average pooling, LayerNorm and a linear classifier.

    `downsample_layers[0]` is the stem and `downsample_layers[1:]` the downsampling layers, so that the
    state dict has the official keys (`downsample_layers.*`, `stages.i.j.*`, `norm.*`, `head.*`).

    Args:
        in_chans: input channels.
        num_classes: classifier outputs; 0 replaces the classifier by an identity (pooled features out).
        depths: blocks per stage (B in the paper).
        dims: channels per stage (C in the paper).
        drop_path_rate: stochastic depth rate of the last block; it grows linearly from 0 over all blocks.
        layer_scale_init_value: initial per-channel `gamma`; 0 or None disables layer scale. V1 blocks only.
        head_init_scale: multiplies the classifier's initial weight and bias (0.001 when fine-tuning).
        patch_size: kernel and stride of the patchify stem (4 in the paper; smaller for tiny images).
        kernel_size: the depthwise convolution's kernel (7 in the paper).
        use_grn: ConvNeXt V2: every block is a `BlockV2` (GRN in the MLP, no layer scale, so
            `layer_scale_init_value` is not used); the state dict is the official V2 layout
            (`stages.i.j.grn.gamma`/`beta`, no `stages.i.j.gamma`).
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        depths: Sequence[int] = (3, 3, 9, 3),
        dims: Sequence[int] = (96, 192, 384, 768),
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float | None = 1e-6,
        head_init_scale: float = 1.0,
        patch_size: int = 4,
        kernel_size: int = 7,
        use_grn: bool = False,
    ) -> None:
        super().__init__()
        self.depths, self.dims = tuple(depths), tuple(dims)
        self.use_grn = use_grn
        self.num_features = dims[-1]
        self.grad_checkpointing = False

        stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], patch_size, stride=patch_size), LayerNorm2d(dims[0]))
        self.downsample_layers = nn.ModuleList([stem])
        for i in range(1, len(dims)):
            self.downsample_layers.append(
                nn.Sequential(LayerNorm2d(dims[i - 1]), nn.Conv2d(dims[i - 1], dims[i], 2, stride=2))
            )

        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.stages = nn.ModuleList()
        for i, depth in enumerate(depths):
            first = sum(depths[:i])
            self.stages.append(nn.Sequential(*[
                BlockV2(dims[i], rates[first + j], kernel_size) if use_grn
                else Block(dims[i], rates[first + j], layer_scale_init_value, kernel_size) for j in range(depth)
            ]))

        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.apply(_init_weights)
        self._init_head(num_classes, head_init_scale)

    def run_stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Downsampling (or stem) i followed by stage i."""
        x = self.downsample_layers[i](x)
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(self.stages[i], x, use_reentrant=False)
        return self.stages[i](x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map (N, C3, H/32, W/32)."""
        for i in range(len(self.stages)):
            x = self.run_stage(i, x)
        return x

    @property
    def num_layer_groups(self) -> int:
        """Layer groups for layer-wise lr decay, the head's group excluded (12 for S/B/L/XL)."""
        return 3 + -(-self.depths[2] // 3)

    def count_layer_groups(self, scheme: str = "group") -> int:
        """`num_layer_groups` of a layer-decay scheme: "group" (as `num_layer_groups`) or "single" (one per
        block: sum(depths), as ConvNeXt V2's official `layer_decay_type single`)."""
        return sum(self.depths) if _scheme(scheme) == "single" else self.num_layer_groups

    def layer_group(self, param_name: str, scheme: str = "group") -> int:
        """Layer-wise lr decay group of a parameter, 0 (stem) .. count_layer_groups(scheme) + 1 (head).

        "group": the official scheme (stem 0, stage 0: 1, stage 1: 2, stage 2 in groups of 3 blocks, stage 3
        and its downsampling: 12, head 13), generalised to any stage-3 depth so that it also suits T, whose
        9-block third stage makes 3 groups instead of 9; the scale of group g is decay^(num_groups + 1 - g).
        "single": ConvNeXt V2's fine-tuning scheme for its smaller models (official optim_factory
        `get_num_layer_for_convnext_single`): block j of stage i is sum(depths[:i]) + j + 1, downsampling
        layer i (the stem for i = 0) sum(depths[:i]) + 1, everything else (norms, head) sum(depths) + 1.
        """
        parts = param_name.split(".")
        if _scheme(scheme) == "single":
            if parts[0] in ("downsample_layers", "stages"):
                i = int(parts[1])
                return sum(self.depths[:i]) + 1 + (int(parts[2]) if parts[0] == "stages" else 0)
            return sum(self.depths) + 1
        last = self.num_layer_groups
        if parts[0] == "downsample_layers":
            i = int(parts[1])
            return (0, 2, 3, last)[i] if i < 3 else last
        if parts[0] == "stages":
            i, j = int(parts[1]), int(parts[2])
            return (1, 2, 3 + j // 3, last)[i]
        if parts[0].startswith("norm") and parts[0][4:].isdigit():  # backbone output norms
            i = int(parts[0][4:])
            return (1, 2, last - 1, last)[i]
        return last + 1


class ConvNeXtFeatures(ConvNeXt):
    """ConvNeXt as a detection/segmentation backbone: the official backbone layout.

    Returns the outputs of the stages in `out_indices` (strides 4, 8, 16, 32), each through its own
    LayerNorm `norm{i}`; there is no pooled norm and no classifier.
    """

    def __init__(self, *args, out_indices: Sequence[int] = (0, 1, 2, 3), **kwargs) -> None:
        kwargs["num_classes"] = 0
        super().__init__(*args, **kwargs)
        del self.norm, self.head
        self.out_indices = tuple(out_indices)
        for i in self.out_indices:
            self.add_module(f"norm{i}", LayerNorm2d(self.dims[i]))
        self.feature_info = [
            {"num_chs": self.dims[i], "reduction": 2 ** (i + 2), "module": f"stages.{i}"} for i in self.out_indices
        ]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i in range(max(self.out_indices) + 1):
            x = self.run_stage(i, x)
            if i in self.out_indices:
                outs.append(getattr(self, f"norm{i}")(x))
        return outs


def _scheme(scheme: str) -> str:
    if scheme not in ("group", "single"):
        raise ValueError(f"Unknown layer-decay scheme {scheme!r}; choose 'group' or 'single'")
    return scheme


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
