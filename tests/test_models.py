"""The model family: architecture, counts against the paper, backbone outputs, options."""

import pytest
import torch

import convnext
from convnext.flops import count_macs, count_params
from convnext.models import MODELS

# Paper Table 9 / official README, to the printed precision: params (M), GMACs 224, GMACs 384.
PAPER = {
    "convnext_tiny": (28.59, 4.46, 13.09),
    "convnext_small": (50.22, 8.68, 25.52),
    "convnext_base": (88.59, 15.35, 45.12),
    "convnext_large": (197.77, 34.36, 100.98),
    "convnext_xlarge": (350.20, 60.92, 179.03),
    "convnext_iso_small": (22.31, 4.29, None),
    "convnext_iso_base": (87.08, 16.90, None),
    "convnext_iso_large": (305.94, 59.70, None),
}


def meta_model(name, **kw):
    with torch.device("meta"):
        return convnext.create_model(name, **kw)


@pytest.mark.parametrize("name", PAPER)
def test_params_and_gmacs_match_the_paper(name):
    params, g224, g384 = PAPER[name]
    model = meta_model(name)
    assert round(count_params(model) / 1e6, 2) == pytest.approx(params, abs=1e-9)
    assert round(count_macs(model, 224) / 1e9, 2) == pytest.approx(g224, abs=1e-9)
    if g384 is not None:
        assert round(count_macs(model, 384) / 1e9, 2) == pytest.approx(g384, abs=1e-9)


def test_convnext_tiny_exact_counts():
    model = meta_model("convnext_tiny")
    assert count_params(model) == 28_589_128
    assert len(model.state_dict()) == 182
    assert count_macs(model, 224) * 2 == pytest.approx(8.911e9, rel=1e-4)


def test_official_state_dict_layout():
    keys = set(meta_model("convnext_tiny").state_dict())
    expected = {
        "downsample_layers.0.0.weight", "downsample_layers.0.1.weight", "downsample_layers.3.0.bias",
        "downsample_layers.3.1.weight", "stages.2.8.dwconv.weight", "stages.2.8.norm.weight",
        "stages.2.8.pwconv1.weight", "stages.2.8.pwconv2.bias", "stages.2.8.gamma", "norm.weight", "head.weight",
    }
    assert expected <= keys
    iso = set(meta_model("convnext_iso_small").state_dict())
    assert {"stem.weight", "blocks.17.dwconv.weight", "norm.bias", "head.bias"} <= iso
    assert not any(k.endswith("gamma") for k in iso)  # the paper trains iso-S/B without layer scale
    assert "blocks.35.gamma" in meta_model("convnext_iso_large").state_dict()


def test_block_shapes_follow_the_paper():
    model = meta_model("convnext_tiny")
    block = model.stages[1][0]
    assert block.dwconv.weight.shape == (192, 1, 7, 7) and block.dwconv.groups == 192
    assert block.pwconv1.weight.shape == (768, 192) and block.pwconv2.weight.shape == (192, 768)
    assert model.downsample_layers[0][0].kernel_size == (4, 4) and model.downsample_layers[0][0].stride == (4, 4)
    assert model.downsample_layers[2][1].kernel_size == (2, 2)


@pytest.mark.parametrize("size", [(32, 32), (64, 96), (100, 70)])
def test_any_input_size(size):
    model = convnext.create_model("convnext_atto", num_classes=7).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model(x)
    assert feats.shape == (2, 320, size[0] // 32, size[1] // 32)
    assert logits.shape == (2, 7)
    torch.testing.assert_close(logits, model.forward_head(feats))


def test_22k_head_and_head_init_scale():
    model = meta_model("convnext_tiny", num_classes=convnext.IN22K_CLASSES)
    assert model.head.weight.shape == (21841, 768)
    torch.manual_seed(0)
    full = convnext.create_model("convnext_atto")
    torch.manual_seed(0)
    scaled = convnext.create_model("convnext_atto", head_init_scale=0.001)
    torch.testing.assert_close(scaled.head.weight, full.head.weight * 0.001)
    torch.testing.assert_close(scaled.stages[0][0].pwconv1.weight, full.stages[0][0].pwconv1.weight)


def test_init_follows_the_official_code():
    model = convnext.create_model("convnext_tiny")
    w = model.stages[2][0].pwconv1.weight
    assert w.std().item() == pytest.approx(0.02, rel=0.05)
    assert w.abs().max().item() <= 2.0  # truncated normal with absolute bounds [-2, 2]
    assert model.stages[2][0].pwconv1.bias.abs().sum() == 0
    torch.testing.assert_close(model.stages[3][2].gamma, torch.full((768,), 1e-6))
    assert model.stages[3][2].norm.eps == 1e-6 and model.downsample_layers[1][0].eps == 1e-6


def test_stochastic_depth_grows_linearly():
    model = meta_model("convnext_tiny", drop_path_rate=0.1)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for s in model.stages for b in s]
    assert len(rates) == 18
    expected = torch.linspace(0, 0.1, 18).tolist()
    assert rates == pytest.approx(expected)


def test_layer_scale_switch():
    assert meta_model("convnext_atto", layer_scale_init_value=0).stages[0][0].gamma is None
    assert convnext.create_model("convnext_atto", layer_scale_init_value=0.5).stages[0][0].gamma[0].item() == 0.5


def test_backbone_outputs_strides_and_norms():
    backbone = convnext.create_model("convnext_atto", features_only=True).eval()
    keys = set(backbone.state_dict())
    assert {"norm0.weight", "norm3.bias"} <= keys and not any(k.startswith(("head", "norm.")) for k in keys)
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        outs = backbone(x)
    assert [o.shape for o in outs] == [
        (1, 40, 16, 32), (1, 80, 8, 16), (1, 160, 4, 8), (1, 320, 2, 4)
    ]
    # Each output is its stage's map through its own LayerNorm: per-pixel channel mean 0 (norm weights 1, bias 0).
    for o in outs:
        assert o.mean(1).abs().max().item() < 1e-4
    subset = convnext.create_model("convnext_atto", features_only=True, out_indices=(1, 3)).eval()
    subset.load_state_dict({k: v for k, v in backbone.state_dict().items() if not k.startswith(("norm0", "norm2"))})
    with torch.no_grad():
        two = subset(x)
    torch.testing.assert_close(two[0], outs[1])
    torch.testing.assert_close(two[1], outs[3])
    assert [f["reduction"] for f in subset.feature_info] == [8, 32]


def test_backbone_matches_classifier_trunk():
    torch.manual_seed(1)
    model = convnext.create_model("convnext_atto").eval()
    backbone = convnext.create_model("convnext_atto", features_only=True, out_indices=(3,)).eval()
    missing, unexpected = backbone.load_state_dict(model.state_dict(), strict=False)
    assert set(missing) == {"norm3.weight", "norm3.bias"} and set(unexpected) == {
        "norm.weight", "norm.bias", "head.weight", "head.bias"}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = backbone.norm3(model.forward_features(x))
        torch.testing.assert_close(backbone(x)[0], ref)


@pytest.mark.parametrize("name", ["convnext_atto", "convnext_iso_small"])
def test_gradient_checkpointing_gives_same_output_and_grads(name):
    kw = {"depth": 2} if "iso" in name else {"depths": (1, 1, 2, 1)}
    model = convnext.create_model(name, num_classes=5, **kw)
    x = torch.randn(2, 3, 64, 64)
    model(x).square().sum().backward()
    ref = [p.grad.clone() for p in model.parameters()]
    out_ref = model(x).detach()
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out = model(x)
    out.square().sum().backward()
    torch.testing.assert_close(out.detach(), out_ref)
    for g, p in zip(ref, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, g)


def test_create_model_optimizes_unless_asked_not_to():
    from convnext.fast import FastBlock
    from convnext.models import Block

    assert {type(b) for s in convnext.create_model("convnext_atto").stages for b in s} == {FastBlock}
    assert {type(b) for s in convnext.create_model("convnext_atto", optimize=False).stages for b in s} == {Block}


def test_layer_groups_follow_the_official_scheme_and_generalise():
    base = meta_model("convnext_base")
    assert base.num_layer_groups == 12
    g = base.layer_group
    assert [g("downsample_layers.0.0.weight"), g("stages.0.2.gamma"), g("downsample_layers.1.1.weight"),
            g("stages.1.0.dwconv.weight"), g("downsample_layers.2.0.bias"), g("stages.2.26.pwconv1.weight"),
            g("downsample_layers.3.1.weight"), g("stages.3.0.norm.bias"), g("head.weight")] == \
        [0, 1, 2, 2, 3, 11, 12, 12, 13]
    tiny = meta_model("convnext_tiny")
    groups = sorted({tiny.layer_group(n) for n, _ in tiny.named_parameters()})
    assert groups == list(range(tiny.num_layer_groups + 2)) == list(range(8))  # no gaps for T
    iso = meta_model("convnext_iso_small")
    assert [iso.layer_group("stem.weight"), iso.layer_group("blocks.4.pwconv1.weight"),
            iso.layer_group("head.bias")] == [0, 5, 19]


def test_reset_classifier():
    model = convnext.create_model("convnext_atto")
    model.reset_classifier(3)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 320)


def test_unknown_model_suggests_names():
    with pytest.raises(ValueError, match="convnext_tiny"):
        convnext.create_model("convnext_tinny")
    assert convnext.list_models("convnext_iso*") == ["convnext_iso_small", "convnext_iso_base", "convnext_iso_large"]
    assert set(convnext.list_models()) == set(MODELS)


def test_models_command_prints_counts_beside_the_paper(run_cli):
    out = run_cli("models", "convnext_tiny")
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if line.startswith("convnext_tiny"))
    assert row.split()[1:7] == ["28.59", "28.59", "4.46", "4.46", "13.09", "13.09"]
