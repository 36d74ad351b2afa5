"""`convnext benchmark`: the protocol's fields and values, memory accounting, JSON and PNG output."""

import json
import os
import platform

import pytest
import torch

from convnext import create_model
from convnext.benchmark import (
    Subject,
    format_summary,
    format_table,
    matmul_peak_gflops,
    measure,
    parse_spec,
    peak_memory_mb,
    run,
)
from convnext.flops import count_macs


def test_cli_writes_json_and_png(run_cli, tmp_path):
    out = run_cli("benchmark", "ours:convnext_atto", "timm:convnext_atto", "-b", "2", "--img-size", "32",
                  "--warmup", "1", "--reps", "2", "--mode", "infer", "train", "--precision", "fp32", "bf16",
                  "--threads", "1", "--peak-size", "512", "--json", tmp_path / "r.json", "--plot", tmp_path / "r.png")
    assert out.returncode == 0, out.stderr
    assert "| ours:convnext_atto | pytorch eager, convnext.freeze | infer | fp32 | 2 |" in out.stdout
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


def _row(model, value, mode="infer", precision="fp32", batch=32):
    return dict(model=model, mode=mode, precision=precision, batch_size=batch, img_per_s=value, img_per_s_min=value,
                img_per_s_max=value, latency_ms=1.0, peak_mem_mb=None, gmacs=1.0, peak_fraction=0.5)


def test_tables_compare_ours_with_the_best_peer_of_the_same_model():
    rows = [_row("ours:convnext_tiny", 20), _row("ours:convnext_tiny@compiled", 22), _row("timm:convnext_tiny", 10),
            _row("timm:convnext_tiny@cl+compiled", 16), _row("timm:swin_tiny_patch4_window7_224", 40),
            _row("ours:convnext_tiny", 5, batch=1), _row("ov:convnext_tiny", 4, batch=1)]
    table = format_table({"results": rows})
    # Swin-T is faster but another architecture: the best ConvNeXt-T peer (16 img/s) is the reference
    assert "| ours:convnext_tiny | - | infer | fp32 | 32 | 20.00 | 20.00-20.00 | 1.0 | 1.25x | - | - | 50% |" in table
    assert "| timm:convnext_tiny@cl+compiled | - | infer | fp32 | 32 | 16.00 |" in table
    summary = format_summary({"results": rows})
    assert ("| infer | fp32 | 32 | ours:convnext_tiny@compiled: 22.00 | timm:convnext_tiny@cl+compiled: 16.00 "
            "| **1.38x** | 50% |") in summary
    assert "| infer | fp32 | 1 | ours:convnext_tiny: 5.00 | ov:convnext_tiny: 4.00 | **1.25x** | 50% |" in summary


def test_specs_name_the_variants_each_source_has():
    assert parse_spec("timm:convnext_tiny@cl+compiled").variants == {"cl", "compiled"}
    assert parse_spec("ours:convnext_tiny@compiled").variants == {"compiled"}
    assert parse_spec("ov:convnext_tiny@ours").source == "ov"
    for bad in ("timm:convnext_tiny@frozen", "ours:convnext_tiny@cl", "ours:convnext_tiny@compiled+optimized",
                "ort:convnext_tiny@compiled", "ov:convnext_tiny@cl", "onnx:convnext_tiny"):
        with pytest.raises(ValueError, match="variant|SOURCE:NAME"):
            parse_spec(bad)


def test_cli_runs_every_peer_variant(run_cli, tmp_path):
    """Every kind of peer on a tiny model, 1 rep: channels_last, Inductor with freezing, ONNX Runtime and
    OpenVINO (reported as not measured, one line, where its package is not installed)."""
    specs = ["ours:convnext_atto", "timm:convnext_atto@cl", "timm:convnext_atto@compiled", "ort:convnext_atto",
             "ov:convnext_atto"]
    out = run_cli("benchmark", *specs, "-b", "1", "--img-size", "32", "--reps", "1", "--threads", "1",
                  "--peak-size", "128", "--json", tmp_path / "r.json")
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    measured = {r["model"]: r for r in report["results"]}
    failed = {f["model"] for f in report["failures"]}
    assert set(measured) | failed == set(specs)
    assert set(specs[:4]) <= set(measured), report["failures"]
    assert measured["timm:convnext_atto@compiled"]["engine"] == "inductor"
    assert measured["timm:convnext_atto@cl"]["engine"] == "pytorch eager channels_last"
    try:
        import openvino  # noqa: F401
    except ImportError:
        assert "not measured: ov:convnext_atto (build): RuntimeError: ov:convnext_atto needs OpenVINO" in out.stdout
    else:
        assert measured["ov:convnext_atto"]["engine"].startswith("openvino ")
    assert "| infer | fp32 | 1 | ours:convnext_atto:" in out.stdout  # the summary against the best peer


def test_a_peer_that_breaks_is_reported_and_the_rest_measured():
    def broken(x):
        raise RuntimeError("no kernel for this CPU\nsecond line")

    model = create_model("convnext_atto")
    ok = Subject("ours:convnext_atto@optimized", model, model, 1, 1)
    bad = Subject("timm:convnext_atto@compiled", model, broken, 1, 1)
    failures, lines = [], []
    results = measure([bad, ok], "infer", "fp32", 1, (32, 32), torch.device("cpu"), reps=1, failures=failures,
                      log=lines.append)
    assert [r.model for r in results] == ["ours:convnext_atto@optimized"]
    assert [(f.model, f.stage, f.reason) for f in failures] == [
        ("timm:convnext_atto@compiled", "infer fp32 batch 1", "RuntimeError: no kernel for this CPU")]
    assert lines == ["  timm:convnext_atto@compiled: FAILED in infer fp32 batch 1: "
                     "RuntimeError: no kernel for this CPU"]


def test_a_peer_that_cannot_be_built_is_one_failure():
    report = run(["ours:convnext_atto", "timm:no_such_model"], ["infer"], ["fp32"], batch_size=1, img_size=(32, 32),
                 threads=1, reps=1, peak_size=64, log=lambda s: None)
    assert [r["model"] for r in report["results"]] == ["ours:convnext_atto"]
    assert [(f["model"], f["stage"]) for f in report["failures"]] == [("timm:no_such_model", "build")]
