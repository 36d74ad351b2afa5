"""How convnext is fast, kept apart from the reference network in `convnext.models`.

    model = convnext.optimize(model)          # in place: fast training and inference, same parameters/state dict
    frozen = convnext.freeze(model)           # an inference-only copy with folded, packed weights
    print(convnext.fast.describe("train"))    # which kernels run on this machine, and why

Every kernel is chosen by what this machine was probed to run (`capabilities()`); where none serves, the
reference computation runs. tests/test_fast.py proves each path equal to the reference within the reference's
own rounding error.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..models.layers import Block
from .block import FAST_BLOCKS, FastBlock, FastBlockV2, FrozenBlock
from .dwconv import kernel_status
from .mlp import training_kernels
from .probe import Capabilities, capabilities

__all__ = ["Capabilities", "FastBlock", "FastBlockV2", "FrozenBlock", "capabilities", "compile", "describe", "freeze",
           "optimize", "reference"]


def optimize(model: nn.Module) -> nn.Module:
    """Make `model` fast in place and return it: every reference `Block` becomes a `FastBlock`.

    Nothing else changes: the same parameter objects, state-dict keys, hooks and training behaviour, and the
    same numbers to within floating-point rounding. `with reference(model):` undoes it for a while.
    """
    for m in model.modules():
        if type(m) in FAST_BLOCKS:
            m.__class__ = FAST_BLOCKS[type(m)]
    return model


@contextlib.contextmanager
def reference(model: nn.Module) -> Iterator[nn.Module]:
    """Within this context `model`'s blocks compute with the reference's ops (for exporters and FLOP counters,
    which need standard ops); `optimize`'s blocks are restored on exit."""
    swapped = [(m, type(m)) for m in model.modules() if type(m) in FAST_BLOCKS.values()]
    for m, cls in swapped:
        m.__class__ = cls.__base__  # each fast block subclasses the reference block it replaces
    try:
        yield model
    finally:
        for m, cls in swapped:
            m.__class__ = cls


def freeze(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """An inference-only copy of `model` with each block's weights folded once (LayerNorm's affine into
    pwconv1, gamma into pwconv2), cast to `dtype` (default: the model's) and, where oneDNN's fused Linear serves
    `dtype` on this CPU, packed into oneDNN's layout. ConvNeXt V2's blocks, whose GRN sits between the pointwise
    layers, are not folded: they run optimized, in `dtype`. The copy shares nothing with `model`: train or change
    `model` and freeze again.

    Freeze after moving the model to its device; the copy runs in eval mode, without gradients.
    """
    dtype = dtype or next(model.parameters()).dtype
    frozen = optimize(copy.deepcopy(model).eval().requires_grad_(False))  # blocks without a frozen form run fast
    for parent in list(frozen.modules()):
        for name, child in parent.named_children():
            if isinstance(child, Block):  # folded from the model's own precision, so bf16 weights round once
                setattr(parent, name, FrozenBlock(child, dtype))
    return frozen.to(dtype)  # the stem, downsampling layers and head; the frozen blocks hold their weights apart


def compile(model: nn.Module, **kwargs: Any) -> nn.Module:
    """`torch.compile(model, **kwargs)` with Inductor's on-disk cache kept apart per vector instruction set.

    torch's Inductor cache (2.14) is not keyed on the vector ISA that `ATEN_CPU_CAPABILITY` selects: a process
    capped at AVX2 reused graphs compiled for AVX-512 by an earlier process and returned NaN, and the reverse
    corrupted the heap (docs/speed.md, "Compiled models and the Inductor cache"). A folder per ISA under the
    cache folder avoids both, whoever set it.
    """
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    base = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or default_cache_dir()
    isa = f"isa-{torch.backends.cpu.get_cpu_capability().lower()}"
    if os.path.basename(os.path.normpath(base)) != isa:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(base, isa)
    return torch.compile(model, **kwargs)


def describe(mode: str = "train", device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> str:
    """One line: which block computation runs for `mode` ("train" or "inference") on `device` in `dtype` here,
    and why the faster kernels do not where they do not."""
    device = torch.device(device)
    name = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))
    if device.type != "cpu":
        return (f"{device.type} {name} {mode}: the reference ops, channels_last (no fast kernel has been measured "
                f"on {device.type} yet)")
    caps = capabilities()
    parts = []
    fused = caps.linear_kernels(dtype)
    if mode == "train":
        if training_kernels(dtype) and dtype == torch.float32:
            parts.append("oneDNN MLP with a hand-written backward")
        elif training_kernels(dtype):
            parts.append(f"oneDNN {name} MLP with a hand-written backward under autocast, the depthwise conv in fp32")
        elif dtype == torch.float32:
            parts.append("ATen's Linear layers")
        else:
            parts.append(f"ATen's {name} matmuls under autocast, the depthwise conv in fp32")
        parts.append(f"depthwise weight gradient {kernel_status()}")
    else:
        parts.append("oneDNN fused Linear+GELU and Linear+add" if fused else "ATen's Linear layers")
    line = f"cpu {caps.isa} {name} {mode}: " + "; ".join(parts)
    if dtype == torch.bfloat16 and not caps.native_bf16:
        line += " (bf16 is emulated on this CPU: slower than fp32)"
    off = [n for n in caps.notes if name in n and "Linear" in n]
    return line + (f" [{'; '.join(off)}]" if off else "")
