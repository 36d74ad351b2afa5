"""The block's depthwise convolution with a fast weight gradient on CPU.

oneDNN computes the forward pass and the input gradient of a depthwise 7x7 convolution with fast
depthwise kernels, but its weight gradient runs a generic grouped-convolution kernel, 4.3-16.9x slower than
the kernel below on ConvNeXt-T's stage shapes at batch 32 (benchmarks/dwconv_grad.md, commit b903c05 of
2026-11-24: a 2-core Intel Xeon, 2 threads, `PYTHONPATH=src python benchmarks/dwconv_grad.py --threads 2`).
The weight gradient, dW[c, i, j] = sum over n, h, w of grad[n, h, w, c] * x[n, h + i - p, w + j - p, c], is
a channel-vectorised multiply-accumulate on channels_last storage, written below in C++ and compiled
once per machine with torch's extension loader and checked against ATen's gradient once per process. Where
no compiler is found, or the check fails, the native gradient is used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>

// Accumulates sum_w g[w, c] * x[w + shift, c] for CB channels from c0 into a[c0 .. c0 + CB), in registers.
template <int64_t CB>
static inline void row_block(const float* grow, const float* xrow, float* a, int64_t C, int64_t c0, int64_t w0,
                             int64_t w1, int64_t shift) {
  float s[CB] = {0};
  for (int64_t w = w0; w < w1; ++w) {
    const float* __restrict__ gv = grow + w * C + c0;
    const float* __restrict__ xv = xrow + (w + shift) * C + c0;
    for (int64_t c = 0; c < CB; ++c) s[c] += gv[c] * xv[c];
  }
  for (int64_t c = 0; c < CB; ++c) a[c0 + c] += s[c];
}

// dW[c, i, j] = sum_{n, h, w} g[n, h, w, c] * x[n, h + i - p, w + j - p, c] (zero outside the image).
// x and g are NHWC-contiguous float32; each thread accumulates rows (n, h) into its own k*k*C buffer.
torch::Tensor dw_weight_grad(torch::Tensor x, torch::Tensor g, int64_t k) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && g.scalar_type() == at::kFloat, "float32 only");
  auto xl = x.permute({0, 2, 3, 1}).contiguous();
  auto gl = g.permute({0, 2, 3, 1}).contiguous();
  const int64_t N = xl.size(0), H = xl.size(1), W = xl.size(2), C = xl.size(3), p = k / 2;
  const int64_t threads = at::get_num_threads();
  auto acc = torch::zeros({threads, k * k, C}, xl.options());
  const float* X = xl.data_ptr<float>();
  const float* G = gl.data_ptr<float>();
  float* A = acc.data_ptr<float>();
  at::parallel_for(0, N * H, 1, [&](int64_t begin, int64_t end) {
    float* acc0 = A + at::get_thread_num() * k * k * C;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / H, h = r % H;
      const float* grow = G + r * W * C;
      for (int64_t i = 0; i < k; ++i) {
        const int64_t hh = h + i - p;
        if (hh < 0 || hh >= H) continue;
        const float* xrow = X + (n * H + hh) * W * C;
        for (int64_t j = 0; j < k; ++j) {
          float* a = acc0 + (i * k + j) * C;
          const int64_t w0 = std::max<int64_t>(0, p - j), w1 = std::min<int64_t>(W, W + p - j), shift = j - p;
          int64_t c0 = 0;
          for (; c0 + 64 <= C; c0 += 64) row_block<64>(grow, xrow, a, C, c0, w0, w1, shift);
          for (; c0 + 16 <= C; c0 += 16) row_block<16>(grow, xrow, a, C, c0, w0, w1, shift);
          for (; c0 < C; ++c0) row_block<1>(grow, xrow, a, C, c0, w0, w1, shift);
        }
      }
    }
  });
  return acc.sum(0).t().reshape({C, 1, k, k});
}
"""

_kernel = None
_kernel_note = "not tried yet"


def _load_kernel():
    """The compiled weight-gradient kernel, or None where it cannot be built or computes wrong here (warned once)."""
    global _kernel, _kernel_note
    if _kernel_note != "not tried yet":
        return _kernel
    _kernel_note = "off: CONVNEXT_NO_EXTENSION is set"
    if os.environ.get("CONVNEXT_NO_EXTENSION"):
        return None
    try:
        # Importing the loader logs "No CUDA runtime is found" on every CPU-only machine with a CUDA_HOME: noise
        # for a C++-only build.
        log = logging.getLogger("torch.utils.cpp_extension")
        level = log.level
        log.setLevel(logging.ERROR)
        try:
            from torch.utils.cpp_extension import load_inline
        finally:
            log.setLevel(level)

        # Instruction set from what PyTorch itself dispatches to on this CPU, not -march=native: the build is
        # cached in ~/.cache/torch_extensions, which a cluster may share between machines of different CPUs.
        capability = torch.backends.cpu.get_cpu_capability()
        isa = {"AVX512": ["-mavx512f", "-mavx512vl", "-mfma", "-mprefer-vector-width=512"],
               "AVX2": ["-mavx2", "-mfma"]}.get(capability, [])
        # One build folder per PyTorch installation too: the build command names the installation's include
        # folders, so two environments sharing one folder rebuild it over each other on every switch (seen
        # here between a checkout's venv and a clean clone's), and a process loading it mid-rebuild races it.
        installation = hashlib.sha1(f"{torch.__version__} {os.path.dirname(torch.__file__)}".encode()).hexdigest()[:8]
        kernel = load_inline(
            name=f"convnext_dwconv_grad_v1_{capability.lower()}_{installation}", cpp_sources=_SOURCE,
            functions=["dw_weight_grad"],
            extra_cflags=["-O3", "-fopenmp", *isa], extra_ldflags=["-fopenmp"], verbose=False,
        ).dw_weight_grad
    except Exception as e:  # no compiler or ninja, a read-only cache, ...: the native gradient still works
        _kernel_note = f"off: it could not be compiled ({e!s:.200})"
        warnings.warn(f"convnext: the fast depthwise weight gradient could not be compiled ({e!s:.200}); "
                      "training uses PyTorch's own, which is slower on CPU. Install a C++ compiler and ninja "
                      "to enable it, or set CONVNEXT_NO_EXTENSION=1 to silence this.", stacklevel=3)
        return None
    problem = _check(kernel)
    if problem:
        _kernel_note = f"off: {problem}"
        warnings.warn(f"convnext: the compiled depthwise weight gradient {problem}; training uses PyTorch's own.",
                      stacklevel=3)
        return None
    _kernel, _kernel_note = kernel, f"compiled for {capability}"
    return _kernel


def _check(kernel) -> str | None:
    """None if the kernel's gradient equals ATen's on a small odd-sized input (all code paths: 64-, 16- and
    1-channel blocks, borders), else what went wrong."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 81, 9, 11, generator=g).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(2, 81, 9, 11, generator=g).contiguous(memory_format=torch.channels_last)
    want = torch.ops.aten.convolution_backward(grad.double(), x.double(), torch.zeros(81, 1, 7, 7, dtype=torch.double),
                                               None, [1, 1], [3, 3], [1, 1], False, [0, 0], 81,
                                               [False, True, False])[1]
    try:
        got = kernel(x, grad, 7).double()
    except RuntimeError as e:
        return f"fails on this CPU ({str(e).splitlines()[0][:100]})"
    # fp32 sums of ~200 products: a correct kernel is within a few fp32 roundings of the fp64 gradient
    if not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
        return f"gives wrong results on this CPU (max error {(got - want).abs().max().item():.2e})"
    return None


def kernel_status() -> str:
    """Whether the compiled depthwise weight gradient is in use, and why not (compiles it on first call)."""
    _load_kernel()
    return _kernel_note


@torch.library.custom_op("convnext::dw_weight_grad", mutates_args=())
def _dw_weight_grad(x: torch.Tensor, grad: torch.Tensor, k: int) -> torch.Tensor:
    # A registered op rather than a bare pybind call, so torch.compile traces the backward without a graph break.
    # The kernel takes NHWC views itself (no copy when both are channels_last); its (C, 1, k, k) result is a
    # transposed view, made contiguous like the weight (C * k * k floats).
    kernel = _load_kernel()
    if kernel is None:
        raise RuntimeError("convnext::dw_weight_grad needs the compiled depthwise kernel, which could not be built "
                           "(see the warning above, or unset CONVNEXT_NO_EXTENSION)")
    return kernel(x, grad, k).contiguous()


@_dw_weight_grad.register_fake
def _(x: torch.Tensor, grad: torch.Tensor, k: int) -> torch.Tensor:
    return x.new_empty((x.shape[1], 1, k, k))


class _DepthwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, k: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.k, ctx.has_bias = k, bias is not None
        return F.conv2d(x, weight, bias, padding=k // 2, groups=x.shape[1])

    @staticmethod
    @once_differentiable  # the compiled gradient is not itself differentiable: double backward raises
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        k, c = ctx.k, x.shape[1]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [1, 1], [k // 2] * 2, [1, 1], False, [0, 0], c, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_w = _dw_weight_grad(x, grad, k)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None


def depthwise_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """`conv(x)` for the block's depthwise convolution (stride 1, "same" padding), with the compiled weight
    gradient when it applies: CPU, float32, autograd recording, kernel 5 or more (oneDNN's own 3x3 weight
    gradient is fast). Same forward numerics as `conv(x)`."""
    k = conv.kernel_size[0]
    if (x.device.type == "cpu" and x.dtype == torch.float32 and conv.weight.dtype == torch.float32
            and torch.is_grad_enabled() and conv.weight.requires_grad and conv.stride == (1, 1)
            and conv.dilation == (1, 1) and conv.padding_mode == "zeros" and conv.padding == (k // 2, k // 2)
            and conv.kernel_size == (k, k) and k % 2 == 1 and k >= 5
            and conv.groups == x.shape[1] == conv.out_channels and _load_kernel() is not None):
        return _DepthwiseConv.apply(x, conv.weight, conv.bias, k)
    return conv(x)
