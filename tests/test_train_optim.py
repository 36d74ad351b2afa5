"""AdamW groups (no decay on 1-D/bias), layer-wise lr decay for T and B, the warmup + cosine schedule, EMA."""

import math

import pytest
import torch

from convnext import create_model
from convnext.train.optim import LRSchedule, build_ema, build_optimizer, lr_at, param_groups, set_lr


def test_no_weight_decay_on_biases_and_1d_params():
    model = create_model("convnext_atto", num_classes=10)
    groups = param_groups(model, weight_decay=0.05)
    by_name = {n: g["weight_decay"] for g in groups for n in g["names"]}
    assert len(by_name) == len(list(model.parameters()))
    assert by_name["stages.0.0.gamma"] == 0.0 and by_name["stages.0.0.norm.weight"] == 0.0
    assert by_name["stages.0.0.pwconv1.bias"] == 0.0 and by_name["head.bias"] == 0.0
    assert by_name["downsample_layers.0.1.weight"] == 0.0  # stem LayerNorm
    assert by_name["stages.0.0.pwconv1.weight"] == 0.05 and by_name["stages.0.0.dwconv.weight"] == 0.05
    assert by_name["head.weight"] == 0.05
    decayed = sum(p.numel() for g in groups if g["weight_decay"] for p in g["params"])
    expected = sum(p.numel() for n, p in model.named_parameters() if p.ndim > 1)
    assert decayed == expected


def _scales(model, decay):
    return {n: g["lr_scale"] for g in param_groups(model, 0.05, layer_decay=decay) for n in g["names"]}


def test_layer_decay_base_has_the_official_13_exponents():
    with torch.device("meta"):  # only names and shapes are needed
        model = create_model("convnext_base", num_classes=10)  # 27 blocks in stage 2 -> 12 groups
    s = _scales(model, 0.8)
    assert s["head.weight"] == 1.0 and s["norm.weight"] == 1.0
    assert s["downsample_layers.0.0.weight"] == pytest.approx(0.8 ** 13)  # stem
    assert s["stages.0.2.pwconv1.weight"] == pytest.approx(0.8 ** 12)
    assert s["stages.1.0.dwconv.weight"] == pytest.approx(0.8 ** 11)
    assert s["stages.2.0.gamma"] == pytest.approx(0.8 ** 10) and s["stages.2.26.gamma"] == pytest.approx(0.8 ** 2)
    assert s["stages.3.2.pwconv2.weight"] == pytest.approx(0.8 ** 1)
    assert s["downsample_layers.3.1.weight"] == pytest.approx(0.8 ** 1)


def test_layer_decay_tiny_works_with_its_9_block_stage():
    with torch.device("meta"):
        model = create_model("convnext_tiny", num_classes=10)  # 9 blocks in stage 2 -> 3 groups, 6 in all
    s = _scales(model, 0.7)
    assert s["downsample_layers.0.0.weight"] == pytest.approx(0.7 ** 7)
    assert s["stages.2.0.pwconv1.weight"] == pytest.approx(0.7 ** 4)
    assert s["stages.2.8.pwconv1.weight"] == pytest.approx(0.7 ** 2)
    assert s["stages.3.0.gamma"] == pytest.approx(0.7 ** 1) and s["head.bias"] == 1.0
    opt = build_optimizer(model, 1e-3, 0.05, layer_decay=0.7)
    set_lr(opt, 2e-3)
    assert sorted({round(g["lr"] / 2e-3, 8) for g in opt.param_groups}) == \
        sorted({round(0.7 ** k, 8) for k in range(8)})


def test_schedule_warmup_and_cosine_endpoints():
    base, total, warm, min_lr = 4e-3, 1000, 100, 1e-6
    cos = LRSchedule("cosine", warmup_steps=warm, min_lr=min_lr)
    assert lr_at(0, total, base, cos) == 0.0
    assert lr_at(50, total, base, cos) == pytest.approx(base / 2)
    assert lr_at(100, total, base, cos) == pytest.approx(base)
    assert lr_at(550, total, base, cos) == pytest.approx((base + min_lr) / 2)
    assert lr_at(1000, total, base, cos) == pytest.approx(min_lr)
    mid = lr_at(325, total, base, cos)
    assert mid == pytest.approx(min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * 0.25)))
    lrs = [lr_at(s, total, base, cos) for s in range(total)]
    assert all(a <= b for a, b in zip(lrs[:warm], lrs[1:warm + 1], strict=True))
    assert all(a >= b for a, b in zip(lrs[warm:-1], lrs[warm + 1:], strict=True))
    assert lr_at(10, 100, 1.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.1)))  # no warmup


def test_ema_is_the_exponential_average_of_the_weights():
    model = torch.nn.Linear(3, 2)
    ema = build_ema(model, decay=0.9)
    w0 = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, step=1000)
    assert torch.allclose(ema.module.weight, 0.9 * w0 + 0.1 * (w0 + 1.0), atol=1e-6)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, step=1001)
    assert torch.allclose(ema.module.weight, 0.9 * (0.9 * w0 + 0.1 * (w0 + 1)) + 0.1 * (w0 + 2), atol=1e-6)
