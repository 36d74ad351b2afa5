"""benchmarks/gpu_check.py, the script the first lent GPU runs, works end to end (here on the CPU with gloo), so
that it is not first found broken on the GPU."""

import subprocess
import sys
from pathlib import Path

from conftest import cli_env

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_script_runs_every_check_on_the_cpu():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--no-record"],
                         capture_output=True, text=True, env=cli_env(), timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert sum(line.startswith("ok") for line in lines) == 8 and not any(line.startswith("FAIL") for line in lines)
