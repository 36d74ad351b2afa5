"""Fast stand-ins for the reference `Block`, proven equal to it in tests/test_fast.py.

- `FastBlock` is `Block` with another `forward` and nothing else: `optimize` switches a block's class to it
  in place, so the parameters, the state dict and any hooks stay exactly as they were, and `reference`
  switches it back. It keeps activations channels_last, where the block's NHWC view is contiguous and no
  permute copies anything, and on the CPU uses the kernels `capabilities()` found working: oneDNN's fused
  Linear layers, the hand-written MLP backward (`mlp.py`) and the compiled depthwise weight gradient
  (`dwconv.py`). On other devices, and under torch.compile (whose Inductor fuses the plain ops itself), it
  runs the reference's ops.
- `FastBlockV2` is the same for ConvNeXt V2's `BlockV2`: channels_last without permute copies, the compiled
  depthwise weight gradient in training, oneDNN's fused Linear+GELU and Linear+add in inference, and GRN as one
  per-sample, per-channel scale (`x * (1 + gamma * n) + beta`, its norms in fp32 whatever the autocast dtype).
- `FrozenBlock` is an inference-only snapshot made by `freeze`: LayerNorm's affine folded into pwconv1 and
  gamma into pwconv2, cast once to the inference dtype and, where oneDNN's fused Linear serves it, packed into
  oneDNN's layout. It keeps no link to the block it was made from, so nothing can make it stale; it has no
  gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from ..models.layers import Block, BlockV2
from .dwconv import depthwise_conv
from .mlp import onednn_fusion, pointwise_mlp

# The row count oneDNN is told to expect when the frozen block packs its weights: the tile size the blocks had until
# 2026-12-08, not re-tuned for whole tensors. The packed layout serves any row count (tests/test_fast.py runs one it
# was not packed for); the hint only picks among oneDNN's blockings.
PACK_ROWS_HINT = 2048


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
            # PyTorch's bf16 depthwise conv forward+backward is no faster than the fp32 one on an AMD EPYC and 2.2x
            # slower on an Intel Xeon with AMX (benchmarks/kernels.md), and it is 2.4% of ConvNeXt-T's MACs: it
            # stays fp32 under autocast.
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


class FastBlockV2(BlockV2):
    """`BlockV2` computed faster where a fast kernel serves, by the reference's ops elsewhere (see module doc).
    FCMAE's masked forward (`visible`) runs the reference's ops."""

    def forward(self, x: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        if visible is not None or x.device.type != "cpu" or torch.compiler.is_compiling():
            return super().forward(x, visible)
        x = x.contiguous(memory_format=torch.channels_last)
        if _drop_path_inactive(self) and not (torch.is_grad_enabled()
                                              and any(p.requires_grad for p in self.parameters())):
            return self._forward_inference(x)
        return self._forward_training(x)

    def _forward_training(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled("cpu"):  # the depthwise conv stays fp32 under autocast, as in FastBlock
            with torch.autocast("cpu", enabled=False):
                y = depthwise_conv(x.float(), self.dwconv)
        else:
            y = depthwise_conv(x, self.dwconv)
        y = self.norm(y.permute(0, 2, 3, 1))  # a contiguous NHWC view of the channels_last result: no copy
        w1, b1, w2, b2 = self.pwconv1.weight, self.pwconv1.bias, self.pwconv2.weight, self.pwconv2.bias
        gamma, beta = self.grn.gamma, self.grn.beta
        if (onednn_fusion(y) and y.dtype == w1.dtype == torch.float32 and y.is_contiguous()
                and not torch.is_autocast_enabled("cpu") and isinstance(self.act, nn.GELU)
                and self.act.approximate == "none"):
            n, h, w, c = y.shape
            shortcut = x.permute(0, 2, 3, 1).reshape(-1, c) if _drop_path_inactive(self) else None
            z = _GRNMLP.apply(y.reshape(-1, c), shortcut, n, w1, b1, gamma, beta, self.grn.eps, w2, b2)
            z = z.view(n, h, w, c).permute(0, 3, 1, 2)
            return z if shortcut is not None else x + self.drop_path(z)
        a = self.act(self.pwconv1(y))
        # GRN: gamma (a n) + beta + a == a (1 + gamma n) + beta: one pass over the 4C-wide activation instead of
        # four, with the (N, 1, 1, 4C) scale computed in fp32 and applied in a's dtype
        scale = (1 + gamma * self.grn.response(a)).to(a.dtype)
        y = self.pwconv2(torch.addcmul(beta.to(a.dtype), a, scale))
        return x + self.drop_path(y.permute(0, 3, 1, 2))

    def _forward_inference(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _compute_dtype(x)
        with torch.autocast("cpu", enabled=False):
            x = x.to(dtype)
            y = F.conv2d(x, self.dwconv.weight.to(dtype), _cast(self.dwconv.bias, dtype), padding=self.dwconv.padding,
                         groups=self.dwconv.groups)
            n, c, h, w = y.shape
            y = F.layer_norm(y.permute(0, 2, 3, 1), (c,), _cast(self.norm.weight, dtype), _cast(self.norm.bias, dtype),
                             self.norm.eps).reshape(-1, c)
            w1, b1, w2 = self.pwconv1.weight.to(dtype), _cast(self.pwconv1.bias, dtype), self.pwconv2.weight.to(dtype)
            # GRN's beta through pwconv2 is a constant: W2 (a s + beta) + b2 == W2 (a s) + (W2 beta + b2)
            beta = self.grn.beta.reshape(-1)
            b2 = torch.addmv(self.pwconv2.bias, self.pwconv2.weight, beta).to(dtype)
            fused = onednn_fusion(y)
            if fused:
                a = torch.ops.mkldnn._linear_pointwise(y, w1, b1, "gelu", [], "none")
            else:
                a = F.gelu(F.linear(y, w1, b1))
            # the (N, 1, 1, 4C) scale 1 + gamma n (norms over H x W in fp32), applied in place
            a = a.view(n, h, w, -1)
            scale = 1 + self.grn.gamma * self.grn.response(a)
            a = a.mul_(scale.to(dtype)).view(n * h * w, -1)
            shortcut = x.permute(0, 2, 3, 1).reshape(-1, c)  # contiguous NHWC: a view
            if fused:
                out = torch.ops.mkldnn._linear_pointwise.binary(a, shortcut, w2, b2, "add")
            else:
                out = torch.addmm(shortcut, a, w2.t()).add_(b2)
            return out.view(n, h, w, c).permute(0, 3, 1, 2)


class _GRNMLP(torch.autograd.Function):
    """pwconv1 -> GELU -> GRN -> pwconv2 (+ shortcut) on the (N * H * W, C) rows of N samples, fp32, through oneDNN's
    Linear (as `mlp.pointwise_mlp` for V1, whose measurements it shares), with a hand-written backward: autograd
    would keep four 4C-wide tensors per block for GRN alone and run its GEMMs as `addmm`.

    With a = GELU(h), per sample and channel g = ||a||_HW, n = g / (mean_c g + eps), s = 1 + gamma n:
    GRN(a) = a s + beta. Backward, from dz = dy W2 and q = sum_HW(dz a):
    d beta = sum dz, d gamma = sum_N q n, and da = dz s + a (dg / g), where dn = gamma q and
    dg_c = dn_c / m - sum_k(dn_k g_k) / (C m^2), m = mean_c g + eps.
    """

    @staticmethod
    def forward(ctx, x, shortcut, n, w1, b1, gamma, beta, eps, w2, b2):
        h = torch.ops.mkldnn._linear_pointwise(x, w1, b1, "none", [], "")
        a = F.gelu(h)
        rows, c4 = a.shape
        a3 = a.view(n, rows // n, c4)
        g = torch.linalg.vector_norm(a3, dim=1, keepdim=True)  # (N, 1, 4C)
        m = g.mean(dim=-1, keepdim=True) + eps
        s = 1 + gamma.view(1, 1, -1) * (g / m)
        z = torch.addcmul(beta.view(1, 1, -1), a3, s).view(rows, c4)
        if shortcut is None:
            y = torch.ops.mkldnn._linear_pointwise(z, w2, b2, "none", [], "")
        else:
            y = torch.ops.mkldnn._linear_pointwise.binary(z, shortcut, w2, b2, "add")
        # z is not kept: the backward makes it again from a (one pass) for pwconv2's weight gradient
        ctx.save_for_backward(x, h, a, g, s, w1, w2, gamma, beta)
        ctx.n, ctx.m = n, m
        return y

    @staticmethod
    @once_differentiable  # the hand-written backward is not itself differentiable: double backward raises
    def backward(ctx, dy):
        x, h, a, g, s, w1, w2, gamma, beta = ctx.saved_tensors
        n, m = ctx.n, ctx.m
        need = ctx.needs_input_grad
        dy = dy.contiguous()
        rows, c4 = a.shape
        a3 = a.view(n, rows // n, c4)
        dw2 = dy.t().mm(torch.addcmul(beta.view(1, 1, -1), a3, s).view(rows, c4)) if need[8] else None
        db2 = dy.sum(0) if need[9] else None
        dz = dy.mm(w2).view(n, rows // n, c4)
        dbeta = dz.sum((0, 1)).view_as(beta) if need[6] else None
        q = (dz * a3).sum(1, keepdim=True)  # (N, 1, 4C)
        dgamma = (q * (g / m)).sum((0, 1)).view_as(gamma) if need[5] else None
        dn = gamma.view(1, 1, -1) * q
        dg = dn / m - (dn * g).sum(-1, keepdim=True) / (c4 * m * m)
        coef = torch.where(g > 0, dg / g, 0.0)  # a zero norm has a zero subgradient, as torch's norm backward
        da = dz.mul_(s).addcmul_(a3, coef).view(rows, c4)  # written over dz, which nothing else reads
        dh = torch.ops.aten.gelu_backward.grad_input(da, h, grad_input=da)
        dw1 = x.t().mm(dh).t() if need[3] else None
        db1 = dh.sum(0) if need[4] else None
        dx = dh.mm(w1) if need[0] else None
        return dx, (dy if need[1] else None), None, dw1, db1, dgamma, dbeta, None, dw2, db2


# reference block class -> its fast subclass, for `optimize` (each fast class adds a forward and nothing else)
FAST_BLOCKS: dict[type[nn.Module], type[nn.Module]] = {Block: FastBlock, BlockV2: FastBlockV2}


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
            self.packed = onednn_fusion(self.w1)
            if self.packed:
                # oneDNN's own blocked layout, made once instead of inside every GEMM. fp32: a stage-0 block 11%
                # faster on an AMD EPYC at 2 threads in the 2026-11-29 19:40 record, 3-4% in the two of 2026-12-07;
                # on an Intel Xeon with AMX -2% to +5% per block, within its runs' pair-to-pair spread. bf16 on
                # that Xeon: -3% to +5% per block; the whole frozen ConvNeXt-T took 2% less time at batch 32 and 7%
                # less at batch 1 (2026-12-08 04:56 and 05:57; benchmarks/kernels.md). Opaque tensors that only oneDNN's
                # Linear reads.
                self.w1 = torch.ops.mkldnn._reorder_linear_weight(self.w1, PACK_ROWS_HINT)
                self.w2 = torch.ops.mkldnn._reorder_linear_weight(self.w2, PACK_ROWS_HINT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError("a frozen ConvNeXt (convnext.freeze) is for inference only: it has no gradients; "
                               "train the model itself (convnext.optimize(model) makes training fast)")
        if self.packed and (x.device.type != "cpu" or torch.compiler.is_compiling()):
            raise RuntimeError("a frozen model's packed oneDNN weights run on the CPU and in eager mode only: "
                               "compile or move the model itself")
        with torch.autocast(x.device.type, enabled=False):
            x = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
            y = F.conv2d(x, self.dw_w, self.dw_b, padding=self.padding, groups=self.groups)
            return mlp_inference(y, x, self.eps, None, None, self.w1, self.b1, self.w2, self.b2, None,
                                 packed=self.packed)


def mlp_inference(y: torch.Tensor, shortcut: torch.Tensor, eps: float, ln_w: torch.Tensor | None,
                  ln_b: torch.Tensor | None, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor,
                  b2: torch.Tensor | None, gamma: torch.Tensor | None, packed: bool = False) -> torch.Tensor:
    """`shortcut + gamma * pwconv2(GELU(pwconv1(LN(y))))` on channels_last NCHW tensors, without autograd.

    Through oneDNN's fused Linear+GELU and Linear+add where those kernels work for this dtype on this CPU
    (`capabilities()`); through ATen's ops elsewhere. The whole tensor at once: on 2048-pixel tiles, which kept the
    4C-wide activation in cache, a frozen block took 1.08-1.20x as long in fp32 and 1.27-1.54x in bf16 at stages 0
    and 2 of ConvNeXt-T on an Intel Xeon with AMX (2026-12-08 04:56 and 05:57). On an AMD EPYC (fp32, stage 0,
    three runs) the whole tensor took 0.98-1.06x as long as the tiles; bf16 there is not measured yet
    (benchmarks/kernels.md).
    """
    n, c, h, w = y.shape
    y, shortcut = y.permute(0, 2, 3, 1), shortcut.permute(0, 2, 3, 1)  # contiguous NHWC views
    if not (packed or onednn_fusion(y)) or torch.compiler.is_compiling():
        z = F.linear(F.gelu(F.linear(F.layer_norm(y, (c,), ln_w, ln_b, eps), w1, b1)), w2, b2)
        return (shortcut + (z if gamma is None else gamma * z)).permute(0, 3, 1, 2)
    y, shortcut = y.reshape(-1, c), shortcut.reshape(-1, c)
    t = torch.ops.mkldnn._linear_pointwise(F.layer_norm(y, (c,), ln_w, ln_b, eps), w1, b1, "gelu", [], "none")
    if gamma is None:
        out = torch.ops.mkldnn._linear_pointwise.binary(t, shortcut, w2, b2, "add")
    else:
        z = torch.ops.mkldnn._linear_pointwise(t, w2, b2, "none", [], "")
        out = torch.addcmul(shortcut, z, gamma, out=z)  # over z: one (M, C) buffer fewer at the peak
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
