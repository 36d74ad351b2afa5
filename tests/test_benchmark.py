"""`convnext benchmark`: the protocol's fields and values, memory accounting, JSON and PNG output."""

import json
import os
import platform

import pytest
import torch

from convnext import create_model
from convnext.benchmark import format_table, matmul_peak_gflops, peak_memory_mb, run
from convnext.flops import count_macs


def test_cli_writes_json_and_png(run_cli, tmp_path):
    out = run_cli("benchmark", "ours:convnext_atto", "timm:convnext_atto", "-b", "2", "--img-size", "32",
                  "--warmup", "1", "--reps", "2", "--mode", "infer", "train", "--precision", "fp32", "bf16",
                  "--threads", "1", "--peak-size", "512", "--json", tmp_path / "r.json", "--plot", tmp_path / "r.png")
    assert out.returncode == 0, out.stderr
    assert "| ours:convnext_atto | infer | fp32 |" in out.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["env"]["threads"] == 1 and report["env"]["torch"] == torch.__version__
    # every `convnext` command tunes malloc at start (convnext/malloc.py), and the report says so
    tunable = platform.libc_ver()[0] == "glibc" and not os.environ.get("CONVNEXT_NO_MALLOC_TUNING")
    assert report["env"]["malloc_tuned"] is tunable
    assert set(report["peaks_gflops"]) == {"fp32", "bf16"} and all(v > 0 for v in report["peaks_gflops"].values())
    results = report["results"]
    assert [(r["model"], r["mode"], r["precision"]) for r in results] == [
        (m, mode, p) for mode in ("infer", "train") for p in ("fp32", "bf16")
        for m in ("ours:convnext_atto", "timm:convnext_atto")]
    model = create_model("convnext_atto")
    macs, params = count_macs(model, 32), sum(p.numel() for p in model.parameters())
    for r in results:
        assert len(r["times_s"]) == 2 and r["batch_size"] == 2 and r["img_size"] == [32, 32]
        assert r["img_per_s_min"] <= r["img_per_s"] <= r["img_per_s_max"]
        assert r["latency_ms"] == pytest.approx(2 / r["img_per_s"] * 1e3)
        assert r["gmacs"] == pytest.approx(macs / 1e9) and r["params_m"] == pytest.approx(params / 1e6)
        factor = 3 if r["mode"] == "train" else 1
        assert r["achieved_gflops"] == pytest.approx(2 * factor * r["gmacs"] * r["img_per_s"])
        # the share of a square matmul's best rate: over 1 where the model's "bf16" runs partly in fp32 (autocast
        # keeps norms and, on CPU, our depthwise conv in fp32) while bf16 matmuls are emulated, as on AVX2 CPUs
        peak = report["peaks_gflops"][r["precision"]]
        assert r["peak_fraction"] == pytest.approx(r["achieved_gflops"] / peak) and r["peak_fraction"] > 0
        assert r["peak_mem_mb"] > 0


def test_bad_model_names_say_what_to_write():
    with pytest.raises(ValueError, match="SOURCE:NAME"):
        run(["convnext_tiny"], ["infer"], ["fp32"], log=lambda s: None)
    with pytest.raises(ValueError, match="precision"):
        run(["ours:convnext_atto"], ["infer"], ["fp8"], log=lambda s: None)


def test_peak_memory_counts_what_a_step_allocates():
    def step():
        a = torch.ones(1024, 1024)  # 4 MB live at once with b, then freed
        b = torch.ones(1024, 1024)
        del a, b
        torch.ones(512, 1024)

    assert peak_memory_mb(step, torch.device("cpu")) == pytest.approx(8.0, abs=0.1)


def test_matmul_peak_is_a_rate():
    assert 0.1 < matmul_peak_gflops(torch.float32, torch.device("cpu"), n=256, reps=2) < 1e6


def test_table_compares_with_the_first_model():
    rows = [dict(model=m, mode="infer", precision="fp32", img_per_s=v, img_per_s_min=v, img_per_s_max=v,
                 latency_ms=1.0, peak_mem_mb=None, gmacs=1.0, peak_fraction=0.5) for m, v in (("a", 10), ("b", 5))]
    table = format_table({"results": rows})
    assert "| b | infer | fp32 | 5.00 | 5.00-5.00 | 1 | 0.50x | - | 1.00 | 50% |" in table
