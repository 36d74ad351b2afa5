"""The compiled depthwise weight gradient equals PyTorch's own, and the block uses it where it applies."""

import copy

import pytest
import torch
from torch import nn

from convnext.fast import dwconv
from convnext.fast.dwconv import depthwise_conv
from numerics import assert_as_accurate


def _grads(conv: nn.Conv2d, x: torch.Tensor, use_ours: bool) -> tuple[torch.Tensor, ...]:
    conv.zero_grad()
    x = x.detach().requires_grad_()
    y = depthwise_conv(x, conv) if use_ours else conv(x)
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
    return y.detach(), x.grad, conv.weight.grad.clone(), conv.bias.grad.clone()


def test_the_kernel_builds_on_this_machine():
    # `make setup` installs g++ and ninja; without them training silently loses its fastest gradient.
    assert dwconv._load_kernel() is not None


def test_the_custom_op_is_registered_correctly():
    # schema, fake (shape-only) kernel and real kernel agree, as torch.compile relies on
    x = torch.randn(2, 24, 9, 10).contiguous(memory_format=torch.channels_last)
    g = torch.randn_like(x)
    torch.library.opcheck(torch.ops.convnext.dw_weight_grad.default, (x, g, 7))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape,k", [((3, 40, 9, 11), 7), ((2, 96, 14, 14), 7), ((4, 17, 5, 6), 5),
                                     ((2, 64, 3, 3), 9), ((1, 130, 8, 8), 7)])
def test_gradients_equal_pytorch(shape, k, threads, one_thread):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    conv = nn.Conv2d(shape[1], shape[1], k, padding=k // 2, groups=shape[1])
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    ref = _grads(conv, x, use_ours=False)
    ours = _grads(conv, x, use_ours=True)
    exact = _grads(copy.deepcopy(conv).double(), x.double(), use_ours=False)  # fp64: no kernel of ours serves it
    assert ours[2].grad_fn is None and conv.weight.grad is not None
    for name, a, b, c in zip(("output", "input grad", "weight grad", "bias grad"), ours, ref, exact, strict=True):
        assert_as_accurate(a, b, c, name)


def test_falls_back_to_pytorch_without_the_kernel(monkeypatch):
    monkeypatch.setattr(dwconv, "_kernel", None)
    monkeypatch.setattr(dwconv, "_kernel_note", "off: test")
    conv = nn.Conv2d(8, 8, 7, padding=3, groups=8)
    y = depthwise_conv(torch.randn(1, 8, 6, 6, requires_grad=True), conv)
    assert type(y.grad_fn).__name__ == "ConvolutionBackward0"


def test_double_backward_is_refused_not_wrong():
    conv = nn.Conv2d(8, 8, 7, padding=3, groups=8)
    x = torch.randn(1, 8, 6, 6, requires_grad=True)
    (gw,) = torch.autograd.grad(depthwise_conv(x, conv).square().sum(), conv.weight, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|double backward|differentiable"):
        gw.sum().backward()
