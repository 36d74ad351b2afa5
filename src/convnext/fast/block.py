"""Fast stand-ins for the reference `Block`, proven equal to it in tests/test_fast.py.

- `FastBlock` is `Block` with another `forward` and nothing else: `optimize` switches a block's class to it
  in place, so the parameters, the state dict and any hooks stay exactly as they were, and `reference`
  switches it back. It keeps activations channels_last, where the block's NHWC view is contiguous and no
  permute copies anything, and on the CPU uses the kernels `capabilities()` found working: oneDNN's fused
  Linear layers, the hand-written MLP backward (`mlp.py`) and the compiled depthwise weight gradient
  (`dwconv.py`). On other devices, and under torch.compile (whose Inductor fuses the plain ops itself), it
  runs the reference's ops.
- `FrozenBlock` is an inference-only snapshot made by `freeze`: LayerNorm's affine folded into pwconv1 and
  gamma into pwconv2, cast once to the inference dtype and, in fp32, packed into oneDNN's weight layout. It
  keeps no link to the block it was made from, so nothing can make it stale; it has no gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.layers import Block
from .dwconv import depthwise_conv
from .mlp import onednn_fusion, pointwise_mlp

# Pixels per tile of the fused inference MLP: a tile's 4C-wide hidden activation stays in cache between the two
# matmuls instead of a round trip to memory (10-20% faster per block on ConvNeXt-T's stages 0-2, docs/speed.md).
TILE_ROWS = 2048


class FastBlock(Block):
    """`Block` computed faster where a fast kernel serves, by the reference's ops elsewhere (see module doc)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or torch.compiler.is_compiling():
            return super().forward(x)
        x = x.contiguous(memory_format=torch.channels_last)
        if _drop_path_inactive(self) and not (torch.is_grad_enabled()
                                              and any(p.requires_grad for p in self.parameters())):
            return self._forward_inference(x)
        return self._forward_training(x)

    def _forward_training(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled("cpu"):
            # oneDNN's bf16 depthwise conv forward+backward took 1.4x the time of the whole fp32 one on a CPU with
            # AMX (docs/speed.md), and the depthwise conv is under 5% of the FLOPs: it stays fp32 under autocast.
            with torch.autocast("cpu", enabled=False):
                y = depthwise_conv(x.float(), self.dwconv)
        else:
            y = depthwise_conv(x, self.dwconv)
        y = self.norm(y.permute(0, 2, 3, 1))
        w2, b2 = self.pwconv2.weight, self.pwconv2.bias
        if self.gamma is not None:  # gamma (W a + b) == (gamma W) a + gamma b: no C-wide multiply and its backward
            w2, b2 = self.gamma[:, None] * w2, self.gamma * b2
        shortcut = x.permute(0, 2, 3, 1)
        if _drop_path_inactive(self):  # nothing between pwconv2 and the residual add: fuse them
            y = pointwise_mlp(y, self.pwconv1.weight, self.pwconv1.bias, w2, b2, shortcut=shortcut)
            return y.permute(0, 3, 1, 2)
        y = pointwise_mlp(y, self.pwconv1.weight, self.pwconv1.bias, w2, b2)
        return x + self.drop_path(y.permute(0, 3, 1, 2))

    def _forward_inference(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _compute_dtype(x)
        with torch.autocast("cpu", enabled=False):
            x = x.to(dtype)
            y = F.conv2d(x, self.dwconv.weight.to(dtype), _cast(self.dwconv.bias, dtype), padding=self.dwconv.padding,
                         groups=self.dwconv.groups)
            return mlp_inference(y, x, self.norm.eps, _cast(self.norm.weight, dtype), _cast(self.norm.bias, dtype),
                                 self.pwconv1.weight.to(dtype), _cast(self.pwconv1.bias, dtype),
                                 self.pwconv2.weight.to(dtype), _cast(self.pwconv2.bias, dtype),
                                 _cast(self.gamma, dtype))


# reference block class -> its fast subclass, for `optimize` (each fast class adds a forward and nothing else)
FAST_BLOCKS: dict[type[nn.Module], type[nn.Module]] = {Block: FastBlock}


class FrozenBlock(nn.Module):
    """An inference-only block with folded (and, in fp32, oneDNN-packed) weights; made by `freeze`."""

    def __init__(self, block: Block, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype, self.eps = dtype, block.norm.eps
        self.padding, self.groups = block.dwconv.padding, block.dwconv.groups
        with torch.no_grad():
            acc = torch.promote_types(block.pwconv1.weight.dtype, torch.float32)  # fold in >= fp32: round once
            ln_w, ln_b, w1, b1, w2, b2 = (p.detach().to(acc) for p in (
                block.norm.weight, block.norm.bias, block.pwconv1.weight, block.pwconv1.bias, block.pwconv2.weight,
                block.pwconv2.bias))
            # LN's affine a * z + c feeds pwconv1: W (a * z + c) + b == (W a) z + (W c + b)
            w1, b1 = w1 * ln_w, torch.addmv(b1, w1, ln_b)
            if block.gamma is not None:  # gamma (W a + b) == (gamma W) a + gamma b
                gamma = block.gamma.detach().to(acc)
                w2, b2 = gamma[:, None] * w2, gamma * b2
            self.dw_w, self.dw_b = (t.detach().to(dtype).clone() for t in (block.dwconv.weight, block.dwconv.bias))
            self.w1, self.b1, self.w2, self.b2 = (t.to(dtype).contiguous() for t in (w1, b1, w2, b2))
            self.packed = dtype == torch.float32 and onednn_fusion(self.w1)
            if self.packed:
                # oneDNN's own blocked layout, made once instead of inside every fp32 GEMM: 5-6% faster ConvNeXt-T
                # inference (bf16 gained nothing, docs/speed.md). Opaque tensors that only oneDNN's Linear reads.
                self.w1 = torch.ops.mkldnn._reorder_linear_weight(self.w1, TILE_ROWS)
                self.w2 = torch.ops.mkldnn._reorder_linear_weight(self.w2, TILE_ROWS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError("a frozen ConvNeXt (convnext.freeze) is for inference only: it has no gradients; "
                               "train the model itself (convnext.optimize(model) makes training fast)")
        if self.packed and (x.device.type != "cpu" or torch.compiler.is_compiling()):
            raise RuntimeError("a frozen model's packed oneDNN weights run on the CPU and in eager mode only: "
                               "compile or move the model itself, or freeze(model, pack=False)")
        with torch.autocast(x.device.type, enabled=False):
            x = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
            y = F.conv2d(x, self.dw_w, self.dw_b, padding=self.padding, groups=self.groups)
            return mlp_inference(y, x, self.eps, None, None, self.w1, self.b1, self.w2, self.b2, None,
                                 packed=self.packed)


def mlp_inference(y: torch.Tensor, shortcut: torch.Tensor, eps: float, ln_w: torch.Tensor | None,
                  ln_b: torch.Tensor | None, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor,
                  b2: torch.Tensor | None, gamma: torch.Tensor | None, packed: bool = False) -> torch.Tensor:
    """`shortcut + gamma * pwconv2(GELU(pwconv1(LN(y))))` on channels_last NCHW tensors, without autograd.

    Through oneDNN's fused Linear+GELU and Linear+add on tiles of `TILE_ROWS` pixels where those kernels work
    for this dtype on this CPU (`capabilities()`); through ATen's ops on the whole tensor elsewhere.
    """
    n, c, h, w = y.shape
    y, shortcut = y.permute(0, 2, 3, 1), shortcut.permute(0, 2, 3, 1)  # contiguous NHWC views
    if not (packed or onednn_fusion(y)) or torch.compiler.is_compiling():
        z = F.linear(F.gelu(F.linear(F.layer_norm(y, (c,), ln_w, ln_b, eps), w1, b1)), w2, b2)
        return (shortcut + (z if gamma is None else gamma * z)).permute(0, 3, 1, 2)
    y, shortcut = y.reshape(-1, c), shortcut.reshape(-1, c)
    out = torch.empty_like(y)
    for r in range(0, y.shape[0], TILE_ROWS):
        t = F.layer_norm(y[r:r + TILE_ROWS], (c,), ln_w, ln_b, eps)
        t = torch.ops.mkldnn._linear_pointwise(t, w1, b1, "gelu", [], "none")
        if gamma is None:
            out[r:r + TILE_ROWS] = torch.ops.mkldnn._linear_pointwise.binary(t, shortcut[r:r + TILE_ROWS], w2, b2,
                                                                             "add")
        else:
            t = torch.ops.mkldnn._linear_pointwise(t, w2, b2, "none", [], "")
            torch.addcmul(shortcut[r:r + TILE_ROWS], t, gamma, out=out[r:r + TILE_ROWS])
    return out.view(n, h, w, c).permute(0, 3, 1, 2)


def _drop_path_inactive(block: Block) -> bool:
    """No stochastic depth is drawn: rate 0, or eval mode (timm's DropPath is the identity there)."""
    return not block.training or isinstance(block.drop_path, nn.Identity)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the block computes `x` in: autocast's where it is on for x's device, else x's own."""
    device = x.device.type
    if device in ("cpu", "cuda") and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


def _cast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.to(dtype)
