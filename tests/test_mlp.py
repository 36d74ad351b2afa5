"""pointwise_mlp (the fused training path's pwconv1 -> GELU -> pwconv2 [+ shortcut]) equals autograd's Linear."""

import pytest
import torch
import torch.nn.functional as F

from convnext.fast.mlp import pointwise_mlp
from numerics import assert_as_accurate, normwise_error


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


@pytest.mark.parametrize("with_shortcut", [True, False])
def test_bf16_autocast_as_accurate_as_autocast_itself(with_shortcut):
    # Under CPU bf16 autocast (run.amp): oneDNN's bf16 Linear where the CPU computes bf16 in hardware, autograd's
    # ops elsewhere; either way no further from the exact values and fp32 gradients than autocast's own Linear.
    from convnext.fast.mlp import _fused_dtype
    from convnext.fast.probe import capabilities

    x, sc, w1, b1, w2, b2 = _inputs(c=32, shape=(2, 6, 6))
    leaves = [x, sc, w1, b1, w2, b2]
    results = []
    for kind in ("ref", "fused", "exact"):
        ps = [p.detach().double().requires_grad_() for p in leaves] if kind == "exact" else leaves
        for p in ps:
            p.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=kind != "exact"):
            if kind == "fused":
                native = capabilities().native_bf16 and capabilities().linear_kernels(torch.bfloat16)
                assert _fused_dtype(ps[0], ps[2], ps[1]) == (torch.bfloat16 if native else None)
                y = pointwise_mlp(ps[0], *ps[2:], shortcut=ps[1] if with_shortcut else None)
            else:
                y = F.linear(F.gelu(F.linear(ps[0], ps[2], ps[3])), ps[4], ps[5]) + (ps[1] if with_shortcut else 0)
        y.float().mul(torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        results.append([y.detach(), *(p.grad for p in ps)])
    ref, got, exact = results
    assert got[0].dtype == ref[0].dtype and all(g.dtype == torch.float32 for g in got[2:] if g is not None)
    assert normwise_error(ref[0], exact[0]) > 1e-4  # bf16 really ran
    for name, g, r, e in zip(("y", "x", "shortcut", "w1", "b1", "w2", "b2"), got, ref, exact, strict=True):
        if r is None:
            assert g is None
        else:
            assert_as_accurate(g, r, e, f"bf16 {name}", factor=3.0)
