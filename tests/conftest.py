import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def cli_env() -> dict:
    """Environment for a `python -m convnext` subprocess that imports this checkout's sources."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@pytest.fixture
def run_cli():
    """Run `convnext ARGS...` in a subprocess; returns the CompletedProcess (check it yourself)."""

    def run(*args: str, timeout: float = 300, cwd: str | Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "convnext", *map(str, args)], capture_output=True, text=True,
                              timeout=timeout, env=cli_env(), cwd=cwd)

    return run


@pytest.fixture(scope="session", autouse=True)
def _build_extension_once():
    """Compile the depthwise-gradient extension (about 30 s on a fresh machine) before any test runs, in this
    process: otherwise the first CLI subprocess that trains pays for it inside its timeout."""
    from convnext.fast.dwconv import _load_kernel

    _load_kernel()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests: the test machine's cores are shared with other jobs, and OpenMP
    oversubscription made small-model training steps about 6x slower with two threads per process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
