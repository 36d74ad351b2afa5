"""pretrained=True / tags / URLs: the real download code against files served from 127.0.0.1, with size and
hash checks, the cache, and the offline message."""

import hashlib
import socket

import pytest
import torch

import convnext
from checkpoint_helpers import randomize, serve_directory
from convnext.checkpoints import DownloadError, Release, find_release, pretrained
from convnext.checkpoints.pretrained import RELEASES, URL_ENV, release_url


def test_release_table_follows_the_official_readme():
    assert release_url(find_release("convnext_tiny", True)).endswith("/convnext/convnext_tiny_1k_224_ema.pth")
    assert find_release("convnext_base", "in1k_384").file == "convnext_base_1k_384.pth"
    assert find_release("convnext_large", "in22k_ft_in1k_384").file == "convnext_large_22k_1k_384.pth"
    assert find_release("convnext_xlarge", True).file == "convnext_xlarge_22k_1k_224.pth"  # XL: 22K only
    assert find_release("convnext_small", "in22k").num_classes == 21841
    assert find_release("convnext_iso_base", True).file == "convnext_iso_base_1k_224_ema.pth"
    assert "in1k_384" not in RELEASES["convnext_tiny"]  # no 1K-trained 384 T/S in the release
    with pytest.raises(ValueError, match="Unknown pretrained tag 'in21k'.*valid tags: in1k, in22k_ft_in1k, "
                                         "in22k_ft_in1k_384, in22k"):
        convnext.create_model("convnext_tiny", pretrained="in21k")
    with pytest.raises(ValueError, match="convnext_atto has no official pretrained weights"):
        convnext.create_model("convnext_atto", pretrained=True)


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A directory served on 127.0.0.1 as the release base URL, and an empty torch hub cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    served = tmp_path / "served"
    served.mkdir()
    with serve_directory(served) as url:
        monkeypatch.setenv(URL_ENV, url)
        yield served, url


def _publish(directory, name, model):
    """Write an official release file ({"model": state_dict}); its size and sha256."""
    torch.save({"model": model.state_dict()}, directory / name)
    data = (directory / name).read_bytes()
    return len(data), hashlib.sha256(data).hexdigest()


def test_pretrained_true_downloads_verifies_and_caches(server, monkeypatch, atto_release):
    served, url = server
    model_1k, size, digest = atto_release(served)
    model = convnext.create_model("convnext_atto", pretrained=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in model_1k.state_dict().items())
    assert model.data_config == pretrained.release_data_config(RELEASES["convnext_atto"]["in1k"])
    cached = pretrained.cache_dir() / "atto_1k.pth"
    assert cached.stat().st_size == size and (cached.parent / "atto_1k.pth.json").is_file()

    # Served nowhere any more: the verified cache is used.
    (served / "atto_1k.pth").unlink()
    again = convnext.create_model("convnext_atto", pretrained="in1k")
    assert torch.equal(again.head.weight, model_1k.head.weight)
    # A saved pretrained model reloads as itself.
    convnext.save(again, served / "saved")
    assert convnext.load(served / "saved").config == again.config == {**again.config, "num_classes": 1000}
    assert convnext.load(served / "saved").data_config.class_names[281] == "tabby, tabby cat"

    cached.write_bytes(cached.read_bytes()[: size // 2])
    with pytest.raises(DownloadError, match=f"atto_1k.pth has {size // 2} bytes instead of {size}: it is truncated"):
        convnext.create_model("convnext_atto", pretrained=True)


def test_22k_release_has_21841_classes_and_a_1k_head_is_reinitialised(server, atto_release):
    served, _ = server
    atto_release(served)
    model = convnext.create_model("convnext_atto", pretrained="in22k")
    assert model.head.out_features == 21841 and model.config["num_classes"] == 21841
    assert len(model.data_config.class_names) == 21841
    with pytest.warns(UserWarning, match="21841-class head; the model has num_classes=1000"):
        ft = convnext.create_model("convnext_atto", pretrained="in22k", num_classes=1000)
    assert torch.equal(ft.stages[3][1].pwconv2.weight, model.stages[3][1].pwconv2.weight)
    assert ft.data_config.class_names is None  # a re-initialised head: its classes are not known yet


def test_hash_mismatch_is_refused_and_not_kept(server, monkeypatch):
    served, _ = server
    size, _ = _publish(served, "atto_1k.pth", convnext.create_model("convnext_atto"))
    monkeypatch.setitem(RELEASES, "convnext_atto", {"in1k": Release("atto_1k.pth", size=size, sha256="0" * 64)})
    with pytest.raises(DownloadError, match="sha256 does not match the expected 0000.*not kept"):
        convnext.create_model("convnext_atto", pretrained=True)
    assert not (pretrained.cache_dir() / "atto_1k.pth").exists()


def test_url_with_torch_hub_hash_prefix(server):
    served, url = server
    model = randomize(convnext.create_model("convnext_atto"))
    _, digest = _publish(served, "tmp.pth", model)
    (served / "tmp.pth").rename(served / f"atto-{digest[:10]}.pth")
    loaded = convnext.create_model("convnext_atto", pretrained=f"{url}atto-{digest[:10]}.pth")
    assert torch.equal(loaded.head.weight, model.head.weight)
    (served / f"atto-{digest[:10]}.pth").rename(served / "atto-0123456789.pth")
    with pytest.raises(DownloadError, match="does not match the expected 0123456789"):
        convnext.create_model("convnext_atto", pretrained=f"{url}atto-0123456789.pth")


def test_offline_message_names_url_cache_path_and_local_option(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(URL_ENV, f"http://127.0.0.1:{port}/convnext")
    with pytest.raises(DownloadError) as err:
        convnext.create_model("convnext_tiny", pretrained=True)
    msg = str(err.value)
    assert f"Could not download http://127.0.0.1:{port}/convnext/convnext_tiny_1k_224_ema.pth" in msg
    assert f"put it at {tmp_path}/hub/checkpoints/convnext_tiny_1k_224_ema.pth" in msg
    assert "pretrained='/path/to/convnext_tiny_1k_224_ema.pth'" in msg


@pytest.fixture
def atto_release(monkeypatch):
    """Publish an atto "release" (1K and 22K heads) into a served directory and list it in RELEASES."""

    def publish(served):
        model_1k = randomize(convnext.create_model("convnext_atto"))
        size, digest = _publish(served, "atto_1k.pth", model_1k)
        _publish(served, "atto_22k.pth", convnext.create_model("convnext_atto", num_classes=21841))
        monkeypatch.setitem(RELEASES, "convnext_atto", {
            "in1k": Release("atto_1k.pth", size=size, sha256=digest),
            "in22k": Release("atto_22k.pth", num_classes=21841),
        })
        return model_1k, size, digest

    return publish
