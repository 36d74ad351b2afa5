"""mCE arithmetic against a hand-computed example, and the 200-class masking of ImageNet-A/-R."""

import math

import pytest
import torch
from torch import nn

from convnext.robustness import metrics
from convnext.robustness.evaluate import class_indices, top1_error
from convnext.robustness.subsets import imagenet_synsets, masked_predictions, subset_indices

ERRORS = {"gaussian_noise": [0.1, 0.2, 0.3, 0.4, 0.5], "fog": [0.2, 0.2, 0.2, 0.2, 0.2]}
# One baseline given as the severity mean (like the paper's AlexNet table), one per severity.
BASELINE = {"gaussian_noise": 0.6, "fog": [0.4, 0.5, 0.5, 0.5, 0.6]}


def test_mce_by_hand():
    # CE_gauss = (0.1+0.2+0.3+0.4+0.5) / (5 * 0.6) = 1.5 / 3.0 = 0.5 ; CE_fog = 1.0 / 2.5 = 0.4
    ce = metrics.corruption_errors(ERRORS, BASELINE)
    assert ce == pytest.approx({"gaussian_noise": 0.5, "fog": 0.4})
    assert metrics.mce(ERRORS, BASELINE) == pytest.approx(0.45)
    # unnormalised: (1.5 + 1.0) / 10 values
    assert metrics.unnormalized_mce(ERRORS) == pytest.approx(0.25)
    assert metrics.severity_errors(ERRORS) == pytest.approx([0.15, 0.2, 0.25, 0.3, 0.35])


def test_relative_mce_by_hand():
    # clean 0.05, baseline clean 0.3:
    # gauss: (1.5 - 5*0.05) / (3.0 - 5*0.3) = 1.25 / 1.5 ; fog: (1.0 - 0.25) / (2.5 - 1.5) = 0.75
    rce = metrics.relative_corruption_errors(ERRORS, 0.05, BASELINE, 0.3)
    assert rce == pytest.approx({"gaussian_noise": 1.25 / 1.5, "fog": 0.75})
    assert metrics.relative_mce(ERRORS, 0.05, BASELINE, 0.3) == pytest.approx((1.25 / 1.5 + 0.75) / 2)
    summary = metrics.summarize(ERRORS, 0.05, BASELINE, 0.3)
    assert summary["mce"] == pytest.approx(0.45) and summary["relative_mce"] == pytest.approx(0.7916666)
    assert "mce" not in metrics.summarize(ERRORS, baseline=None)
    # a baseline no worse under a corruption than clean: relative mCE is reported as undefined, mCE still given
    odd = metrics.summarize(ERRORS, 0.05, {"gaussian_noise": 0.6, "fog": 0.3}, 0.3)
    assert "relative_mce" not in odd and "fog" in odd["relative_mce_undefined"]
    assert odd["mce"] == pytest.approx((0.5 + 1.0 / 1.5) / 2)


def test_alexnet_normalises_itself_to_100():
    table = metrics.ALEXNET_ERRORS
    assert tuple(table) == metrics.CORRUPTIONS and len(table) == 15
    same = {c: [e] * 5 for c, e in table.items()}
    assert metrics.mce(same) == pytest.approx(1.0)
    # paper.md section 6: noise errors are AlexNet's worst, brightness its best
    assert max(table, key=table.get) == "impulse_noise" and min(table, key=table.get) == "brightness"
    assert metrics.alexnet_clean_error() == pytest.approx(1 - 0.56522)
    # a model exactly halfway between perfect and AlexNet on every corruption has mCE 50
    assert metrics.mce({c: [e / 2] * 5 for c, e in table.items()}) == pytest.approx(0.5)


def test_baseline_errors_are_checked():
    with pytest.raises(KeyError, match="snow"):
        metrics.mce({"snow": [0.5] * 5}, BASELINE)
    with pytest.raises(ValueError, match="undefined"):
        metrics.relative_mce({"fog": [0.5] * 5}, 0.1, {"fog": 0.3}, 0.3)


def test_timm_subset_lists():
    synsets = imagenet_synsets()
    assert len(synsets) == 1000 and synsets[0] == "n01440764" and len(set(synsets)) == 1000
    for subset in ("imagenet-a", "imagenet-r"):
        idx = subset_indices(subset)
        assert len(idx) == 200 and len(set(idx)) == 200 and list(idx) == sorted(idx)
        assert 0 <= idx[0] and idx[-1] < 1000
    # ImageNet-A's first class is the stingray (n01498041, index 6); ImageNet-R has the goldfish (index 1)
    assert subset_indices("imagenet-a")[0] == 6 and synsets[6] == "n01498041"
    assert 1 in subset_indices("imagenet-r") and 1 not in subset_indices("imagenet-a")
    with pytest.raises(ValueError):
        subset_indices("imagenet-x")


def test_masking_known_logits():
    keep = subset_indices("imagenet-a")
    logits = torch.zeros(3, 1000)
    logits[0, 5] = 10.0  # the overall argmax is outside the 200 classes ...
    logits[0, keep[3]], logits[0, keep[7]] = 2.0, 1.0  # ... so the best kept class wins
    logits[1, keep[199]] = 0.5
    logits[2, :] = -1.0
    logits[2, keep[0]] = -0.5
    assert masked_predictions(logits, keep).tolist() == [keep[3], keep[199], keep[0]]
    assert masked_predictions(logits, None).tolist()[0] == 5


class FixedLogits(nn.Module):
    """A 'model' whose logits for image i are row i of a table (the image carries its index as pixel value)."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def forward(self, x):
        return self.table[x[:, 0, 0, 0].long()]


def test_top1_error_with_mask_on_known_model():
    keep = subset_indices("imagenet-r")
    table = torch.randn(6, 1000)
    targets = torch.tensor([keep[i * 30] for i in range(6)])
    table[torch.arange(6), targets] = 5.0  # right among the 200 ...
    table[:3, 0] = 9.0  # ... but images 0-2 have a larger logit on class 0, not in ImageNet-R
    assert 0 not in keep
    data = [(torch.full((3, 2, 2), float(i)), int(t)) for i, t in enumerate(targets)]
    model = FixedLogits(table)
    assert top1_error(model, data, keep=keep, batch_size=4, workers=0) == 0.0
    assert top1_error(model, data, keep=None, batch_size=4, workers=0) == pytest.approx(0.5)
    assert math.isclose(top1_error(model, data, keep=keep, workers=0, limit=3), 0.0)


def test_class_folder_names_map_to_logits():
    assert class_indices(["n01498041", "n01531178"]) == [6, 11]  # stingray, goldfinch
    assert class_indices(["0", "3", "7"]) == [0, 3, 7]
    assert class_indices(["cat", "dog"]) == [0, 1]
