"""Keep freed tensor memory in the process instead of handing it back to the OS (glibc malloc only).

glibc serves every block over its mmap threshold (at most 32 MB) with a fresh `mmap` and unmaps it on free.
ConvNeXt's activations are far larger (stage 0 of ConvNeXt-T at batch 32: 154 MB for one 4C-wide tensor), so
each training step maps, page-faults and zeroes gigabytes anew, and at two threads the page faults serialise
on the kernel's memory-map lock. With mmap off and heap trimming off, freed blocks are reused: a ConvNeXt-T
fp32 training step at batch 32 on a 2-core Intel Xeon, 2 threads, went from 8.31 to 10.19 img/s, and timm's
from 5.95 to 8.61 (one process, every model untuned then tuned: benchmarks/results/history.jsonl, the run
recorded at commit bbb2790, 2026-11-24; benchmarks/RESULTS.md). The cost: the process keeps its peak heap for
its lifetime, as PyTorch's CUDA caching allocator does on GPUs. Where another allocator is preloaded (jemalloc,
tcmalloc, mimalloc), it manages memory instead of glibc and there is nothing to tune.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

_M_TRIM_THRESHOLD = -1  # glibc malloc.h
_M_MMAP_MAX = -4
_tuned = False


def tune_malloc() -> bool:
    """Make glibc malloc reuse freed memory instead of returning it to the OS, for this process and the
    processes it forks (DataLoader workers). Idempotent.

    Returns True if the settings are in effect; False where there is nothing to tune (not glibc, e.g. macOS,
    Windows or musl, or another allocator preloaded) or the user opted out with the environment variable
    ``CONVNEXT_NO_MALLOC_TUNING=1``.
    The `convnext` command calls it at start; call it yourself before training from Python.
    """
    global _tuned
    if _tuned:
        return True
    if os.environ.get("CONVNEXT_NO_MALLOC_TUNING") or platform.libc_ver()[0] != "glibc" or preloaded_allocator():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        # mallopt returns 1 on success. Trimming off (-1): a step frees its activations, which would otherwise
        # leave a large free top of heap that glibc hands back, to be faulted in again by the next step.
        _tuned = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, -1))
    except (OSError, AttributeError):
        return False
    return _tuned


def preloaded_allocator() -> str | None:
    """The malloc replacement LD_PRELOAD puts in front of glibc's (jemalloc, tcmalloc, mimalloc), if any."""
    for lib in os.environ.get("LD_PRELOAD", "").replace(":", " ").split():
        name = os.path.basename(lib)
        for allocator in ("jemalloc", "tcmalloc", "mimalloc"):
            if allocator in name:
                return allocator
    return None


def is_tuned() -> bool:
    """Whether `tune_malloc` is in effect in this process."""
    return _tuned
