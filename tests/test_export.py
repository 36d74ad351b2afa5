"""Export to the three formats on a tiny model (dynamic batch, logits within 1e-4 on real photographs), and the
deployment transforms (folded layer scale, bf16, channels_last) keeping the top-1 on real photographs."""

import pytest
import torch

from convnext import create_model
from convnext.export import (
    FORMATS,
    ExportError,
    export,
    fold_layer_scale,
    load_exported,
    sample_images,
    to_bf16,
    to_channels_last,
    top1_agreement,
    verify_export,
)
from convnext.fast import FastBlock

SIZE = 64


@pytest.fixture(scope="module")
def photos():
    return sample_images(SIZE)


def _prototype_model(photos, **kwargs):
    """convnext_atto whose classifier rows are the photos' own pooled features, so photo i is class i by a clear
    margin: top-1 comparisons on it measure the transform, not ties between random logits."""
    torch.manual_seed(0)
    model = create_model("convnext_atto", num_classes=len(photos), **kwargs).eval()
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(photos), pre_logits=True)
        feats = (feats - feats.mean(0)) / feats.std(0)
        model.head.weight.copy_(feats / feats.shape[1] ** 0.5)
        model.head.bias.zero_()
        assert model(photos).argmax(-1).tolist() == list(range(len(photos)))
    return model


def test_sample_images_are_real_photos(photos):
    assert photos.shape == (7, 3, SIZE, SIZE)
    # normalised real photos: neither constant nor noise-like; distinct images
    assert 0.5 < photos.std().item() < 2.0
    assert (photos[0] - photos[1]).abs().mean() > 0.3
    gray = sample_images((32, 48), in_chans=1)
    assert gray.shape == (7, 1, 32, 48)


@pytest.fixture(scope="module")
def exported(photos, tmp_path_factory):
    """One tiny model exported once in each format: {format: (path, verified difference)}."""
    torch.manual_seed(0)
    model = create_model("convnext_atto", num_classes=10, layer_scale_init_value=0.3).eval()
    folder = tmp_path_factory.mktemp("export")
    return model, {fmt: export(model, folder / f"m{ext}", fmt, SIZE, photos) for fmt, ext in FORMATS.items()}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_export_matches_pytorch_on_real_images(fmt, photos, exported):
    model, files = exported
    path, diff = files[fmt]
    assert path.exists() and path.suffix == FORMATS[fmt] and diff <= 1e-4
    assert not model.training and isinstance(model.stages[0][0], FastBlock)  # exported the reference ops, restored
    run = load_exported(path, fmt)
    with torch.no_grad():
        for batch in (photos[:3], photos[2:7]):  # dynamic batch: sizes other than the export's example (2)
            expected = model(batch)
            got = run(batch)
            assert got.shape == (len(batch), 10)
            assert torch.allclose(got, expected, atol=1e-4, rtol=0)
            assert expected.std() > 1e-2  # the comparison is not between near-constant outputs


def test_verification_catches_a_wrong_export(photos, exported):
    path, _ = exported[1]["torchscript"]
    other = create_model("convnext_atto", num_classes=10).eval()  # different random weights
    with pytest.raises(ExportError, match="differ"):
        verify_export(other, path, "torchscript", photos)


def test_fold_layer_scale_same_top1(photos):
    model = _prototype_model(photos, layer_scale_init_value=0.5)
    folded = fold_layer_scale(model)
    assert all(b.gamma is None for b in folded.modules() if hasattr(b, "gamma"))
    assert not any("gamma" in k for k in folded.state_dict())
    assert any("gamma" in k for k in model.state_dict())  # the original is untouched
    same, diff = top1_agreement(model, folded, photos)
    assert same == 1.0 and diff < 1e-4, diff


def test_bf16_and_channels_last_same_top1(photos):
    model = _prototype_model(photos)
    same, diff = top1_agreement(model, to_bf16(model), photos)
    assert next(to_bf16(model).parameters()).dtype == torch.bfloat16
    assert same == 1.0 and 0 < diff < 0.5  # bf16 does change the logits a little
    cl = to_channels_last(model)
    conv = cl.downsample_layers[0][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    same, diff = top1_agreement(model, cl, photos)
    assert same == 1.0 and diff < 1e-4
