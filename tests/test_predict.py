"""predict(): the paper's eval transform + top-k with ImageNet names, from Python and the shell."""

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from timm.data import ImageNetInfo

import convnext
from checkpoint_helpers import randomize
from convnext.checkpoints.pretrained import imagenet_class_names as class_names
from convnext.data.transforms import eval_transform
from convnext.predict import predict


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    directory = tmp_path_factory.mktemp("photos")
    paths = []
    for name in ("chelsea", "astronaut", "coffee"):
        paths.append(directory / f"{name}.png")
        Image.fromarray(getattr(data, name)()).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def model():
    return randomize(convnext.create_model("convnext_atto"), 0.2)


@pytest.mark.parametrize("size", [224, 384])
def test_predict_matches_the_model_on_the_eval_transform(model, photos, size):
    results = predict(model, photos, topk=5, size=size)
    batch = torch.stack([eval_transform(size)(Image.open(p).convert("RGB")) for p in photos])
    with torch.no_grad():
        probs = model(batch).softmax(-1)
    info = ImageNetInfo("imagenet-1k")
    for result, p in zip(results, probs, strict=True):
        top = p.topk(5)
        assert result.indices == top.indices.tolist()
        assert np.allclose(result.probs, top.values.tolist(), atol=1e-6)
        assert result.names == [info.index_to_description(i) for i in result.indices]


def test_inputs_can_be_pil_images_or_arrays(model, photos):
    from_path = predict(model, photos[0])[0]
    img = data.chelsea()
    assert predict(model, img)[0].indices == from_path.indices
    assert predict(model, Image.fromarray(img))[0].indices == from_path.indices


def test_class_names_come_from_timm():
    assert class_names(1000)[281] == "tabby, tabby cat"
    assert len(class_names(21841)) == 21841
    assert class_names(10)[3] == "class 3"


def test_bad_images_name_their_path(model, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ValueError, match="Cannot read image .*broken.jpg"):
        predict(model, bad)
    with pytest.raises(FileNotFoundError, match="Image not found: .*missing.png"):
        predict(model, tmp_path / "missing.png")


def test_cli_prints_top5_names(run_cli, model, photos, tmp_path):
    convnext.save(model, tmp_path / "weights")
    proc = run_cli("predict", *photos[:2], "--weights", tmp_path / "weights")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 12
    expected = predict(model, photos[:2])
    for block, result in zip((lines[:6], lines[6:]), expected, strict=True):
        assert block[0].endswith(".png")
        for rank, (line, name, idx) in enumerate(zip(block[1:], result.names, result.indices, strict=True), 1):
            assert line.strip().startswith(f"{rank}.") and line.endswith(f"{name} ({idx})")


def test_cli_without_weights_offline_says_what_to_do(photos, tmp_path, monkeypatch, capsys):
    from convnext.cli import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("CONVNEXT_WEIGHTS_URL", "http://127.0.0.1:9/")  # discard port: nothing listens
    assert main(["predict", str(photos[0])]) == 2
    err = capsys.readouterr().err
    assert "Could not download http://127.0.0.1:9/convnext_tiny_1k_224_ema.pth" in err
    assert "--weights PATH" in err
