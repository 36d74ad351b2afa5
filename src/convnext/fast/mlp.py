"""The block's pointwise MLP (pwconv1 -> GELU -> pwconv2, + shortcut) for training on CPU, through oneDNN, in fp32
and under bf16 autocast.

Autograd's Linear runs `addmm`, whose GEMM is slower for the thin matrices of ConvNeXt's early stages: at stage 0
of ConvNeXt-T (batch 32, C = 96) pwconv1's forward took 45.6 ms as `addmm` and 39.6 ms as oneDNN's matmul on an
AMD EPYC at 2 threads (benchmarks/kernels.md, record 2026-11-29 19:40 UTC; 45.3 and 39.7 ms on 2026-12-07 23:05).
`pointwise_mlp` runs the forward pass through oneDNN (`torch.ops.mkldnn._linear_pointwise`, with the residual add
fused into pwconv2 when there is no drop path) and writes the backward pass by hand: the GEMMs autograd would run,
both weight gradients as dh^T x (on the AMD EPYC 47.2 ms against 60.6 ms in the 19:40 record, 43.6 against 51.8 ms
in the 23:05 one, for the (x^T dh)^T used before, which a Xeon had chosen without a recorded A/B), GELU's gradient
written over `dy @ w2` instead of a new 4C-wide tensor, and only the gradients that are needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .probe import capabilities


def onednn_fusion(x: torch.Tensor) -> bool:
    """Whether oneDNN's fused Linear kernels serve this tensor: on the CPU, in a dtype they were probed to work in."""
    return x.device.type == "cpu" and capabilities().linear_kernels(x.dtype)


class _PointwiseMLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, shortcut: torch.Tensor | None, w1: torch.Tensor, b1: torch.Tensor,
                w2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
        h = torch.ops.mkldnn._linear_pointwise(x, w1, b1, "none", [], "")
        a = F.gelu(h)
        if shortcut is None:
            y = torch.ops.mkldnn._linear_pointwise(a, w2, b2, "none", [], "")
        else:
            y = torch.ops.mkldnn._linear_pointwise.binary(a, shortcut, w2, b2, "add")
        ctx.save_for_backward(x, h, a, w1, w2)
        return y

    @staticmethod
    @once_differentiable  # the hand-written backward is not itself differentiable: double backward raises
    def backward(ctx, dy: torch.Tensor):
        x, h, a, w1, w2 = ctx.saved_tensors
        need_x, need_shortcut, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad
        dy = dy.contiguous()
        dx = dw1 = db1 = None
        dw2 = dy.t().mm(a) if need_w2 else None
        db2 = dy.sum(0) if need_b2 else None
        if need_x or need_w1 or need_b1:
            # GELU's gradient written over dy @ w2, which nothing else reads: one 4C-wide buffer fewer per block
            # (154 MB at stage 0 of ConvNeXt-T, batch 32), which glibc would map and page-fault afresh (docs/speed.md)
            da = dy.mm(w2)
            dh = torch.ops.aten.gelu_backward.grad_input(da, h, grad_input=da)
            dw1 = dh.t().mm(x) if need_w1 else None
            db1 = dh.sum(0) if need_b1 else None
            dx = dh.mm(w1) if need_x else None
        return dx, (dy if need_shortcut else None), dw1, db1, dw2, db2


def pointwise_mlp(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                  shortcut: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2) (+ shortcut)` over the last dimension of contiguous
    channels-last activations, differentiable; through oneDNN on CPU in fp32 and under bf16 autocast, through
    autograd elsewhere."""
    shape = x.shape
    dtype = _fused_dtype(x, w1, shortcut)
    if dtype is None:
        y = F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)
        return y if shortcut is None else shortcut + y
    if dtype == torch.float32:
        flat = shortcut.reshape(-1, shape[-1]) if shortcut is not None else None
        return _PointwiseMLP.apply(x.reshape(-1, shape[-1]), flat, w1.contiguous(), b1, w2.contiguous(),
                                   b2).view(shape)
    # bf16 autocast: the casts autocast would make, made here once (their backward casts the gradients back to the
    # fp32 parameters, as autocast's do). The residual add stays outside in fp32, as the reference's: fused into
    # the bf16 GEMM it would round the residual stream to bf16.
    with torch.autocast("cpu", enabled=False):
        x, w1, b1, w2, b2 = (t.to(dtype) for t in (x.reshape(-1, shape[-1]), w1, b1, w2, b2))
        y = _PointwiseMLP.apply(x, None, w1, b1, w2, b2).view(shape)
        return y if shortcut is None else shortcut + y


def _fused_dtype(x: torch.Tensor, w1: torch.Tensor, shortcut: torch.Tensor | None) -> torch.dtype | None:
    """The dtype `pointwise_mlp` runs oneDNN's Linear in for these tensors, or None where autograd's ops run.

    fp32 without autocast, bf16 under CPU bf16 autocast, as `training_kernels` allows. Under torch.compile the
    plain ops run: Inductor fuses them itself and cannot lower oneDNN's linear with a weight that is not a graph
    constant.
    """
    if (x.device.type != "cpu" or x.dtype != torch.float32 or w1.dtype != torch.float32 or not x.is_contiguous()
            or (shortcut is not None and not shortcut.is_contiguous()) or torch.compiler.is_compiling()):
        return None
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32
    return dtype if training_kernels(dtype) else None


def training_kernels(dtype: torch.dtype) -> bool:
    """Whether `pointwise_mlp` computes in `dtype` (fp32, or bf16 under autocast) through oneDNN on this CPU:
    where oneDNN's Linear works in it, and for bf16 only where the CPU computes bf16 in hardware."""
    caps = capabilities()
    return caps.linear_kernels(dtype) and (dtype == torch.float32 or (dtype == torch.bfloat16 and caps.native_bf16))
