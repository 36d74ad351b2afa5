"""tune_malloc: freed tensor memory is reused instead of being mapped and page-faulted afresh."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

_PROBE = """
import resource, sys, torch
from convnext.malloc import tune_malloc
tuned = tune_malloc() if sys.argv[1] == "1" else False
faults = []
for _ in range(4):  # the first rounds grow the heap; the last shows the steady state of a training loop
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(40_000_000).fill_(1.0)  # 160 MB: far over glibc's largest mmap threshold (32 MB)
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(tuned, faults[-1])
"""
_PAGES = 160_000_000 // 4096


def _last_round_faults(tune: bool) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE, "1" if tune else "0"], capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_tuned_malloc_reuses_freed_tensor_memory():
    tuned, faults = _last_round_faults(tune=True)
    assert tuned
    assert faults < 0.01 * _PAGES, f"{faults} page faults for a 160 MB tensor allocated again after tuning"
    # The measurement itself: untuned, glibc maps the block afresh and every page faults again.
    tuned, faults = _last_round_faults(tune=False)
    assert not tuned and faults > 0.9 * _PAGES


def test_opt_out_by_environment(monkeypatch):
    import convnext.malloc as m

    monkeypatch.setattr(m, "_tuned", False)
    monkeypatch.setenv("CONVNEXT_NO_MALLOC_TUNING", "1")
    assert m.tune_malloc() is False and m.is_tuned() is False
