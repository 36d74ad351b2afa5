"""ConvNeXt V2 weights in every layout in circulation: the official classifier, the official FCMAE pretraining
checkpoint (its encoder), the released FCMAE encoders, timm's convnextv2_* and HF's ConvNextV2*. Each loads through
the same API as V1 with the peer's own logits, converts to every other layout and back exactly, and the official
release table downloads (from files served on 127.0.0.1) as V1's does."""

import hashlib

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models.convnext import checkpoint_filter_fn

import convnext
from checkpoint_helpers import randomize, serve_directory
from convnext.checkpoints import (
    CheckpointError,
    convert,
    detect_layout,
    from_official,
    infer_config,
    load_state_dict,
    to_official,
)
from convnext.checkpoints.pretrained import RELEASES, URL_ENV, Release, find_release, release_url
from convnext.pretrain import build_fcmae, encoder_state_dict

# small models: one thread avoids OpenMP oversubscription on the shared test machine (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-4
SMALL = {"depths": (1, 1, 2, 1), "dims": (16, 32, 48, 64)}


@pytest.fixture(scope="module")
def atto():
    return randomize(convnext.create_model("convnextv2_atto"))


def _official_fcmae(model) -> dict:
    """What the official main_pretrain.py saves for `model`'s encoder: the sparse encoder, a decoder, training state."""
    encoder = {k: v for k, v in model.state_dict().items() if not k.startswith(("norm.", "head."))}
    sd = from_official(encoder, "fcmae")
    c = model.dims[-1]
    g = torch.Generator().manual_seed(3)
    sd |= {"mask_token": torch.randn(1, 512, 1, 1, generator=g), "proj.weight": torch.randn(512, c, 1, 1),
           "proj.bias": torch.zeros(512), "decoder.0.grn.gamma": torch.zeros(1, 1, 1, 2048),
           "pred.weight": torch.randn(3072, 512, 1, 1), "pred.bias": torch.zeros(3072)}
    return {"model": sd, "epoch": 1599, "optimizer": {"state": {}, "param_groups": []}}


def test_timm_weights_give_timm_logits_both_ways(tmp_path):
    # timm's convnextv2_atto..nano keep their MLP as 1x1 convs (conv_mlp=True) and GRN channels-first, tiny and up
    # Linear layers and GRN channels-last: both forms, on the small model.
    x = torch.randn(2, 3, 64, 64)
    for conv_mlp in (True, False):
        peer = randomize(timm.create_model("convnextv2_atto", pretrained=False, conv_mlp=conv_mlp))
        save_file(peer.state_dict(), tmp_path / "timm.safetensors")
        ours = convnext.create_model("convnextv2_atto", pretrained=str(tmp_path / "timm.safetensors")).eval()
        with torch.no_grad():
            assert (ours(x) - peer(x)).abs().max() <= TOL

        randomize(ours, 0.05)
        peer.load_state_dict(from_official(ours.state_dict(), "timm", conv_mlp=conv_mlp))
        with torch.no_grad():
            assert (ours(x) - peer(x)).abs().max() <= TOL


def test_official_classifier_file_gives_timms_logits(tmp_path, atto):
    # The official release format ({"model": state_dict}, GRN (1, 1, 1, 4C)) read by us, and by timm's own converter
    torch.save({"model": atto.state_dict()}, tmp_path / "convnextv2_atto_1k_224_ema.pt")
    ours = convnext.load(tmp_path / "convnextv2_atto_1k_224_ema.pt").eval()
    assert ours.config["model"] == "convnextv2_atto" and ours.config["num_classes"] == 1000
    peer = timm.create_model("convnextv2_atto", pretrained=False)
    peer.load_state_dict(checkpoint_filter_fn({"model": atto.state_dict()}, peer))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (ours(x) - peer.eval()(x)).abs().max() <= TOL


def test_hf_weights_give_hf_logits_both_ways(tmp_path):
    from transformers import ConvNextV2Config, ConvNextV2ForImageClassification

    config = ConvNextV2Config(depths=[1, 1, 2, 1], hidden_sizes=[16, 32, 64, 128], num_labels=10)
    peer = randomize(ConvNextV2ForImageClassification(config))
    peer.save_pretrained(tmp_path / "hf")
    ours = convnext.load(tmp_path / "hf").eval()
    assert ours.config["model"] == "convnextv2_tiny" and ours.config["use_grn"] is True
    assert ours.config["depths"] == (1, 1, 2, 1) and ours.config["num_classes"] == 10
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (ours(x) - peer(x).logits).abs().max() <= TOL
    # ConvNextV2Model (no classifier) has no "convnextv2." prefix: read too
    trunk = to_official(peer.convnextv2.state_dict())
    assert trunk.keys() == ours.state_dict().keys() - {"head.weight", "head.bias"}
    assert all(torch.equal(v, ours.state_dict()[k]) for k, v in trunk.items())

    randomize(ours, 0.05)
    convnext.save(ours, tmp_path / "ours")
    convert(tmp_path / "ours", tmp_path / "hf_back", "hf")
    back = ConvNextV2ForImageClassification.from_pretrained(tmp_path / "hf_back").eval()
    assert back.config.model_type == "convnextv2" and back.config.layer_norm_eps == 1e-6
    with torch.no_grad():
        assert (ours(x) - back(x).logits).abs().max() <= TOL


def test_official_fcmae_checkpoint_loads_its_encoder(tmp_path, atto):
    torch.save(_official_fcmae(atto), tmp_path / "checkpoint-1599.pth")
    raw = torch.load(tmp_path / "checkpoint-1599.pth")["model"]
    assert detect_layout(raw) == "fcmae"
    # MinkowskiEngine's shapes, as the official fine-tuning's remap_checkpoint_keys reads them
    assert raw["encoder.downsample_layers.1.1.kernel"].shape == (4, 40, 80)
    assert raw["encoder.stages.0.0.dwconv.kernel"].shape == (49, 40)
    assert raw["encoder.stages.0.0.dwconv.bias"].shape == (1, 40)
    assert raw["encoder.stages.0.0.grn.gamma"].shape == (1, 160)
    assert "encoder.stages.0.0.norm.ln.weight" in raw and "encoder.stages.0.0.pwconv1.linear.weight" in raw

    with pytest.warns(UserWarning, match="encoder without final norm and head.*final norm and 10-class head"):
        model = convnext.create_model("convnextv2_atto", pretrained=str(tmp_path / "checkpoint-1599.pth"),
                                      num_classes=10, head_init_scale=0.001)
    for k, v in atto.state_dict().items():
        if not k.startswith(("norm.", "head.")):
            assert torch.equal(model.state_dict()[k], v), k
    assert model.head.weight.shape == (10, 320) and model.head.weight.abs().max() < 1e-3  # fresh, scaled
    assert torch.equal(model.norm.weight, torch.ones(320))
    with pytest.warns(UserWarning, match="its final norm keeps"):
        pooled = convnext.load(tmp_path / "checkpoint-1599.pth")  # architecture from the shapes, no head
    assert pooled.config["model"] == "convnextv2_atto" and pooled.num_classes == 0
    assert encoder_state_dict(tmp_path / "checkpoint-1599.pth").keys() == {
        k for k in atto.state_dict() if not k.startswith(("norm.", "head."))}


def test_sparse_kernels_map_as_the_official_finetuning_reads_them(atto):
    # remap_checkpoint_keys: (k*k, in, out) -> permute(2, 1, 0) -> (out, in, k, k) -> swap the last two axes, so the
    # dense weight at (o, i, row y, column x) is the kernel's offset x * k + y; depthwise (k*k, C) likewise
    sd = from_official({k: v for k, v in atto.state_dict().items() if not k.startswith(("norm.", "head."))},
                       "fcmae")
    down, kernel = atto.state_dict()["downsample_layers.2.1.weight"], sd["encoder.downsample_layers.2.1.kernel"]
    dw, dw_kernel = atto.state_dict()["stages.1.0.dwconv.weight"], sd["encoder.stages.1.0.dwconv.kernel"]
    for o, i, y, x in ((0, 0, 0, 1), (5, 7, 1, 0), (159, 79, 1, 1)):
        assert down[o, i, y, x] == kernel[x * 2 + y, i, o]
    for c, y, x in ((0, 0, 6), (3, 6, 0), (79, 2, 5)):
        assert dw[c, 0, y, x] == dw_kernel[x * 7 + y, c]
    back = to_official(sd, "fcmae")
    assert all(torch.equal(back[k], v) for k, v in atto.state_dict().items() if k in back)


def test_released_fcmae_encoder_gives_timms_features(tmp_path, atto):
    # pt_only/*_fcmae.pt: dense classifier keys without norm and head (users' reports; timm loads them with
    # num_classes=0, non-strict). GRN in either shape seen: (1, 1, 1, 4C) or (1, 4C).
    encoder = {k: v for k, v in atto.state_dict().items() if not k.startswith(("norm.", "head."))}
    x = torch.randn(2, 3, 64, 64)
    for grn_shape in ((1, 1, 1, -1), (1, -1)):
        sd = {k: v.reshape(grn_shape) if ".grn." in k else v for k, v in encoder.items()}
        path = tmp_path / "convnextv2_atto_1k_224_fcmae.pt"
        torch.save({"model": sd}, path)
        with pytest.warns(UserWarning, match="FCMAE pretraining weights"):
            ours = convnext.create_model("convnextv2_atto", pretrained=str(path))
        peer = timm.create_model("convnextv2_atto", pretrained=False, num_classes=0)
        missing, _ = peer.load_state_dict(checkpoint_filter_fn({"model": sd}, peer), strict=False)
        assert set(missing) == {"head.norm.weight", "head.norm.bias"}
        with torch.no_grad():
            assert (ours.eval().forward_features(x) - peer.eval().forward_features(x)).abs().max() <= TOL


def test_our_fcmae_model_converts_to_a_classifier(tmp_path):
    torch.manual_seed(0)
    fcmae = build_fcmae("convnextv2_atto", decoder_embed_dim=32, **SMALL)
    randomize(fcmae)
    torch.save({"model": fcmae.state_dict()}, tmp_path / "fcmae.pth")
    assert detect_layout(fcmae.state_dict()) == "fcmae"
    weights = encoder_state_dict(tmp_path / "fcmae.pth")
    model = convnext.create_model("convnextv2_atto", num_classes=0, optimize=False, **SMALL).eval()
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert set(missing) == {"norm.weight", "norm.bias"} and not unexpected
    # unmasked, the pretraining encoder computes exactly what the reference classifier's trunk computes
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        dense = fcmae.forward_encoder(x, torch.zeros(2, 4))
        assert torch.equal(dense, model.forward_features(x))
    with pytest.raises(ValueError, match="not a ConvNeXt V2"):
        encoder_state_dict(convnext.create_model("convnext_atto").state_dict())


@pytest.mark.parametrize("layout", ["official", "timm", "hf", "fcmae"])
def test_round_trips_are_exact(tmp_path, layout, atto):
    sd = atto.state_dict()
    if layout == "fcmae":  # an encoder: no final norm, no head
        sd = {k: v for k, v in sd.items() if not k.startswith(("norm.", "head."))}
    foreign = from_official(sd, layout, conv_mlp=True)
    assert detect_layout(foreign) == layout
    for suffix in (".pth", ".safetensors"):
        path = tmp_path / f"w{suffix}"
        torch.save(foreign, path) if suffix == ".pth" else save_file(foreign, path)
        back = load_state_dict(path)
        assert back.keys() == sd.keys()
        assert all(torch.equal(back[k], sd[k]) and back[k].dtype == sd[k].dtype for k in sd)


def test_convert_chain_through_every_layout_is_exact(tmp_path, atto):
    convnext.save(atto, tmp_path / "start")
    src = tmp_path / "start"
    for i, (layout, name) in enumerate([("timm", "t.pth"), ("hf", "hf"), ("official", "o.safetensors"),
                                        ("official", "o.pth"), ("safetensors", "end")]):
        dst = tmp_path / f"{i}_{name}"
        convert(src, dst, layout, conv_mlp=True)
        src = dst
    end = convnext.load(src)
    assert end.config["model"] == "convnextv2_atto"
    assert all(torch.equal(end.state_dict()[k], v) for k, v in atto.state_dict().items())


def test_v1_and_v2_of_the_same_size_are_told_apart(tmp_path, atto):
    assert infer_config(atto.state_dict()) == {"model": "convnextv2_atto", "num_classes": 1000}
    v1 = convnext.create_model("convnext_atto").state_dict()
    assert infer_config(v1) == {"model": "convnext_atto", "num_classes": 1000}
    torch.save({"model": atto.state_dict()}, tmp_path / "v2.pth")
    with pytest.raises(CheckpointError, match="looks like convnextv2_atto.*ConvNeXt V2 \\(GRN\\) blocks"):
        convnext.create_model("convnext_atto", pretrained=str(tmp_path / "v2.pth"))


def test_layouts_without_v2_or_a_head_say_so(tmp_path, atto):
    torch.save({"model": atto.state_dict()}, tmp_path / "v2.pth")
    with pytest.raises(CheckpointError, match="torchvision has no ConvNeXt V2"):
        convert(tmp_path / "v2.pth", tmp_path / "tv.pth", "torchvision")
    with pytest.raises(CheckpointError, match="no equivalent in an FCMAE encoder.*norm.weight"):
        convert(tmp_path / "v2.pth", tmp_path / "fcmae.pth", "fcmae")


def test_convert_cli_writes_a_timm_file_timm_loads(run_cli, tmp_path, atto):
    convnext.save(atto, tmp_path / "ours")
    proc = run_cli("convert", tmp_path / "ours", tmp_path / "timm.safetensors", "--to", "timm", "--timm-conv-mlp")
    assert proc.returncode == 0, proc.stderr
    peer = timm.create_model("convnextv2_atto", pretrained=False, checkpoint_path=str(tmp_path / "timm.safetensors"))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (peer.eval()(x) - atto(x)).abs().max() <= TOL


def test_release_table_follows_the_official_v2_readme():
    base = "https://dl.fbaipublicfiles.com/convnext/convnextv2/"
    assert release_url(find_release("convnextv2_tiny", True)) == base + "im1k/convnextv2_tiny_1k_224_ema.pt"
    assert release_url(find_release("convnextv2_atto", "fcmae")) == base + "pt_only/convnextv2_atto_1k_224_fcmae.pt"
    assert find_release("convnextv2_base", "fcmae_ft_in22k_in1k_384").file == \
        "convnextv2/im22k/convnextv2_base_22k_384_ema.pt"
    assert find_release("convnextv2_huge", "fcmae_ft_in22k_in1k_512").file == \
        "convnextv2/im22k/convnextv2_huge_22k_512_ema.pt"
    assert find_release("convnextv2_nano", "fcmae_ft_in22k_in1k").num_classes == 1000  # 22K -> 1K fine-tuned
    assert find_release("convnextv2_pico", "fcmae").num_classes == 0
    assert list(RELEASES["convnextv2_huge"]) == ["fcmae_ft_in1k", "fcmae_ft_in22k_in1k_384",
                                                 "fcmae_ft_in22k_in1k_512", "fcmae"]  # no 224 22K Huge
    assert list(RELEASES["convnextv2_femto"]) == ["fcmae_ft_in1k", "fcmae"]
    files = [r.file for tags in RELEASES.values() for r in tags.values() if r.file.startswith("convnextv2/")]
    assert len(files) == len(set(files)) == 8 + 8 + 10  # the README's three tables
    assert all(r.sha256 is None for tags in RELEASES.values() for r in tags.values())  # none are published
    with pytest.raises(ValueError, match="Unknown pretrained tag 'in1k' for convnextv2_tiny.*fcmae_ft_in1k"):
        convnext.create_model("convnextv2_tiny", pretrained="in1k")


def test_v2_releases_download_from_a_local_server(tmp_path, monkeypatch, atto):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    served = tmp_path / "served"
    release = {tag: find_release("convnextv2_atto", tag) for tag in ("fcmae_ft_in1k", "fcmae")}
    for r in release.values():
        (served / r.file).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": atto.state_dict()}, served / release["fcmae_ft_in1k"].file)
    torch.save(_official_fcmae(atto), served / release["fcmae"].file)
    data = (served / release["fcmae_ft_in1k"].file).read_bytes()
    monkeypatch.setitem(RELEASES, "convnextv2_atto", {  # as the table would be with a published size and hash
        "fcmae_ft_in1k": Release(release["fcmae_ft_in1k"].file, size=len(data),
                                 sha256=hashlib.sha256(data).hexdigest()),
        "fcmae": release["fcmae"]})
    with serve_directory(served) as url:
        monkeypatch.setenv(URL_ENV, url)
        model = convnext.create_model("convnextv2_atto", pretrained=True)
        with pytest.warns(UserWarning, match="FCMAE pretraining weights"):
            encoder = convnext.create_model("convnextv2_atto", pretrained="fcmae")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in atto.state_dict().items())
    assert encoder.num_classes == 0 and torch.equal(encoder.stages[3][1].grn.gamma, atto.stages[3][1].grn.gamma)
