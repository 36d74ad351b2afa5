"""Per-stage GMACs and params: they add up, match the paper, and count fused kernels like the reference."""

import pytest

from convnext import create_model
from convnext.benchmark import build_for_counting
from convnext.fast import FastBlock
from convnext.flops import count_macs, count_params, stage_breakdown


@pytest.mark.parametrize(("name", "features"), [("convnext_tiny", False), ("convnext_iso_small", False),
                                                ("convnext_tiny", True)])
def test_stages_sum_to_total(name, features):
    model = build_for_counting(name, features=features)
    sizes = [(224, 224), (800, 1280), (512, 2048)]
    rows = stage_breakdown(model, sizes)
    *stages, total = rows
    assert total["stage"] == "total"
    assert sum(r["params"] for r in stages) == total["params"] == count_params(model)
    for i in range(len(sizes)):
        assert sum(r["macs"][i] for r in stages) == total["macs"][i]
        assert all(r["macs"][i] >= 0 for r in stages)
    # MACs of the convolutional part grow with the pixel count
    assert total["macs"][1] > 15 * total["macs"][0]


def test_convnext_tiny_matches_the_paper():
    rows = {r["stage"]: r for r in stage_breakdown(build_for_counting("convnext_tiny"), [224, 384])}
    assert [k for k in rows] == ["stem", "stage0", "stage1", "stage2", "stage3", "head", "total"]
    assert rows["total"]["params"] == 28_589_128  # reference/paper.md: ConvNeXt-T exact
    assert round(rows["total"]["macs"][0] / 1e9, 3) == 4.456
    assert round(rows["total"]["macs"][1] / 1e9, 2) == 13.09  # paper: 13.1 at 384
    # stage 2 holds 9 of the 18 blocks at 14x14 and costs about half of the model
    assert 0.45 < rows["stage2"]["macs"][0] / rows["total"]["macs"][0] < 0.5


def test_peers_match_the_paper():
    assert round(count_macs(build_for_counting("tv:resnet50")) / 1e9, 2) == 4.09
    assert round(count_macs(build_for_counting("timm:swin_tiny_patch4_window7_224")) / 1e9, 2) == 4.49


def test_optimized_model_counts_like_the_reference():
    kwargs = dict(depths=(1, 1, 2, 1), dims=(16, 32, 48, 64))
    optimized = create_model("convnext_atto", **kwargs)
    reference = create_model("convnext_atto", optimize=False, **kwargs)
    assert count_macs(optimized, 64) == count_macs(reference, 64) > 0
    assert isinstance(optimized.stages[0][0], FastBlock)  # counted through the reference ops, then restored


def test_flops_cli(run_cli):
    out = run_cli("flops", "convnext_tiny", "--size", "224", "1280x800")
    assert out.returncode == 0, out.stderr
    assert "GMACs 1280x800" in out.stdout
    total = next(line for line in out.stdout.splitlines() if line.startswith("| total"))
    assert "| 28.589 | 4.456 |" in total


def test_flops_cli_rejects_a_bad_size(capsys):
    from convnext.cli import main

    with pytest.raises(SystemExit):
        main(["flops", "convnext_tiny", "--size", "big"])
    assert "1280x800" in capsys.readouterr().err


def test_flops_cli_counts_downstream_models_at_the_papers_sizes(capsys):
    from convnext.cli import main

    assert main(["flops", "upernet_convnext_tiny"]) == 0
    fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in capsys.readouterr().out.splitlines()
                                                if ":" in line)}
    assert fields["size"] == "512x2048"
    assert float(fields["gmacs"]) == pytest.approx(939, rel=0.01)  # paper Table 4: 939G
    assert main(["flops", "upernet_convnext_tiny", "--size", "512"]) == 0
    fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in capsys.readouterr().out.splitlines()
                                                if ":" in line)}
    assert fields["paper_gmacs"] == "-" and float(fields["gmacs"]) < 939 / 3
