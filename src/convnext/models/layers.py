"""The ConvNeXt block and the channels-first LayerNorm it is built from (paper Figure 4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from .dwconv import depthwise_conv
from .mlp import onednn_fusion, pointwise_mlp

COMPUTE_PATHS = ("linear", "conv", "fused")
_TILE_ROWS = 2048  # pixels per tile of the fused inference MLP


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
    - ``"conv"``: the same weights used as 1x1 convolutions on a channels_last tensor.
    - ``"fused"``: the pointwise layers on the NHWC view of a channels_last tensor, which is contiguous, so
      no permute copies anywhere, and gamma folded into pwconv2. With autograd on CPU in fp32 the MLP runs
      through oneDNN with a hand-written backward (`models/mlp.py`) and the depthwise weight gradient is
      compiled C++ (`models/dwconv.py`). Without autograd it runs inference weights (LN's affine and gamma
      folded, cast to the compute dtype, cached until a parameter changes) and, on CPU, oneDNN's fused
      Linear+bias+GELU and Linear+bias+residual-add kernels.
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
        self._inference_cache: dict[torch.dtype, tuple[tuple, tuple[torch.Tensor, ...]]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compute_path == "fused":
            if self._autograd_free():
                return self._forward_inference(x)
            return self._forward_nhwc(x)
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
        w2, b2 = self._pwconv2_with_gamma()
        return F.conv2d(self.act(x), w2[:, :, None, None], b2)

    def _pwconv2_with_gamma(self) -> tuple[torch.Tensor, torch.Tensor]:
        """pwconv2's weight and bias with the layer scale folded in, differentiably: gamma * (W x + b) ==
        (gamma W) x + gamma b, so the C-wide multiply by gamma (and its two backward passes) never runs."""
        w2, b2 = self.pwconv2.weight, self.pwconv2.bias
        if self.gamma is None:
            return w2, b2
        return self.gamma[:, None] * w2, self.gamma * b2

    def _forward_nhwc(self, x: torch.Tensor) -> torch.Tensor:
        # The reference's ops in its order; on channels_last storage every permute here is a free view.
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # Training under autocast: oneDNN's bf16 depthwise conv forward+backward took 1.4x the time of the
            # whole fp32 one here (docs/speed.md), and the depthwise conv is under 5% of the FLOPs: keep it fp32.
            with torch.autocast("cpu", enabled=False):
                y = depthwise_conv(x.float(), self.dwconv).permute(0, 2, 3, 1)
        else:
            y = depthwise_conv(x, self.dwconv).permute(0, 2, 3, 1)
        y = self.norm(y)
        w2, b2 = self._pwconv2_with_gamma()
        if self._drop_path_inactive():  # nothing between pwconv2 and the add: fuse them
            return pointwise_mlp(y, self.pwconv1.weight, self.pwconv1.bias, w2, b2,
                                 shortcut=x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        y = pointwise_mlp(y, self.pwconv1.weight, self.pwconv1.bias, w2, b2)
        return x + self.drop_path(y.permute(0, 3, 1, 2))

    def _autograd_free(self) -> bool:
        """True when no gradient can flow through the block and no drop path is drawn: the inference kernels
        (folded, cached weights; fused ops with no backward) are then exact stand-ins for the reference."""
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            return False
        return self._drop_path_inactive()

    def _drop_path_inactive(self) -> bool:
        """No stochastic depth is drawn: rate 0, or eval mode (timm's DropPath is the identity there)."""
        return not self.training or isinstance(self.drop_path, nn.Identity)

    def _forward_inference(self, x: torch.Tensor) -> torch.Tensor:
        # autocast's choice, made once here with cached weights instead of per op and per call
        device, dtype = x.device.type, inference_dtype(x)
        dw_w, dw_b, w1, b1, w2, b2 = self._inference_weights(dtype)
        with torch.autocast(device, enabled=False):
            x = x.to(dtype)
            y = F.conv2d(x, dw_w, dw_b, padding=self.dwconv.padding, groups=self.dwconv.groups).permute(0, 2, 3, 1)
            n, h, w, c = y.shape
            shortcut = x.permute(0, 2, 3, 1)
            if onednn_fusion(y):
                # LN -> pwconv1+GELU -> pwconv2+residual on _TILE_ROWS pixels at a time: the 4C-wide hidden
                # activation then stays in cache between the two matmuls instead of a round trip to memory
                # (10-20% faster per block on stages 0-2 here, docs/speed.md).
                y, shortcut = y.reshape(-1, c), shortcut.reshape(-1, c)
                out = torch.empty_like(y)
                for r in range(0, y.shape[0], _TILE_ROWS):
                    t = F.layer_norm(y[r:r + _TILE_ROWS], self.norm.normalized_shape, None, None, self.norm.eps)
                    t = torch.ops.mkldnn._linear_pointwise(t, w1, b1, "gelu", [], "none")
                    out[r:r + _TILE_ROWS] = torch.ops.mkldnn._linear_pointwise.binary(
                        t, shortcut[r:r + _TILE_ROWS], w2, b2, "add")
                y = out
            else:
                y = F.layer_norm(y, self.norm.normalized_shape, None, None, self.norm.eps)
                y = F.linear(self.act(F.linear(y, w1, b1)), w2, b2).add_(shortcut)
        return y.view(n, h, w, c).permute(0, 3, 1, 2)

    @torch.no_grad()
    def _inference_weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """dwconv and pointwise weights in `dtype`, LN's affine folded into pwconv1 and gamma into pwconv2.

        Rebuilt only when a parameter was replaced or changed in place since (optimizer steps, load_state_dict
        and `.to()` all bump the version counter or the storage; writes through `.data` do not: call
        `clear_cache()` then). Folding runs in at least fp32, so bf16 weights are rounded once, not twice.
        """
        params = (self.dwconv.weight, self.dwconv.bias, self.norm.weight, self.norm.bias, self.pwconv1.weight,
                  self.pwconv1.bias, self.pwconv2.weight, self.pwconv2.bias, self.gamma)
        params = tuple(p for p in params if p is not None)
        # Parameters made under inference_mode have no version counter: fold afresh each call, never cache.
        key = None if any(p.is_inference() for p in params) else tuple(
            (p.data_ptr(), p._version, p.dtype, p.device) for p in params)
        cached = self._inference_cache.get(dtype)
        if key is not None and cached is not None and cached[0] == key:
            return cached[1]
        acc = torch.promote_types(self.pwconv1.weight.dtype, torch.float32)
        ln_w, ln_b, w1, b1, w2, b2 = (p.to(acc) for p in (self.norm.weight, self.norm.bias, self.pwconv1.weight,
                                                          self.pwconv1.bias, self.pwconv2.weight, self.pwconv2.bias))
        # LN's affine a * z + c feeds pwconv1: W (a * z + c) + b == (W a) z + (W c + b), so LN runs without it.
        w1, b1 = w1 * ln_w, torch.addmv(b1, w1, ln_b)
        if self.gamma is not None:
            # gamma * (W x + b) == (gamma W) x + gamma b: the layer scale costs nothing at inference.
            gamma = self.gamma.to(acc)
            w2, b2 = gamma[:, None] * w2, gamma * b2
        weights = tuple(t.detach().to(dtype) for t in (self.dwconv.weight, self.dwconv.bias, w1, b1, w2, b2))
        if key is not None and dtype == torch.float32 and onednn_fusion(weights[2]) \
                and not torch.compiler.is_compiling():
            # oneDNN's own blocked layout for the pointwise weights, made once here instead of in every fp32
            # GEMM: ConvNeXt-T's fp32 inference ran 5-6% faster (bf16 gained nothing, docs/speed.md). Not for
            # weights folded afresh per call (no cache key) nor inside torch.compile, which cannot trace the
            # opaque tensors.
            weights = (*weights[:2], _packed(weights[2]), weights[3], _packed(weights[4]), weights[5])
        if key is not None:
            self._inference_cache[dtype] = (key, weights)
        return weights

    def clear_cache(self) -> None:
        """Forget the cached inference weights. Needed only after changing parameters in place in eval mode
        without bumping their version counter: writes through `.data`, or a fused optimizer's step."""
        self._inference_cache.clear()

    def __getstate__(self) -> dict:
        # oneDNN's packed weights cannot be copied or pickled; deepcopy and torch.save get an empty cache,
        # which refills on the copy's first inference call.
        state = super().__getstate__()
        state["_inference_cache"] = {}
        return state

    def train(self, mode: bool = True) -> Block:
        # Fused optimizers (torch.optim.AdamW(fused=True)) update parameters without bumping the version
        # counter the cache is keyed on, so a train -> eval switch always refolds from the current weights.
        self._inference_cache.clear()
        return super().train(mode)


def inference_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the inference kernels compute `x` in: autocast's where it is on for x's device, else x's own."""
    device = x.device.type
    if device in ("cpu", "cuda") and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


def _packed(weight: torch.Tensor) -> torch.Tensor:
    """A Linear weight (out, in) in oneDNN's layout for `_TILE_ROWS`-row inputs (an opaque MKLDNN tensor that
    only `torch.ops.mkldnn._linear_pointwise` reads)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, _TILE_ROWS)
