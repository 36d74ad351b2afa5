"""pointwise_mlp (the fused training path's pwconv1 -> GELU -> pwconv2 [+ shortcut]) equals autograd's Linear."""

import pytest
import torch
import torch.nn.functional as F

from convnext.fast.mlp import pointwise_mlp
from numerics import assert_as_accurate


def _inputs(c: int = 24, shape=(2, 5, 7)):
    g = torch.Generator().manual_seed(0)
    def t(*s): return (torch.randn(*s, generator=g) * 0.5).requires_grad_()
    return t(*shape, c), t(*shape, c), t(4 * c, c), t(4 * c), t(c, 4 * c), t(c)


@pytest.mark.parametrize("with_shortcut", [True, False])
def test_values_and_gradients_match_autograd(with_shortcut):
    x, sc, w1, b1, w2, b2 = _inputs()
    leaves = [x, sc, w1, b1, w2, b2]
    leaves64 = [p.detach().double().requires_grad_() for p in leaves]
    results = []
    for kind, (x_, sc_, w1_, b1_, w2_, b2_) in (("ref", leaves), ("fused", leaves), ("exact", leaves64)):
        for p in leaves:
            p.grad = None
        if kind == "fused":
            y = pointwise_mlp(x_, w1_, b1_, w2_, b2_, shortcut=sc_ if with_shortcut else None)
        else:
            y = F.linear(F.gelu(F.linear(x_, w1_, b1_)), w2_, b2_) + (sc_ if with_shortcut else 0)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        results.append([y.detach()] + [None if p.grad is None else p.grad.clone()
                                       for p in (leaves64 if kind == "exact" else leaves)])
    for name, got, want, exact in zip(("y", "x", "shortcut", "w1", "b1", "w2", "b2"), results[1], results[0],
                                      results[2], strict=True):
        if want is None:
            assert got is None
        else:
            assert_as_accurate(got, want, exact, name)


def test_non_contiguous_input_and_double_backward():
    x, sc, w1, b1, w2, b2 = _inputs()
    # a transposed view is not channels-last contiguous: autograd's own ops run, same values
    xt = x.transpose(1, 2)
    torch.testing.assert_close(pointwise_mlp(xt, w1, b1, w2, b2), F.linear(F.gelu(F.linear(xt, w1, b1)), w2, b2))
    y = pointwise_mlp(x, w1, b1, w2, b2, shortcut=sc)
    (g,) = torch.autograd.grad(y.sum(), w1, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()  # the hand-written backward has no backward of its own: an error, not a wrong number


def test_only_needed_gradients_are_computed():
    # A frozen pwconv1 (fine-tuning with some layers fixed) gets no gradient, the others the autograd ones.
    x, sc, w1, b1, w2, b2 = _inputs()
    w1.requires_grad_(False), b1.requires_grad_(False), x.requires_grad_(False)
    pointwise_mlp(x, w1, b1, w2, b2, shortcut=sc).sum().backward()
    assert w1.grad is None and b1.grad is None and x.grad is None
    got = (w2.grad.clone(), sc.grad.clone())
    w2.grad = sc.grad = None
    (F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2) + sc).sum().backward()
    torch.testing.assert_close(got[0], w2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], sc.grad)
