"""The `convnext corrupt`, `convnext robustness` and `convnext export` commands end to end."""

import gzip
import json

import numpy as np
import pytest
import torch
from PIL import Image

from convnext import create_model
from convnext.robustness.corrupt import corrupt_image, image_seed

FMNIST = "/usr/share/datasets/fashion-mnist"


def _fmnist_test_images(n):
    with gzip.open(f"{FMNIST}/t10k-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:n]
    with gzip.open(f"{FMNIST}/t10k-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)[:n]
    return x, y


@pytest.fixture(scope="module")
def fmnist_c(tmp_path_factory):
    """Fashion-MNIST-C of the first 6 test images, 3 corruptions x 2 severities, written by the command."""
    import subprocess
    import sys

    from conftest import cli_env

    out = tmp_path_factory.mktemp("fmnist_c")
    cmd = [sys.executable, "-m", "convnext", "corrupt", "--dataset", "fashion-mnist", "--limit", "6",
           "--corruptions", "glass_blur", "fog", "contrast", "--severities", "1", "5", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out


def test_fashion_mnist_c_layout(fmnist_c):
    x, y = _fmnist_test_images(6)
    files = sorted(p.relative_to(fmnist_c).as_posix() for p in fmnist_c.rglob("*.png"))
    assert len(files) == 6 * 3 * 2
    assert {f.split("/")[0] for f in files} == {"glass_blur", "fog", "contrast"}
    assert {f.split("/")[1] for f in files} == {"1", "5"}
    for i in range(6):  # class folder = label digit, file = test-set index
        img = Image.open(fmnist_c / "glass_blur" / "5" / str(y[i]) / f"{i:05d}.png")
        assert img.mode == "L" and img.size == (28, 28)
        want = corrupt_image(x[i], "glass_blur", 5, image_seed(0, i, "glass_blur", 5))
        assert np.array_equal(np.asarray(img), want)
    manifest = json.loads((fmnist_c / "corruptions.json").read_text())
    assert manifest["images"] == 6 and "imagecorruptions-imaug" in manifest["library"]


def test_robustness_command_against_itself_as_baseline(fmnist_c, tmp_path, run_cli):
    # Loads --weights through create_model(pretrained=path): needs convnext.checkpoints (the weights branch).
    from convnext.data.transforms import eval_transform
    from convnext.robustness import evaluate_corruptions, summarize

    corruptions, severities = ["glass_blur", "fog", "contrast"], [1, 5]
    model = create_model("convnext_atto", num_classes=10, in_chans=1).eval()
    torch.save(model.state_dict(), tmp_path / "w.pth")
    # The same model evaluated in-process is the baseline: the command must reproduce its errors and so
    # score mCE = relative mCE = 100 exactly.
    transform = eval_transform(32, crop_pct=1.0, mean=(0.286,), std=(0.353,))
    errors = evaluate_corruptions(model, fmnist_c, transform, corruptions, severities, image_mode="L", workers=0)
    assert len({e for v in errors.values() for e in v}) > 1  # not a constant-error model
    (tmp_path / "base.json").write_text(json.dumps(summarize(errors, baseline=None)))
    proc = run_cli("robustness", "--model", "convnext_atto", "--weights", tmp_path / "w.pth", "--suite", "corrupted",
                   "--data", fmnist_c, "--corruptions", *corruptions, "--severities", *map(str, severities),
                   "--num-classes", "10", "--in-chans", "1", "--size", "32", "--mean", "0.286", "--std", "0.353",
                   "--workers", "0", "--baseline", tmp_path / "base.json", "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "robustness_corrupted.json").read_text())
    assert report["errors"] == errors
    assert report["mce"] == pytest.approx(1.0)
    assert set(report["ce"]) == set(corruptions) and "mce" in proc.stdout
    assert (tmp_path / "out" / "robustness_corrupted.png").stat().st_size > 10_000
    # A checkpoint that carries its data config needs no flags: the same errors
    import convnext
    from convnext.data_config import DataSpec

    model.data_config = DataSpec(in_chans=1, input_size=(32, 32), mean=(0.286,), std=(0.353,), crop_pct=1.0)
    convnext.save(model, tmp_path / "ours")
    proc = run_cli("robustness", "--weights", tmp_path / "ours", "--suite", "corrupted", "--data", fmnist_c,
                   "--corruptions", *corruptions, "--severities", *map(str, severities), "--workers", "0",
                   "--out", tmp_path / "out2")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "out2" / "robustness_corrupted.json").read_text())["errors"] == errors


def test_corrupt_refuses_output_inside_input(tmp_path, run_cli):
    (tmp_path / "data" / "a").mkdir(parents=True)
    proc = run_cli("corrupt", "--data", tmp_path / "data", "--out", tmp_path / "data" / "c")
    assert proc.returncode != 0 and "inside" in proc.stderr


def test_export_command(tmp_path, run_cli):
    out = tmp_path / "m.pt2"
    proc = run_cli("export", "--model", "convnext_atto", "--format", "exported-program", "--size", "32", "48",
                   "--num-classes", "10", "--fold-layer-scale", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "verified on 7 real images" in proc.stdout and "layer scale folded" in proc.stdout
    program = torch.export.load(str(out))
    assert program.module()(torch.randn(3, 3, 32, 48)).shape == (3, 10)  # another batch size, the export's H x W
    bad = run_cli("export", "--model", "convnext_atto", "--format", "exported-program", "--out", tmp_path / "m.pt")
    assert bad.returncode != 0 and ".pt2" in bad.stderr
