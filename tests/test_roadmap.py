"""The roadmap design space against the paper's Table 10/11, torchvision's ResNet-50 and our ConvNeXt."""

import json
import math

import pytest
import torch
import torchvision

from convnext import create_model
from convnext.flops import count_macs, count_params
from convnext.models.roadmap import ROADMAP_B, ROADMAP_T, Design, build
from convnext.roadmap import TOLERANCE, SweepConfig, draw_figure, format_table, roadmap_rows, run_sweep, summarize


@pytest.fixture(scope="module")
def rows_t():
    return {r["step"]: r for r in roadmap_rows(ROADMAP_T)}


@pytest.mark.parametrize("step", list(ROADMAP_T), ids=lambda s: s.name)
def test_every_table10_step_within_tolerance(step, rows_t):
    ours = rows_t[step.name]["gmacs"]
    if step.gmacs_reference is None:
        assert abs(ours - step.paper_gmacs) <= TOLERANCE, (step.name, ours, step.paper_gmacs)
    else:
        # The two steps where the paper contradicts itself: Table 10's figure is really out of reach (so the
        # flag is not hiding a fixable error) and the paper's other figure is met.
        assert abs(ours - step.paper_gmacs) > TOLERANCE
        assert abs(ours - step.gmacs_reference) <= TOLERANCE, (step.name, ours, step.gmacs_reference)
        assert "Table" in step.note and not rows_t[step.name]["ok"]


def test_flagged_steps_are_exactly_the_contradictions():
    assert [s.name for s in ROADMAP_T if s.gmacs_reference is not None] == ["BN -> LN", "ConvNeXt-T"]
    assert [s.name for s in ROADMAP_B if s.gmacs_reference is not None] == []


def _torchvision_to_roadmap(sd: dict) -> dict:
    """torchvision ResNet keys -> the roadmap network's (ConvNeXt-named) keys, 1x1 weights as Linear's."""
    names = {"conv1": "pwconv1", "bn1": "pwnorm1", "conv2": "dwconv", "bn2": "norm", "conv3": "pwconv2",
             "bn3": "pwnorm2", "downsample": "shortcut"}
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        if parts[0] == "conv1":
            key = "downsample_layers.0.0." + parts[1]
        elif parts[0] == "bn1":
            key = "downsample_layers.0.1." + parts[1]
        elif parts[0] == "fc":
            key = "head." + parts[1]
        else:
            stage, block = int(parts[0][5:]) - 1, parts[1]
            key = ".".join(["stages", str(stage), block, names[parts[2]], *parts[3:]])
            if parts[2] in ("conv1", "conv3"):
                v = v.flatten(1)
        out[key] = v
    return out


def test_resnet50_is_torchvision_resnet50():
    tv = torchvision.models.resnet50()
    with torch.device("meta"):
        ours_meta, tv_meta = build(ROADMAP_T[0]), torchvision.models.resnet50()
    assert count_params(ours_meta) == count_params(tv_meta) == 25_557_032
    assert count_macs(ours_meta) == count_macs(tv_meta)
    # Same numbers, not just the same sizes: torchvision's weights give torchvision's logits.
    for m in tv.modules():  # non-trivial BN statistics, so that the eval-mode norms matter
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    ours = ours_meta  # skip a second random init: take torchvision's tensors as they are
    ours.load_state_dict(_torchvision_to_roadmap(tv.state_dict()), strict=True, assign=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, got = tv.eval()(x), ours.eval()(x)
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_final_step_is_convnext_tiny():
    ref = create_model("convnext_tiny", optimize=False).eval()
    with torch.no_grad():  # large layer scale and non-trivial norms so every block shows in the logits
        for name, p in ref.named_parameters():
            if name.endswith("gamma") or "norm" in name:
                p.uniform_(0.5, 1.5)
    with torch.device("meta"):
        net = build(ROADMAP_T[-1])
    assert count_params(net) == 28_589_128
    net.load_state_dict(ref.state_dict(), strict=True, assign=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, got = ref(x), net.eval()(x)
    assert expected.std() > 1e-2
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    with torch.device("meta"):
        assert count_macs(build(ROADMAP_T[-1])) == count_macs(create_model("convnext_tiny")) == 4_455_531_264


def test_table11_endpoints():
    with torch.device("meta"):
        first, last, base = build(ROADMAP_B[0]), build(ROADMAP_B[-1]), create_model("convnext_base")
    assert ROADMAP_B[0].design.depths == (3, 24, 36, 3)
    assert abs(count_macs(first) / 1e9 - 15.01) <= TOLERANCE
    assert abs(count_macs(last) / 1e9 - 15.35) <= TOLERANCE
    assert count_macs(last) == count_macs(base)
    assert count_params(last) == count_params(base)
    assert {k: v.shape for k, v in last.state_dict().items()} == {k: v.shape for k, v in base.state_dict().items()}
    known = [s.name for s in ROADMAP_B if s.paper_top1 is not None]
    assert known == ["ResNet-200", "ConvNeXt-B"]  # unknown cells stay unknown


@pytest.mark.parametrize("regime", [ROADMAP_T, ROADMAP_B], ids=["T", "B"])
def test_each_step_is_its_parent_plus_the_named_change(regime):
    assert regime[0].parent is None
    for step in list(regime)[1:]:
        parent = regime[step.parent]
        assert parent.kept and parent.index < step.index
        changed = parent.design.diff(step.design)
        assert set(changed) == set(step.changed) and changed, step.name
    assert regime["ReLU -> GELU"].parent == "kernel 7"  # built on the last kept kernel, not on 11
    assert regime["kernel 11"].parent == "kernel 7"


def test_blocks_have_the_norms_and_activations_the_design_names():
    def counts(step):
        with torch.device("meta"):
            block = build(step).stages[1][1]
        kinds = [type(m).__name__ for m in block.modules()]
        return kinds.count("BatchNorm2d") + kinds.count("LayerNorm2d"), block

    assert counts(ROADMAP_T["kernel 7"])[0] == 3
    n, block = counts(ROADMAP_T["fewer norms"])
    assert n == 1 and block.order == ("dwconv", "pwconv1", "pwconv2") and block.acts_after == {"pwconv1"}
    assert not block.act_after_add and isinstance(block.act, torch.nn.GELU)
    assert counts(ROADMAP_T["fewer activations"])[1].acts_after == {"pwconv1"}
    assert counts(ROADMAP_T["ReLU -> GELU"])[1].acts_after == {"dwconv", "pwconv1"}


def test_bad_design_is_refused():
    with pytest.raises(ValueError, match="norm must be one of"):
        Design(norm="gn")
    with pytest.raises(ValueError, match="equally long"):
        Design(depths=(1, 1), widths=(8, 16, 32))


def test_cli_prints_table_and_writes_figure(run_cli, tmp_path):
    png = tmp_path / "fig.png"
    sweep = tmp_path / "sweep"  # a finished sweep (fake accuracies): the CLI shows them beside the paper's
    run_sweep(SweepConfig(steps=(4,)), sweep, _fake_train([]), log=lambda s: None)
    r = run_cli("roadmap", "--figure", png, "--out", sweep)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    row = next(line for line in lines if line.split()[:2] == ["4", "depthwise"])
    assert "2.350" in row and "2.35" in row and " ok " in row and "84.00 +- 0.00 (n=1)" in row
    assert any("step 15 (BN -> LN)" in line and "4.46" in line for line in lines)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    h, w = matplotlib.image.imread(png).shape[:2]
    assert h > 400 and w > 400


def _fake_train(calls, fail_at=None):
    def train(step, design, seed, cfg, run_dir):
        if (step.index, seed) == fail_at:
            raise KeyboardInterrupt
        calls.append((step.index, seed, design.widths))
        return {"top1": 80.0 + step.index + seed}
    return train


def test_sweep_resumes_without_redoing_finished_steps(tmp_path):
    cfg = SweepConfig(steps=(0, 16), seeds=(0, 1), width=0.25)
    calls = []
    with pytest.raises(KeyboardInterrupt):  # interrupted in the middle of the sweep
        run_sweep(cfg, tmp_path, _fake_train(calls, fail_at=(16, 1)), log=lambda s: None)
    assert [c[:2] for c in calls] == [(0, 0), (0, 1), (16, 0)]
    assert calls[0][2] == (16, 32, 64, 128)  # ResNet-50's widths at a quarter

    calls.clear()
    summary = run_sweep(cfg, tmp_path, _fake_train(calls), log=lambda s: None)
    assert [c[:2] for c in calls] == [(16, 1)]  # only the unfinished run
    assert summary["ResNet-50"]["mean"] == 80.5 and math.isclose(summary["ResNet-50"]["std"], math.sqrt(0.5))
    assert summary["ConvNeXt-T"]["n"] == 2 and summary["ConvNeXt-T"]["mean"] == 96.5

    calls.clear()
    run_sweep(cfg, tmp_path, _fake_train(calls), log=lambda s: None)
    assert calls == []
    with pytest.raises(ValueError, match="other settings"):
        run_sweep(SweepConfig(steps=(0,), width=0.5), tmp_path, _fake_train(calls), log=lambda s: None)
    with pytest.raises(ValueError, match="steps are 0..16"):
        run_sweep(SweepConfig(steps=(17,)), tmp_path / "other", _fake_train(calls), log=lambda s: None)
    assert json.loads((tmp_path / "runs" / "16-convnext-t" / "seed1.json").read_text())["top1"] == 97.0
    assert summarize(tmp_path) == summary


def test_table_and_figure_show_measured_results(tmp_path, rows_t):
    rows = list(rows_t.values())
    measured = {"ResNet-50": {"mean": 90.1, "std": 0.3, "n": 3}, "ConvNeXt-T": {"mean": 91.4, "std": 0.2, "n": 3}}
    text = format_table(ROADMAP_T, rows, measured)
    assert "90.10 +- 0.30 (n=3)" in text and "4.456" in text
    path = draw_figure(ROADMAP_T, rows, tmp_path / "t.png", measured)
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_train_step_uses_the_engine_with_the_papers_ema_and_recipe_rules(tmp_path, monkeypatch):
    """What train_step hands the shared engine, per step (the engine itself is tested in test_train_engine)."""
    import convnext.train as engine
    from convnext.models.roadmap import RoadmapNet
    from convnext.roadmap import train_step

    seen = {}

    def fake_train(cfg, model=None, train_set=None, val_set=None, num_classes=None):
        seen.update(cfg=cfg, model=model, n_train=len(train_set), n_classes=num_classes)
        return engine.TrainResult(run_dir=str(tmp_path), final_top1=70.0, final_ema_top1=60.0, best_top1=71.0)

    monkeypatch.setattr(engine, "train", fake_train)
    cfg = SweepConfig(epochs=10, train_subset=300, val_subset=100)
    r0 = train_step(ROADMAP_T[0], cfg.design(ROADMAP_T[0]), 3, cfg, tmp_path / "s0")
    c = seen["cfg"]
    assert (c.run.ema, c.optim.epochs, c.data.reprob, c.data.label_smoothing, c.run.seed) == (False, 3, 0.0, 0.0, 3)
    assert r0["top1"] == 70.0 and seen["n_train"] == 300 and seen["n_classes"] == 10
    upsample, net = seen["model"]  # Fashion-MNIST's 28x28 resized to the sweep's 32 inside the model
    assert upsample.size == (32, 32) and isinstance(net, RoadmapNet) and net.design == cfg.design(ROADMAP_T[0])

    r16 = train_step(ROADMAP_T[16], cfg.design(ROADMAP_T[16]), 0, cfg, tmp_path / "s16")
    c = seen["cfg"]
    assert (c.run.ema, c.optim.epochs, c.data.reprob) == (True, 10, 0.25)
    assert r16["top1"] == 60.0 and r16["top1_no_ema"] == 70.0  # EMA model reported for the LN steps
    r14 = train_step(ROADMAP_T[14], cfg.design(ROADMAP_T[14]), 0, cfg, tmp_path / "s14")
    assert seen["cfg"].run.ema is False and r14["top1"] == 70.0  # last BatchNorm step: no EMA


def test_sweep_trains_for_real(tmp_path):
    """One step end to end on real Fashion-MNIST images with the shared engine (tiny: 2 optimizer steps)."""
    from convnext.roadmap import sweep_table, train_step

    cfg = SweepConfig(steps=(15,), epochs=1, width=0.125, train_subset=128, val_subset=64, batch_size=64)
    summary = run_sweep(cfg, tmp_path, train_step, log=lambda s: None)
    m = summary["BN -> LN"]
    assert list(summary) == ["BN -> LN"] and m["n"] == 1 and m["ema"]
    assert 0.0 <= m["mean"] <= 100.0 and 0.0 <= m["mean_no_ema"] <= 100.0
    assert (tmp_path / "runs" / "15-bn-ln" / "seed0" / "config.yaml").exists()  # the engine's own run record
    assert "| 15 | BN -> LN | 0.1" in sweep_table(cfg, summary)
