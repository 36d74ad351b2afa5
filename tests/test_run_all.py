"""benchmarks/run_all.py's history: records are appended, never rewritten, and RESULTS.md is made from them."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_all():
    spec = importlib.util.spec_from_file_location("run_all", ROOT / "benchmarks" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(model, value, mode="infer", precision="fp32", batch=32, engine="pytorch eager"):
    return dict(model=model, mode=mode, precision=precision, batch_size=batch, img_size=[224, 224], img_per_s=value,
                img_per_s_min=value * 0.9, img_per_s_max=value * 1.1, latency_ms=batch / value * 1e3, peak_mem_mb=100.0,
                gmacs=4.46, params_m=28.6, achieved_gflops=2 * 4.46 * value, peak_fraction=0.5, times_s=[batch / value],
                engine=engine, first_call_s=2.0)


def _record(date, cpu, results, **extra):
    return {"date": date, "commit": "abc1234", "command": "python benchmarks/run_all.py", "quick": False,
            "note": "", "cpu": {"name": cpu, "isa": "AVX512", "cores": 2, "bf16": "native"}, "threads": 2,
            "allocator": "glibc, tuned (convnext.tune_malloc)", "versions": {"torch": "2.x", "openvino": "2026.4"},
            "load_avg_before": [0.5, 0.6, 0.7], "load_avg_after": [2.0, 1.0, 0.8], "minutes": 11.0,
            "peaks_gflops": {"fp32": 191.0, "bf16": 420.0}, "kernels": {"infer fp32": "cpu AVX512 fp32 inference: x"},
            "results": results, "failures": [], **extra}


def test_history_is_appended_and_results_md_rendered_newest_first_by_cpu(run_all, tmp_path):
    history = tmp_path / "results" / "history.jsonl"
    old_amd = _record("2026-11-28 10:00 UTC", "AMD EPYC", [_result("ours:convnext_tiny", 19.0),
                                                           _result("timm:convnext_tiny", 18.0)])
    xeon = _record("2026-11-28 12:00 UTC", "Intel Xeon", [_result("ours:convnext_tiny", 34.0),
                                                          _result("timm:convnext_tiny", 30.0)])
    new_amd = _record("2026-11-29 10:00 UTC", "AMD EPYC", [
        _result("ours:convnext_tiny", 20.3), _result("ours:convnext_tiny@compiled", 18.5, engine="inductor"),
        _result("timm:convnext_tiny", 18.1), _result("timm:convnext_tiny@compiled", 18.0, engine="inductor"),
        _result("ov:convnext_tiny", 18.2, engine="openvino 2026.4"),
        _result("ours:convnext_tiny", 37.9, precision="bf16"), _result("ov:convnext_tiny", 33.3, precision="bf16"),
        _result("ours:convnext_tiny", 7.0, mode="train")],
        note="load 3 on 2 cores", failures=[{"model": "tv:convnext_tiny@compiled", "stage": "build",
                                             "reason": "RuntimeError: no compiler"}])
    quick = _record("2026-11-29 11:00 UTC", "AMD EPYC", [_result("ours:convnext_atto", 100.0)], quick=True)
    for r in (old_amd, xeon):
        run_all.append_record(r, history)
    first_lines = history.read_text()
    for r in (new_amd, quick):
        run_all.append_record(r, history)
    assert history.read_text().startswith(first_lines)  # appended: earlier records untouched
    records = run_all.read_history(history)
    assert [r["date"] for r in records] == [old_amd["date"], xeon["date"], new_amd["date"], quick["date"]]
    assert json.loads(history.read_text().splitlines()[2]) == new_amd

    md = run_all.write_results(records, tmp_path / "RESULTS.md").read_text()
    amd, intel = md.index("## AMD EPYC (AVX512, 2 cores)"), md.index("## Intel Xeon (AVX512, 2 cores)")
    assert amd < intel  # the CPU of the newest run first
    assert md.index("### 2026-11-29 10:00 UTC") < md.index("### 2026-11-28 10:00 UTC") < intel  # newest run first
    assert "2026-11-29 11:00" not in md  # smoke runs stay out of RESULTS.md
    # ours at its best against the best peer of the same model, per (mode, precision, batch)
    assert ("| infer | fp32 | 32 | ours:convnext_tiny: 20.30 | ov:convnext_tiny: 18.20 | **1.12x** | 50% |") in md
    assert ("| infer | bf16 | 32 | ours:convnext_tiny: 37.90 | ov:convnext_tiny: 33.30 | **1.14x** | 50% |") in md
    assert "| train | fp32 | 32 | ours:convnext_tiny: 7.00 | - | - | 50% |" in md
    # each CPU's ratios over its runs: median, range and count (AMD: 19.0/18.0 and 20.3/18.2), none for one-run rows
    across = md[amd:md.index("### 2026-11-29 10:00 UTC")]
    assert ("| glibc, tuned (convnext.tune_malloc) | infer | fp32 | 32 | **1.09x** | 1.06-1.12x | 2 | "
            "2026-11-28 10:00 UTC, 2026-11-29 10:00 UTC |") in across
    assert "| infer | bf16 | 32 | **1.14x** | 1.14-1.14x | 1 |" in across and "| train |" not in across
    assert "### Across runs" in md[intel:]
    assert "- not measured: tv:convnext_tiny@compiled (build): RuntimeError: no compiler" in md
    assert "- note: load 3 on 2 cores" in md
    assert "- load average (1/5/15 min) before: 0.50 / 0.60 / 0.70; after: 2.00 / 1.00 / 0.80" in md
    assert "- our kernels, infer fp32: cpu AVX512 fp32 inference: x" in md
    # a smoke run's own RESULTS.md shows it
    assert "2026-11-29 11:00" in run_all.render(records, quick=True)


def test_the_recorded_history_renders(run_all):
    """The committed history (imported earlier runs and run_all's own) is readable and renders."""
    records = run_all.read_history()
    assert records and all({"date", "cpu", "results", "command"} <= set(r) for r in records)
    assert run_all.render(records).startswith("# Speed results")
