"""What this machine can run, probed once per process: every fast kernel is chosen by what actually works here.

A CPU's instruction set decides which oneDNN primitives exist: on an AVX2-only CPU (or under
`ONEDNN_MAX_CPU_ISA=AVX2`) oneDNN has no bf16 inner product and its fused Linear raises, although the build,
the device and the dtype all look right. So each kernel is tried once on a tiny input and compared with the
reference op; a kernel that raises or disagrees is not used, and the reason is kept for `describe()`.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Capabilities:
    """The fast kernels this process can use, and why the others are off."""

    isa: str  # what ATen dispatches to: "AVX512", "AVX2", "DEFAULT", ... (torch.backends.cpu.get_cpu_capability)
    onednn_linear: tuple[torch.dtype, ...]  # dtypes in which oneDNN's fused Linear (+GELU, +add) works here
    native_bf16: bool  # bf16 matmuls in hardware (AMX or AVX512-BF16) that ATen and oneDNN both use
    cpu_flags: tuple[str, ...] = ()  # the bf16/AMX-relevant flags of /proc/cpuinfo
    notes: tuple[str, ...] = field(default=())  # why a kernel is off, one phrase each

    def linear_kernels(self, dtype: torch.dtype) -> bool:
        """Whether oneDNN's fused Linear kernels serve `dtype` here."""
        return dtype in self.onednn_linear


@torch.compiler.disable  # a probe runs eagerly, whatever context first asks for it
@functools.cache
def capabilities() -> Capabilities:
    """Probe this machine once: see the module docstring."""
    isa = torch.backends.cpu.get_cpu_capability()
    flags = _cpu_flags()
    notes = []
    linear = []
    for dtype in (torch.float32, torch.bfloat16):
        with torch.no_grad(), torch.autocast("cpu", enabled=False):  # the first caller may be inside autocast
            problem = _probe_linear(dtype)
        if problem is None:
            linear.append(dtype)
        else:
            notes.append(f"oneDNN {_short(dtype)} Linear: {problem}")
    hardware = "amx_bf16" in flags or "avx512_bf16" in flags
    native = hardware and isa.startswith("AVX512") and torch.bfloat16 in linear
    if not hardware:
        notes.append("no bf16 in hardware (no AMX or AVX512-BF16): bf16 runs emulated, slower than fp32")
    elif not native:
        cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
        notes.append(f"bf16 hardware present but capped (ATen ISA {isa}{', ONEDNN_MAX_CPU_ISA=' + cap if cap else ''})")
    return Capabilities(isa=isa, onednn_linear=tuple(linear), native_bf16=native, cpu_flags=flags, notes=tuple(notes))


def _probe_linear(dtype: torch.dtype) -> str | None:
    """None if oneDNN's fused Linear+GELU and Linear+add run in `dtype` and agree with ATen's, else why not."""
    if not torch.backends.mkldnn.is_available():
        return "torch built without oneDNN"
    if not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return "this torch has no torch.ops.mkldnn._linear_pointwise"
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*s, generator=g).to(dtype) for s in ((32, 16), (24, 16), (24,)))
    other = torch.randn(32, 24, generator=g).to(dtype)
    try:
        fused = torch.ops.mkldnn._linear_pointwise(x, w, b, "gelu", [], "none")
        added = torch.ops.mkldnn._linear_pointwise.binary(x, other, w, b, "add")
    except RuntimeError as e:
        return f"unavailable on this CPU ({str(e).splitlines()[0][:90]})"
    ref = F.linear(x.float(), w.float(), b.float())
    tol = 1e-4 if dtype == torch.float32 else 0.1  # bf16 keeps 8 mantissa bits; any real bug is far larger
    if not (torch.allclose(fused.float(), F.gelu(ref), atol=tol, rtol=tol)
            and torch.allclose(added.float(), ref + other.float(), atol=tol, rtol=tol)):
        return "gives wrong results here"
    return None


def _cpu_flags() -> tuple[str, ...]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return tuple(sorted(set(line.split(":", 1)[1].split()) & {"amx_bf16", "amx_tile", "avx512_bf16",
                                                                               "avx512f", "avx2"}))
    except OSError:
        pass
    return ()


def _short(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))
