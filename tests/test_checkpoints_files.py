"""Our format, the security policy (no pickled code ever runs), truncated files, and the errors a wrong
file gets: they name the offending keys and the likely cause."""

import pickle

import pytest
import torch
from safetensors.torch import save_file

import convnext
from checkpoint_helpers import randomize
from convnext.checkpoints import CheckpointError, UnsafeCheckpointError, load_checked, load_state_dict, read_checkpoint


@pytest.fixture(scope="module")
def atto():
    return randomize(convnext.create_model("convnext_atto"))


def test_save_load_our_format_is_exact_and_keeps_the_config(tmp_path, atto):
    model = randomize(convnext.create_model("convnext_atto", in_chans=1, patch_size=2, num_classes=10,
                                            drop_path_rate=0.1))
    for path in (tmp_path / "dir", tmp_path / "pair.safetensors"):
        convnext.save(model, path)
        back = convnext.load(path)
        assert back.config == model.config
        assert all(torch.equal(back.state_dict()[k], v) for k, v in model.state_dict().items())
    assert (tmp_path / "pair.json").is_file() and (tmp_path / "dir" / "config.json").is_file()
    # create_model(name, pretrained=path) takes the architecture from config.json
    again = convnext.create_model("convnext_atto", pretrained=str(tmp_path / "dir"))
    assert again.config["patch_size"] == 2 and again.config["in_chans"] == 1
    with pytest.raises(CheckpointError, match="holds a convnext_atto, not a convnext_tiny"):
        convnext.create_model("convnext_tiny", pretrained=str(tmp_path / "dir"))


class Payload:
    """A pickle that writes a file when unpickled: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def test_malicious_pickle_is_refused_and_never_runs(tmp_path, atto):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pth"
    torch.save({"model": atto.state_dict(), "extra": Payload(marker)}, path)
    for load in (load_state_dict, convnext.load, lambda p: convnext.create_model("convnext_atto", pretrained=p)):
        with pytest.raises(UnsafeCheckpointError, match=r"Refused to load .*evil\.pth: .* call or build `exec`"):
            load(str(path))
        assert not marker.exists()
    # The payload is real: an unsafe load would have run it.
    torch.load(path, weights_only=False)
    assert marker.read_text() == "pwned"


def test_legacy_pickle_format_is_also_read_safely(tmp_path, atto):
    path = tmp_path / "legacy.pth"
    torch.save({"model": atto.state_dict()}, path, _use_new_zipfile_serialization=False)
    sd = load_state_dict(path)
    assert all(torch.equal(sd[k], v) for k, v in atto.state_dict().items())
    marker = tmp_path / "pwned.txt"
    with open(tmp_path / "evil_legacy.pth", "wb") as f:
        pickle.dump(Payload(marker), f, protocol=2)
    with pytest.raises(UnsafeCheckpointError):
        read_checkpoint(tmp_path / "evil_legacy.pth")
    assert not marker.exists()


@pytest.mark.parametrize("name", ["w.safetensors", "w.pth"])
def test_truncated_files_are_reported_as_truncated(tmp_path, atto, name):
    path = tmp_path / name
    save_file(atto.state_dict(), path) if name.endswith(".safetensors") else torch.save(atto.state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"w\.(safetensors|pth) is truncated or corrupt"):
        load_state_dict(path)


def test_not_a_checkpoint_and_missing_file(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="notes.txt is not a checkpoint"):
        load_state_dict(tmp_path / "notes.txt")
    with pytest.raises(CheckpointError, match="Checkpoint not found: .*nope.pth"):
        convnext.create_model("convnext_atto", pretrained=str(tmp_path / "nope.pth"))


def test_missing_and_unexpected_keys_are_named(tmp_path, atto):
    sd = dict(atto.state_dict())
    del sd["stages.2.5.pwconv1.weight"], sd["stages.2.5.pwconv1.bias"]
    sd["stages.2.6.dwconv.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        load_checked(convnext.create_model("convnext_atto"), sd)
    msg = str(err.value)
    assert "2 missing keys (stages.2.5.pwconv1.weight, stages.2.5.pwconv1.bias)" in msg
    assert "1 unexpected keys (stages.2.6.dwconv.weight)" in msg


def test_wrong_model_size_names_the_files_model(tmp_path, atto):
    convnext.save(atto, tmp_path / "atto")
    torch.save({"model": atto.state_dict()}, tmp_path / "atto.pth")
    with pytest.raises(CheckpointError, match=r"shape mismatches.*looks like convnext_atto \(depths \(2, 2, 6, 2\), "
                                              r"dims \(40, 80, 160, 320\)\).*dims \(48, 96, 192, 384\)"):
        convnext.create_model("convnext_femto", pretrained=str(tmp_path / "atto.pth"))


def test_wrong_class_count_and_wrong_layout_name_the_cause(atto):
    with pytest.raises(CheckpointError, match=r"head.weight: \(1000, 320\) in the file, \(10, 320\).*num_classes=1000"):
        load_checked(convnext.create_model("convnext_atto", num_classes=10), atto.state_dict())
    from convnext.checkpoints import from_official

    with pytest.raises(CheckpointError, match="not in the official layout.*convnext.load_state_dict"):
        load_checked(convnext.create_model("convnext_atto"), from_official(atto.state_dict(), "timm"))


def test_other_num_classes_reinitialises_only_the_head_with_a_warning(tmp_path, atto):
    torch.save({"model": atto.state_dict()}, tmp_path / "atto.pth")
    with pytest.warns(UserWarning, match="1000-class head; the model has num_classes=10, so its head was re-init"):
        model = convnext.create_model("convnext_atto", pretrained=str(tmp_path / "atto.pth"), num_classes=10,
                                      head_init_scale=0.001)
    assert model.head.weight.shape == (10, 320) and model.head.weight.abs().max() < 1e-3
    for k, v in atto.state_dict().items():
        if not k.startswith("head."):
            assert torch.equal(model.state_dict()[k], v), k
    convnext.save(model, tmp_path / "ft")
    assert torch.equal(convnext.load(tmp_path / "ft").head.weight, model.head.weight)
    # num_classes=0: pooled features, no warning needed
    features = convnext.create_model("convnext_atto", pretrained=str(tmp_path / "atto.pth"), num_classes=0)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(features(x), atto.forward_head(atto.forward_features(x), pre_logits=True))


def test_save_is_atomic_an_interrupted_write_keeps_the_old_file(tmp_path, atto, monkeypatch):
    convnext.save(atto, tmp_path / "ckpt")
    before = (tmp_path / "ckpt" / "model.safetensors").read_bytes()

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("convnext.checkpoints.io.save_file", fail)
    with pytest.raises(KeyboardInterrupt):
        convnext.save(convnext.create_model("convnext_atto"), tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]


def test_inferred_config_keeps_what_differs_from_the_registry_entry():
    from convnext.checkpoints import infer_config
    from convnext.models import build_model

    # convnext_fmnist's entry has a 2x2 stem: a file of its shape with a 4x4 stem must say so
    sd = build_model("convnext_fmnist", patch_size=4, num_classes=10).state_dict()
    assert infer_config(sd) == {"model": "convnext_fmnist", "patch_size": 4, "num_classes": 10}
    # a name given (a training recipe's) is kept, with every argument its entry does not already give
    cfg = infer_config(sd, name="convnext_atto")
    assert cfg == {"model": "convnext_atto", "kernel_size": 3, "depths": [2, 2, 2], "dims": [32, 64, 128],
                   "num_classes": 10}
    rebuilt = build_model(cfg.pop("model"), **cfg)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in sd.items()}
    assert infer_config(sd, name="convnext_iso_small")["model"] == "convnext_fmnist"  # not the same kind: ignored
