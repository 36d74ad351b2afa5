"""The corruption generator on real photographs (scikit-image's), and evaluation of an ImageNet-C-layout folder."""

import json

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from torch import nn

from convnext.robustness.corrupt import corrupt_image, folder_samples, image_seed, write_corrupted
from convnext.robustness.evaluate import evaluate_corruptions, image_folder, top1_error
from convnext.robustness.metrics import CORRUPTIONS, SEVERITIES


def _photo(name: str, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(getattr(skimage.data, name)()).resize((size, size), Image.BICUBIC))


@pytest.fixture(scope="module")
def corrupted():
    """Every corruption x severity of an RGB photo (48 px) and a grayscale one (28 px, below the library's 32)."""
    images = {"rgb": _photo("astronaut", 48), "gray": _photo("camera", 28)}
    out = {key: {(c, s): corrupt_image(img, c, s, seed=7) for c in CORRUPTIONS for s in SEVERITIES}
           for key, img in images.items()}
    return images, out


def test_all_corruptions_give_valid_images_of_the_same_size(corrupted):
    images, out = corrupted
    for key, img in images.items():
        for (c, s), res in out[key].items():
            assert res.shape == img.shape and res.dtype == np.uint8, (key, c, s)
            assert np.abs(res.astype(int) - img).mean() > 0.5, f"{key} {c} {s} left the image unchanged"


def test_severity_increases_distortion_on_average(corrupted):
    images, out = corrupted
    for key, img in images.items():
        per_severity = [np.mean([np.abs(out[key][c, s].astype(float) - img).mean() for c in CORRUPTIONS])
                        for s in SEVERITIES]
        assert all(a < b for a, b in zip(per_severity[:-1], per_severity[1:], strict=True)), (key, per_severity)
        # the deterministic ones are monotone one by one
        for c in ("gaussian_noise", "contrast", "brightness", "defocus_blur", "pixelate"):
            d = [np.abs(out[key][c, s].astype(float) - img).mean() for s in SEVERITIES]
            assert d == sorted(d), (key, c, d)


def test_seeded_corruptions_are_reproducible(corrupted):
    images, out = corrupted
    for c in ("gaussian_noise", "impulse_noise", "glass_blur", "frost", "snow", "fog", "elastic_transform"):
        again = corrupt_image(images["rgb"], c, 3, seed=7)
        assert np.array_equal(again, out["rgb"][c, 3]), c
        assert not np.array_equal(corrupt_image(images["rgb"], c, 3, seed=8), again), c
    state = np.random.get_state()[1].copy()
    corrupt_image(images["gray"], "shot_noise", 2, seed=1)
    assert np.array_equal(np.random.get_state()[1], state)  # the caller's NumPy generator is untouched


def test_bad_arguments():
    img = _photo("astronaut", 32)
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt_image(img, "gausian_noise", 1)
    with pytest.raises(ValueError, match="severity"):
        corrupt_image(img, "fog", 6)
    with pytest.raises(TypeError, match="uint8"):
        corrupt_image(img.astype(np.float32), "fog", 1)


class Brightness(nn.Module):
    """A two-class classifier with known behaviour: class 6 (n01498041) if the image is brighter than the
    threshold, else class 11 (n01531178); all other logits very low."""

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))
        logits = torch.full((len(x), 1000), -100.0)
        logits[:, 6], logits[:, 11] = m, -m
        return logits


def test_imagenet_c_folder_evaluation(tmp_path):
    # A clean folder of real photos in two ImageNet classes, then its corrupted copy in the ImageNet-C layout.
    clean = tmp_path / "clean"
    photos = {"n01498041": ["clock", "immunohistochemistry", "page"],  # bright
              "n01531178": ["cell", "hubble_deep_field", "rocket"]}  # dark
    for cls, names in photos.items():
        (clean / cls).mkdir(parents=True)
        for name in names:
            Image.fromarray(_photo(name, 40)).convert("RGB").save(clean / cls / f"{name}.png")
    corruptions, severities = ("brightness", "contrast", "gaussian_noise"), (1, 5)
    total, samples = folder_samples(clean)
    root = write_corrupted(samples, tmp_path / "c", corruptions, severities, seed=0, total=total)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    assert len(files) == 6 * 3 * 2 and "brightness/5/n01531178/rocket.png" in files
    assert json.loads((root / "corruptions.json").read_text())["severities"] == [1, 5]
    # the copy is exactly what corrupt_image gives with the per-image seed (images numbered in ImageFolder order)
    index = [name for names in photos.values() for name in names].index("rocket")
    assert index == 5
    src = np.asarray(Image.open(clean / "n01531178" / "rocket.png").convert("RGB"))
    want = corrupt_image(src, "gaussian_noise", 5, image_seed(0, index, "gaussian_noise", 5))
    assert np.array_equal(np.asarray(Image.open(root / "gaussian_noise/5/n01531178/rocket.png")), want)

    import torchvision.transforms as T

    transform = T.Compose([T.ToTensor(), T.Normalize([0.4] * 3, [0.25] * 3)])
    model = Brightness()
    errors = evaluate_corruptions(model, root, transform, corruptions, severities, workers=0, batch_size=4)
    assert list(errors) == list(corruptions) and all(len(e) == 2 for e in errors.values())
    # recompute every error by hand from the files
    for c in corruptions:
        for j, s in enumerate(severities):
            wrong = 0
            for cls, target in (("n01498041", 6), ("n01531178", 11)):
                for f in (root / c / str(s) / cls).iterdir():
                    pred = model(transform(Image.open(f).convert("RGB"))[None]).argmax().item()
                    wrong += pred != target
            assert errors[c][j] == pytest.approx(wrong / 6), (c, s)
    assert errors["brightness"][1] >= 0.5  # severity 5 brightness makes the dark class look bright
    assert top1_error(model, image_folder(clean, transform), workers=0) == 0.0
    with pytest.raises(FileNotFoundError, match="fog/1"):
        evaluate_corruptions(model, root, transform, ("fog",), (1,), workers=0)
