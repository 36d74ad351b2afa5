"""Weights made by timm, torchvision and HF transformers, converted into ours, give the peers' logits; ours
converted into theirs give ours; every round trip is exact."""

import argparse

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

import convnext
from checkpoint_helpers import randomize
from convnext.checkpoints import (
    CheckpointError,
    convert,
    detect_layout,
    from_official,
    infer_config,
    load_state_dict,
    to_official,
)

TOL = 1e-4


@pytest.fixture(scope="module")
def atto():
    return randomize(convnext.create_model("convnext_atto"))


def test_timm_weights_give_timm_logits_both_ways(tmp_path):
    # timm's convnext_atto stores its MLP as 1x1 convs (conv_mlp=True), convnext_tiny and up as Linear layers:
    # both forms, on the small model.
    x = torch.randn(2, 3, 64, 64)
    name = "convnext_atto"
    for conv_mlp in (True, False):
        peer = randomize(timm.create_model(name, pretrained=False, conv_mlp=conv_mlp))
        save_file(peer.state_dict(), tmp_path / f"{name}.safetensors")
        ours = convnext.create_model(name, pretrained=str(tmp_path / f"{name}.safetensors")).eval()
        with torch.no_grad():
            assert (ours(x) - peer(x)).abs().max() <= TOL

        randomize(ours, 0.05)
        peer.load_state_dict(from_official(ours.state_dict(), "timm", conv_mlp=conv_mlp))
        with torch.no_grad():
            assert (ours(x) - peer(x)).abs().max() <= TOL


def test_torchvision_weights_give_torchvision_logits_both_ways(tmp_path):
    peer = randomize(torchvision.models.convnext_tiny(weights=None))
    torch.save(peer.state_dict(), tmp_path / "tv.pth")
    ours = convnext.load(tmp_path / "tv.pth").eval()  # architecture inferred from the shapes
    assert ours.config["model"] == "convnext_tiny"
    x = torch.randn(1, 3, 224, 224)  # the paper's size, once
    with torch.no_grad():
        assert (ours(x) - peer(x)).abs().max() <= TOL

    x = x[..., :64, :64]
    with torch.no_grad():  # new weights for the way back (cheaper than a new random model at this size)
        for name, p in ours.named_parameters():
            p.neg_() if name.endswith("gamma") else p.add_(0.01)
    peer.load_state_dict(from_official(ours.state_dict(), "torchvision"))
    with torch.no_grad():
        assert (ours(x) - peer(x)).abs().max() <= TOL


def test_hf_weights_give_hf_logits_both_ways(tmp_path):
    from transformers import ConvNextConfig, ConvNextForImageClassification

    # HF's default final-LN eps (1e-12) is kept here: ours uses 1e-6 and the logits still agree.
    config = ConvNextConfig(depths=[1, 1, 2, 1], hidden_sizes=[16, 32, 64, 128], num_labels=10)
    peer = randomize(ConvNextForImageClassification(config))
    peer.save_pretrained(tmp_path / "hf")
    ours = convnext.load(tmp_path / "hf").eval()
    assert ours.config["depths"] == (1, 1, 2, 1) and ours.config["num_classes"] == 10
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (ours(x) - peer(x).logits).abs().max() <= TOL
    # ConvNextModel (no classifier) drops the "convnext." prefix: read too.
    trunk = to_official(peer.convnext.state_dict())
    assert trunk.keys() == ours.state_dict().keys() - {"head.weight", "head.bias"}
    assert all(torch.equal(v, ours.state_dict()[k]) for k, v in trunk.items())

    randomize(ours, 0.05)
    convnext.save(ours, tmp_path / "ours")
    convert(tmp_path / "ours", tmp_path / "hf_back", "hf")
    back = ConvNextForImageClassification.from_pretrained(tmp_path / "hf_back").eval()
    assert back.config.layer_norm_eps == 1e-6
    with torch.no_grad():
        assert (ours(x) - back(x).logits).abs().max() <= TOL


@pytest.mark.parametrize("layout", ["official", "timm", "torchvision", "hf"])
def test_round_trips_are_exact(tmp_path, layout, atto):
    sd = atto.state_dict()
    foreign = from_official(sd, layout, conv_mlp=True)
    assert detect_layout(foreign) == layout
    for suffix in (".pth", ".safetensors"):
        path = tmp_path / f"w{suffix}"
        torch.save(foreign, path) if suffix == ".pth" else save_file(foreign, path)
        back = load_state_dict(path)
        assert back.keys() == sd.keys()
        assert all(torch.equal(back[k], sd[k]) and back[k].dtype == sd[k].dtype for k in sd)


def test_convert_chain_through_every_layout_is_exact(tmp_path, atto):
    model = atto
    convnext.save(model, tmp_path / "start")
    src = tmp_path / "start"
    for i, (layout, name) in enumerate([("timm", "t.pth"), ("torchvision", "tv.safetensors"), ("hf", "hf"),
                                        ("official", "o.pth"), ("safetensors", "end")]):
        dst = tmp_path / f"{i}_{name}"
        _, read_layout = convert(src, dst, layout, conv_mlp=True)
        src = dst
    end = convnext.load(src)
    assert end.config["model"] == "convnext_atto"
    for k, v in model.state_dict().items():
        assert torch.equal(end.state_dict()[k], v), k


def test_official_training_checkpoint_and_its_ema(tmp_path, atto):
    model = randomize(convnext.create_model("convnext_atto", depths=(1, 1, 1, 1), dims=(8, 16, 32, 64)))
    ema = randomize(convnext.create_model("convnext_atto", depths=(1, 1, 1, 1), dims=(8, 16, 32, 64)), 0.2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(1, 3, 32, 32)).sum().backward()
    opt.step()  # an optimizer state with tensors, as in a real training checkpoint
    torch.save({"model": model.state_dict(), "model_ema": ema.state_dict(), "optimizer": opt.state_dict(),
                "epoch": 299, "scaler": {"scale": 65536.0, "_growth_tracker": 10},
                "args": argparse.Namespace(model="convnext_atto", lr=4e-3, drop_path=0.1, data_set="IMNET")},
               tmp_path / "checkpoint-299.pth")
    for key, expected in ((None, model), ("model_ema", ema)):
        sd = load_state_dict(tmp_path / "checkpoint-299.pth", key=key)
        assert all(torch.equal(sd[k], v) for k, v in expected.state_dict().items())
    with pytest.raises(CheckpointError, match="has no 'ema'.*model_ema"):
        load_state_dict(tmp_path / "checkpoint-299.pth", key="ema")


def test_ddp_prefix_and_official_wrapper_are_unwrapped(tmp_path, atto):
    model = atto
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "ddp.pth")
    sd = load_state_dict(tmp_path / "ddp.pth")
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())


def test_isotropic_lives_in_the_official_layout_only(tmp_path):
    model = randomize(convnext.create_model("convnext_iso_small", depth=2, dim=32, num_classes=5))
    torch.save({"model": model.state_dict()}, tmp_path / "iso.pth")
    cfg = infer_config(load_state_dict(tmp_path / "iso.pth"))
    assert cfg == {"model": "convnext_iso_small", "depth": 2, "dim": 32, "num_classes": 5}
    back = convnext.load(tmp_path / "iso.pth")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
    with pytest.raises(CheckpointError, match="no timm equivalent"):
        convert(tmp_path / "iso.pth", tmp_path / "iso_timm.pth", "timm")


def test_detection_backbone_files_load_into_features_only(tmp_path):
    backbone = randomize(convnext.create_model("convnext_atto", features_only=True))
    torch.save({"model": backbone.state_dict()}, tmp_path / "det.pth")  # official: norm0..norm3, no head
    loaded = convnext.create_model("convnext_atto", pretrained=str(tmp_path / "det.pth"), features_only=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(loaded(x), backbone(x), strict=True))
    with pytest.raises(CheckpointError, match="detection/segmentation backbone.*features_only=True"):
        convnext.create_model("convnext_atto", pretrained=str(tmp_path / "det.pth"))


def test_classifier_weights_load_into_a_backbone_with_a_note(tmp_path, atto):
    model = atto
    convnext.save(model, tmp_path / "cls")
    with pytest.warns(UserWarning, match="norm0, norm1, norm2, norm3 keep their initialisation"):
        backbone = convnext.create_model("convnext_atto", pretrained=str(tmp_path / "cls"), features_only=True)
    for k, v in backbone.state_dict().items():
        if not k.startswith("norm"):
            assert torch.equal(v, model.state_dict()[k]), k
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        last = backbone(x)[-1]
        expected = backbone.norm3(model.forward_features(x))
    assert torch.equal(last, expected)
    convnext.save(backbone, tmp_path / "bb")  # a saved backbone reloads as a backbone
    again = convnext.load(tmp_path / "bb")
    with torch.no_grad():
        assert torch.equal(again(x)[-1], last)


def test_unknown_layouts_are_named():
    with pytest.raises(CheckpointError, match="Cannot tell which ConvNeXt layout.*conv1.weight"):
        detect_layout(["conv1.weight", "bn1.weight"])


def test_convert_cli_writes_a_timm_file_timm_loads(run_cli, tmp_path, atto):
    convnext.save(atto, tmp_path / "ours")
    proc = run_cli("convert", tmp_path / "ours", tmp_path / "timm.safetensors", "--to", "timm", "--timm-conv-mlp")
    assert proc.returncode == 0, proc.stderr
    assert "(official layout) ->" in proc.stdout and "(timm)" in proc.stdout
    peer = timm.create_model("convnext_atto", pretrained=False, checkpoint_path=str(tmp_path / "timm.safetensors"))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (peer.eval()(x) - atto(x)).abs().max() <= TOL



def test_convert_cli_error_names_the_file(tmp_path, capsys):
    from convnext.cli import main

    assert main(["convert", str(tmp_path / "missing.pth"), str(tmp_path / "out.pth"), "--to", "official"]) == 2
    assert "error: Checkpoint not found: " in capsys.readouterr().err
