"""UperNet on ConvNeXt: the paper's size, ADE20K data, mIoU (single/multi-scale, slide), training, reload."""

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from convnext.downstream import create_segmenter, segmentation_loss, segmenter_flops
from convnext.downstream.data import ADE20KSegmentation, SegmentationEvalTransform, segmentation_train_transform
from convnext.downstream.inference import segment
from convnext.downstream.metrics import MeanIoU, evaluate_segmentation
from convnext.downstream.synthetic import make_ade_shapes

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_BACKBONE = {"depths": (1, 1, 1, 1), "dims": (16, 32, 64, 128), "optimize": False}



def tiny_segmenter():
    return create_segmenter("upernet_convnext_atto", 4, channels=32, aux_channels=16, backbone_kwargs=TINY_BACKBONE)


@pytest.fixture(scope="module")
def ade(tmp_path_factory):
    root = tmp_path_factory.mktemp("ade")
    make_ade_shapes(root, "training", 8, size=64, seed=0)
    make_ade_shapes(root, "validation", 4, size=64, seed=1)
    return root


def test_upernet_tiny_matches_paper_size():
    # Table 4: UperNet ConvNeXt-T 939 GFLOPs (GMACs) at 2048x512, 60M params (auxiliary head included, as
    # mmseg counted); tolerance 1% (torch's counter counts convs/matmuls only, mmcv's also norms/activations).
    r = segmenter_flops("upernet_convnext_tiny", (512, 2048), num_classes=150)
    assert r["gmacs"] == pytest.approx(939, rel=0.01)
    assert r["params"] == pytest.approx(60, rel=0.01)


def test_stage_wise_decay_groups_follow_official_constructor():
    with torch.device("meta"):
        m = create_segmenter("upernet_convnext_tiny")
    names = ["backbone.downsample_layers.0.0.weight", "backbone.downsample_layers.3.1.weight",
             "backbone.stages.0.1.gamma", "backbone.stages.2.8.dwconv.weight", "backbone.stages.3.0.pwconv2.bias",
             "backbone.norm3.weight", "decode_head.conv_seg.weight", "auxiliary_head.conv.0.weight"]
    groups = [m.layer_group(n) for n in names]
    assert groups == [0, 0, 1, 3, 4, 7, 7, 7]
    # with the scale decay ** (num_layer_groups + 1 - group) the official T config's lr multipliers
    assert [0.9 ** (m.num_layer_groups + 1 - g) for g in groups] == pytest.approx(
        [0.9 ** 7, 0.9 ** 7, 0.9 ** 6, 0.9 ** 4, 0.9 ** 3, 1, 1, 1])


def test_ade20k_layout_reduces_zero_label(tmp_path):
    (tmp_path / "images" / "val").mkdir(parents=True)
    (tmp_path / "annotations" / "val").mkdir(parents=True)
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(tmp_path / "images" / "val" / "a.jpg")
    Image.fromarray(np.array([[0, 1, 2], [150, 255, 7]], np.uint8)).save(tmp_path / "annotations" / "val" / "a.png")
    image, label = ADE20KSegmentation(tmp_path, "val")[0]
    assert label.tolist() == [[255, 0, 1], [149, 255, 6]]
    assert label.dtype == torch.int64 and image.shape == (3, 2, 3)
    assert ADE20KSegmentation(tmp_path, "val", reduce_zero_label=False)[0][1].tolist() == [[0, 1, 2], [150, 255, 7]]
    with pytest.raises(FileNotFoundError, match="annotations/train"):
        ADE20KSegmentation(tmp_path, "train")


def test_mean_iou_by_hand():
    metric = MeanIoU(4)
    metric.update(torch.tensor([[0, 0, 1], [1, 2, 2]]), torch.tensor([[0, 1, 1], [1, 2, 255]]))
    r = metric.compute()
    # non-ignored pixels: pred 0 0 1 1 2 vs label 0 1 1 1 2 -> IoU 1/2, 2/3, 1; class 3 absent (NaN)
    assert r["IoU"][:3] == pytest.approx([50, 200 / 3, 100]) and np.isnan(r["IoU"][3])
    assert r["mIoU"] == pytest.approx((50 + 200 / 3 + 100) / 3)
    assert r["aAcc"] == pytest.approx(80)
    assert r["mAcc"] == pytest.approx((100 + 200 / 3 + 100) / 3)
    with pytest.raises(ValueError, match="label values"):
        metric.update(torch.tensor([1]), torch.tensor([9]))


class Oracle(nn.Module):
    """Segments by the sign of the first channel: right at any scale, under flips and in any window."""

    def forward(self, x):
        return {"out": torch.cat([x[:, :1], -x[:, :1]], 1) * 10}


def test_single_multi_scale_and_slide_inference():
    label = torch.zeros(1, 40, 56, dtype=torch.long)
    label[:, :, 20:] = 1
    label[:, 5:9, 3:11] = 1
    image = (1 - 2 * label.float())[:, None].expand(1, 3, 40, 56).contiguous()
    loader = [(image, label)]
    for kw in ({}, {"scales": (0.5, 1.0, 1.5), "flip": True}, {"mode": "slide", "crop": 24, "stride": 16}):
        assert evaluate_segmentation(Oracle(), loader, 2, **kw)["mIoU"] == pytest.approx(100), kw

    model = tiny_segmenter().eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref = model(x)["out"].softmax(1)
    assert torch.allclose(segment(model, x), ref, atol=1e-6)
    assert torch.allclose(segment(model, x, mode="slide", crop=128, stride=64), ref, atol=1e-6)
    ms = segment(model, x, (32, 48), scales=(0.5, 0.75, 1.25), flip=True)
    assert ms.shape == (1, 4, 32, 48)
    assert torch.allclose(ms.sum(1), torch.ones(1, 32, 48), atol=1e-5)
    assert not torch.allclose(ms, nn.functional.interpolate(ref, (32, 48), mode="bilinear").softmax(1), atol=1e-3)


def test_training_lowers_loss_evaluates_and_reloads(tmp_path, ade):
    train = ADE20KSegmentation(ade, "training", segmentation_train_transform(crop=64, short=64, long=256))
    images, labels = map(torch.stack, zip(*[train[i] for i in range(4)], strict=True))
    assert images.shape == (4, 3, 64, 64) and set(labels.unique().tolist()) <= {0, 1, 2, 3, 255}
    model = tiny_segmenter().train()

    def loss():
        torch.manual_seed(1)  # the same dropout masks for both measurements
        with torch.no_grad():
            return float(sum(segmentation_loss(model(images), labels).values()))

    before = loss()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(10):
        losses = segmentation_loss(model(images), labels)
        assert set(losses) == {"loss_seg", "loss_aux"}
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    after = loss()
    assert after < 0.7 * before, (before, after)

    val = ADE20KSegmentation(ade, "validation", SegmentationEvalTransform(48, 192))
    image, label = val[0]
    assert image.shape == (3, 48, 48) and label.shape == (64, 64)
    loader = torch.utils.data.DataLoader(val, batch_size=1)
    r = evaluate_segmentation(model, loader, 4)
    assert 0 <= r["mIoU"] <= 100 and 0 <= r["aAcc"] <= 100

    torch.save(model.state_dict(), tmp_path / "m.pt")
    again = create_segmenter(**model.config)
    again.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    model.eval()
    again.eval()
    with torch.no_grad():
        assert torch.equal(model(images)["out"], again(images)["out"])
    assert "aux" not in again(images)  # the auxiliary head only runs in training


def test_cli_resumes_exactly_evaluates_and_refuses_to_overwrite(tmp_path, capsys):
    from convnext.cli import main

    small = {"backbone_kwargs": TINY_BACKBONE, "channels": 32, "aux_channels": 16}
    common = ["train-segmentation", "--synthetic", "8", "--out", str(tmp_path), "--model", "upernet_convnext_atto",
              "--model-args", json.dumps(small), "--num-classes", "4", "--crop", "48", "--scale", "48", "192",
              "--iters", "6", "--batch-size", "2", "--lr", "1e-3", "--warmup-iters", "2", "--workers", "0",
              "--no-progress"]
    assert main(common + ["--name", "a"]) == 0
    a = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # the same run in two jobs: stop mid-epoch at iteration 3 (4 batches per epoch), then resume
    assert main(common + ["--name", "b", "--stop-at", "3"]) == 0
    assert main(common + ["--name", "b", "--resume", "auto"]) == 0
    b = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= a["final"]["mIoU"] <= 100 and a["final"] == b["final"]
    sa = torch.load(tmp_path / "a" / "last-00000006.pt", weights_only=True)["model"]
    sb = torch.load(tmp_path / "b" / "last-00000006.pt", weights_only=True)["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert (tmp_path / "a" / "loss.png").exists() and (tmp_path / "a" / "metrics.png").exists()

    assert main(common + ["--name", "a"]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err

    assert main(["train-segmentation", "--synthetic", "8", "--out", str(tmp_path), "--name", "a", "--num-classes", "4",
                 "--scale", "48", "192", "--workers", "0", "--eval-only", str(tmp_path / "a" / "best.pt")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["mIoU"] == pytest.approx(a["best"]["mIoU"],
                                                                                                abs=1e-9)


def test_poly_schedule_and_optimizer_groups_match_mmseg():
    from convnext.train.optim import LRSchedule, build_optimizer, lr_at

    schedule = LRSchedule("poly", warmup_steps=100, warmup_ratio=1e-6)
    # mmcv: poly (power 1) lr, times 1 - (1 - it / warmup) * (1 - ratio) during warmup
    assert lr_at(0, 1000, 1e-4, schedule) == pytest.approx(1e-4 * 1e-6)
    assert lr_at(50, 1000, 1e-4, schedule) == pytest.approx(1e-4 * 0.95 * (1 - 0.5 * (1 - 1e-6)))
    assert lr_at(500, 1000, 1e-4, schedule) == pytest.approx(0.5e-4)
    assert lr_at(999, 1000, 1e-4, schedule) == pytest.approx(1e-7)
    with torch.device("meta"):
        m = create_segmenter("upernet_convnext_tiny")
    opt = build_optimizer(m, 1e-4, 0.05, layer_decay=0.9)
    scale = {n: (g["lr_scale"], g["weight_decay"]) for g in opt.param_groups for n in g["names"]}
    assert scale["backbone.downsample_layers.0.0.weight"] == pytest.approx((0.9 ** 7, 0.05))
    assert scale["backbone.stages.3.0.pwconv1.weight"] == pytest.approx((0.9 ** 3, 0.05))
    assert scale["backbone.stages.3.0.pwconv1.bias"] == pytest.approx((0.9 ** 3, 0.0))
    assert scale["decode_head.fpn_bottleneck.0.weight"] == pytest.approx((1.0, 0.05))


def test_nan_loss_stops_without_a_checkpoint_and_bad_images_are_named(tmp_path, ade):
    from convnext.downstream.engine import DownstreamTask
    from convnext.train.loop import LoopConfig, NonFiniteLossError, run

    train = ADE20KSegmentation(ade, "training", segmentation_train_transform(crop=32, short=32, long=128))
    task = DownstreamTask("segmentation", tiny_segmenter(), train, lambda items: items,
                          lambda model, batch, device: {"loss": torch.tensor(float("nan"), requires_grad=True)},
                          lambda model: {"mIoU": 0.0}, "mIoU", {})
    with pytest.raises(NonFiniteLossError, match="step 0.*none yet"):
        run(task, LoopConfig(run_dir=str(tmp_path / "run"), batch_size=2, lr=1e-4, iters=4, workers=0,
                             progress=False))
    assert not list((tmp_path / "run").glob("*.pt"))

    (tmp_path / "images" / "x").mkdir(parents=True)
    (tmp_path / "annotations" / "x").mkdir(parents=True)
    (tmp_path / "images" / "x" / "bad.jpg").write_bytes(b"not a jpeg")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "annotations" / "x" / "bad.png")
    with pytest.raises(OSError, match="bad.jpg"):
        ADE20KSegmentation(tmp_path, "x")[0]


def test_crop_is_redrawn_until_no_class_dominates_and_padded_with_ignore():
    from torchvision import tv_tensors

    from convnext.downstream.data import RandomCropCatMax

    random.seed(0)  # the crop positions come from Python's RNG (seeded per sample in training)
    label = torch.zeros(1, 100, 100, dtype=torch.uint8)
    label[:, 60:, 60:] = 1  # class 1 in the bottom-right 40x40: ~16% of 40x40 crops have both classes < 75%
    image = tv_tensors.Image(torch.zeros(3, 100, 100))
    crop = RandomCropCatMax(40)
    mixed = 0
    for _ in range(20):
        _, m = crop(image, tv_tensors.Mask(label))
        counts = torch.bincount(m.flatten(), minlength=2)
        mixed += bool(counts[1] > 0 and counts.max() < 0.75 * counts.sum())
    assert mixed >= 10  # with up to 10 draws ~82% of crops are balanced; with one draw ~16%
    img, m = crop(tv_tensors.Image(torch.ones(3, 30, 50)), tv_tensors.Mask(torch.zeros(1, 30, 50, dtype=torch.uint8)))
    assert img.shape == (3, 40, 40) and m.shape == (1, 40, 40)
    assert (m[:, 30:] == 255).all() and (m[:, :30] == 0).all() and (img[:, 30:] == 0).all()
