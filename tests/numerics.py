"""How the tests compare a fast computation with the reference: against the exact result (the reference run in
float64), relative to the reference's own rounding error in the same precision.

A bound like `atol=1e-5` holds on the CPU it was tuned on and fails on another whose kernels sum in a different
order (issue 15: an AMD Zen 4 missed it by 1.7e-5 on one element of 768). Rounding error scales with the
computation, not with the machine's luck, so: measure how far the fp32 (or bf16) reference is from the fp64
result, and require the fast path to be no further than a small factor of that.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch

U32 = 2.0**-24  # fp32's unit roundoff: the floor for a reference that happens to be nearly exact
FACTOR = 8.0  # fast kernels sum in other orders and fold weights: a few times the reference's own error


def flat(tensors: torch.Tensor | Iterable[torch.Tensor]) -> torch.Tensor:
    """All values of a tensor, or of a list/tuple of tensors, as one float64 vector."""
    if isinstance(tensors, torch.Tensor):
        tensors = [tensors]
    return torch.cat([t.detach().double().flatten() for t in tensors])


def normwise_error(got, exact) -> float:
    """||got - exact|| / ||exact|| over all values."""
    g, e = flat(got), flat(exact)
    assert g.shape == e.shape, (g.shape, e.shape)
    return float((g - e).norm() / e.norm().clamp_min(1e-300))


def assert_as_accurate(got, ref, exact, what: str = "", factor: float = FACTOR) -> tuple[float, float]:
    """`got` is within `factor` times the error of `ref` (the reference in the same precision) from `exact`
    (the float64 reference). Returns (error of got, error of ref)."""
    e_got, e_ref = normwise_error(got, exact), normwise_error(ref, exact)
    bound = factor * max(e_ref, U32)
    assert e_got <= bound, f"{what}: error {e_got:.3e}, the reference's own {e_ref:.3e} (bound {bound:.3e})"
    return e_got, e_ref


def as_float64(model: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy: the exact reference (no fast kernel serves float64, so it runs the reference ops)."""
    return copy.deepcopy(model).double()


def outputs(y) -> list[torch.Tensor]:
    """A model's output as a list (backbones return one tensor per stage)."""
    return list(y) if isinstance(y, (list, tuple)) else [y]


def grads(model: torch.nn.Module) -> list[torch.Tensor]:
    """Every parameter's gradient, in parameter order."""
    return [p.grad for p in model.parameters()]


def weighted_sum(y) -> torch.Tensor:
    """A scalar that depends on every output value differently, for backward passes."""
    return sum((t.float() if t.dtype != torch.float64 else t).mul(
        torch.linspace(-1, 1, t.numel(), dtype=torch.float64 if t.dtype == torch.float64 else torch.float32)
        .view_as(t)).sum() for t in outputs(y))
