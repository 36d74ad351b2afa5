"""Recipes: every shipped file loads, mirrors the paper's Tables 5 and 6, and every key is validated."""

import pytest

from convnext.train.config import ConfigError, effective_batch, list_recipes, load_config, scaled_lr


def test_every_recipe_loads_and_validates():
    names = list_recipes()
    assert {"fashion_mnist", "fashion_mnist_long", "in1k_tiny", "in1k_base", "in22k_base", "in22k_ft_in1k_base",
            "in1k_ft_384_base", "iso_small"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert cfg.recipe == name


@pytest.mark.parametrize("size,drop_path", [("tiny", 0.1), ("small", 0.4), ("base", 0.5), ("large", 0.5)])
def test_in1k_recipes_are_table5(size, drop_path):
    c = load_config(f"in1k_{size}")
    assert c.model.name == f"convnext_{size}" and c.model.drop_path_rate == drop_path
    assert (c.optim.lr, c.optim.reference_batch, c.optim.weight_decay, c.optim.epochs, c.optim.warmup_epochs,
            c.optim.min_lr) == (4e-3, 4096, 0.05, 300, 20, 1e-6)
    assert c.optim.betas == (0.9, 0.999) and c.optim.eps == 1e-8 and c.optim.clip_grad is None
    assert (c.data.auto_augment, c.data.mixup, c.data.cutmix, c.data.mixup_switch_prob, c.data.reprob,
            c.data.label_smoothing, c.data.interpolation) == ("rand-m9-mstd0.5-inc1", 0.8, 1.0, 0.5, 0.25, 0.1,
                                                               "bicubic")
    assert c.model.layer_scale_init_value == 1e-6 and c.run.ema and c.run.ema_decay == 0.9999
    # 8 devices x 128 x 4 accumulation is the paper's batch, at the paper's lr
    assert effective_batch(c, 8) == 4096 and scaled_lr(c, 8) == pytest.approx(4e-3)


@pytest.mark.parametrize("size,drop_path", [("tiny", 0.0), ("small", 0.0), ("base", 0.1), ("large", 0.1),
                                            ("xlarge", 0.2)])
def test_in22k_recipes(size, drop_path):
    c = load_config(f"in22k_{size}")
    assert (c.optim.epochs, c.optim.warmup_epochs, c.run.ema, c.model.drop_path_rate) == (90, 5, False, drop_path)


@pytest.mark.parametrize("size,drop_path,ema", [("tiny", 0.0, False), ("small", 0.1, False), ("base", 0.2, False),
                                                ("large", 0.3, False), ("xlarge", 0.4, True)])
def test_22k_to_1k_finetune_recipes_are_table6(size, drop_path, ema):
    c = load_config(f"in22k_ft_in1k_{size}")
    assert (c.optim.lr, c.optim.weight_decay, c.optim.reference_batch, c.optim.epochs, c.optim.warmup_epochs,
            c.optim.layer_decay) == (5e-5, 1e-8, 512, 30, 0, 0.8)
    assert (c.data.mixup, c.data.cutmix, c.data.reprob, c.data.label_smoothing) == (0.0, 0.0, 0.25, 0.1)
    assert c.model.head_init_scale == 0.001 and c.model.drop_path_rate == drop_path and c.run.ema == ema


def test_384_finetune_and_isotropic_recipes():
    b, l_ = load_config("in1k_ft_384_base"), load_config("in1k_ft_384_large")
    assert (b.data.input_size, b.optim.layer_decay, b.model.drop_path_rate, l_.model.drop_path_rate) == \
        (384, 0.7, 0.8, 0.95)
    assert b.data.crop_pct is None  # squash at 384, as the official eval
    iso = [load_config(f"iso_{s}") for s in ("small", "base", "large")]
    assert [c.optim.warmup_epochs for c in iso] == [50, 50, 50]
    assert [c.model.drop_path_rate for c in iso] == [0.1, 0.2, 0.5]
    assert [c.model.layer_scale_init_value for c in iso] == [0.0, 0.0, 1e-6]


def test_typo_names_the_key_and_the_nearest_valid_one():
    with pytest.raises(ConfigError, match=r"'optim\.lrr'.*'optim\.lr'"):
        load_config("fashion_mnist", ["optim.lrr=1e-3"])
    with pytest.raises(ConfigError, match=r"'data\.mixpu'.*'data\.mixup'"):
        load_config("fashion_mnist", ["data.mixpu=0.2"])
    with pytest.raises(ConfigError, match=r"model\.kwargs\.dim\b.*model\.kwargs\.dims"):
        load_config("fashion_mnist", ["model.kwargs.dim=[8,16,32]"])
    with pytest.raises(ConfigError, match=r"Unknown recipe 'in1k_tiyn'.*in1k_tiny"):
        load_config("in1k_tiyn")


def test_typo_inside_a_recipe_file(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("base: fashion_mnist\noptim:\n  warmup_epoch: 2\n")
    with pytest.raises(ConfigError, match=r"'optim\.warmup_epoch'.*'optim\.warmup_epochs'"):
        load_config(str(f))
    f.write_text("base: fashion_mnist\noptim:\n  epochs: 3\n")
    c = load_config(str(f))
    assert c.optim.epochs == 3 and c.data.dataset == "fashion_mnist"


def test_wrong_types_and_choices_are_errors():
    with pytest.raises(ConfigError, match="optim.epochs must be an integer"):
        load_config("fashion_mnist", ["optim.epochs=1.5"])
    with pytest.raises(ConfigError, match="run.amp must be one of"):
        load_config("fashion_mnist", ["run.amp=fp8"])
    with pytest.raises(ConfigError, match="run.tta must be one of none, hflip"):
        load_config("fashion_mnist", ["run.tta=vflip"])
    with pytest.raises(ConfigError, match="data.reprob must be in"):
        load_config("fashion_mnist", ["data.reprob=2"])


def test_lr_scales_with_devices_batch_and_accumulation():
    c = load_config("in1k_tiny", ["optim.batch_size=64", "optim.accum_steps=2"])
    assert effective_batch(c, 4) == 512
    assert scaled_lr(c, 4) == pytest.approx(4e-3 * 512 / 4096)
    # accumulation reaches the paper's batch on one device
    c = load_config("in1k_tiny", ["optim.batch_size=32", "optim.accum_steps=128"])
    assert effective_batch(c, 1) == 4096 and scaled_lr(c, 1) == pytest.approx(4e-3)


def test_resolved_config_round_trips():
    from convnext.train.config import from_dict

    c = load_config("in22k_ft_in1k_base", ["optim.lr=1e-4"])
    assert from_dict(c.to_dict()) == c
