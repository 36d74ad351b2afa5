"""The ConvNeXt V2 recipes: the official TRAINING.md commands and main_*.py defaults, read through the config
(every key validated)."""

from fnmatch import fnmatch

import pytest
import torch

import convnext
from convnext.models import MODELS
from convnext.train.config import list_recipes, load_config

V2_RECIPES = ["fcmae_base", "fcmae_fashion_mnist", "fcmae_ft_fashion_mnist", "fcmae_ft_in1k_atto",
              "fcmae_ft_in1k_base", "fcmae_ft_in1k_tiny"]


def recipe(name: str) -> dict:
    return load_config(name).to_dict()


def test_the_v2_recipes_ship_and_validate():
    assert set(V2_RECIPES) <= set(list_recipes())
    for name in V2_RECIPES:
        cfg = recipe(name)
        assert cfg["model"]["name"] in MODELS and cfg["model"]["layer_scale_init_value"] is None
        assert cfg["task"] == ("classification" if "_ft_" in name else "fcmae")


def test_pretraining_recipe_is_the_official_base_command():
    c = recipe("fcmae_base")
    assert c["task"] == "fcmae" and c["model"]["name"] == "convnextv2_base"
    assert c["fcmae"] == {"mask_ratio": 0.6, "decoder_depth": 1, "decoder_embed_dim": 512, "norm_pix_loss": True}
    o, d = c["optim"], c["data"]
    assert (o["lr"], o["reference_batch"], o["weight_decay"], o["betas"], o["epochs"], o["warmup_epochs"],
            o["min_lr"]) == (1.5e-4, 256, 0.05, [0.9, 0.95], 1600, 40, 0.0)
    assert 8 * o["batch_size"] * o["accum_steps"] == 4096  # 8 GPUs x 64 x update_freq 8
    assert o["no_weight_decay"] == []  # pretraining decays GRN's gamma/beta and the mask token
    assert (d["scale"], d["interpolation"], d["hflip"], d["auto_augment"], d["color_jitter"], d["reprob"],
            d["mixup"], d["cutmix"]) == ([0.2, 1.0], "bicubic", 0.5, None, 0.0, 0.0, 0.0, 0.0)
    assert c["run"]["ema"] is False


@pytest.mark.parametrize("size,blr,epochs,warmup,scheme,decay,wd,drop_path,mixup,cutmix,smoothing", [
    ("atto", 2e-4, 600, 0, "single", 0.9, 0.3, 0.1, 0.0, 0.0, 0.2),
    ("tiny", 8e-4, 300, 40, "single", 0.9, 0.05, 0.2, 0.8, 1.0, 0.1),
    ("base", 6.25e-4, 100, 20, "group", 0.6, 0.05, 0.1, 0.8, 1.0, 0.1),
])
def test_finetuning_recipes_are_the_official_commands(size, blr, epochs, warmup, scheme, decay, wd, drop_path,
                                                      mixup, cutmix, smoothing):
    c = recipe(f"fcmae_ft_in1k_{size}")
    o, d, m = c["optim"], c["data"], c["model"]
    assert m["name"] == f"convnextv2_{size}" and m["drop_path_rate"] == drop_path and m["head_init_scale"] == 0.001
    assert (o["lr"], o["reference_batch"], o["epochs"], o["warmup_epochs"], o["layer_decay_type"],
            o["layer_decay"], o["weight_decay"], o["min_lr"]) == (blr, 256, epochs, warmup, scheme, decay, wd, 1e-6)
    assert 8 * o["batch_size"] * o["accum_steps"] == 1024
    assert (d["mixup"], d["cutmix"], d["label_smoothing"], d["reprob"], d["auto_augment"]) == (
        mixup, cutmix, smoothing, 0.25, "rand-m9-mstd0.5-inc1")
    assert c["run"]["ema"] and c["run"]["ema_decay"] == 0.9999 and c["run"]["amp"] == "fp16"
    with torch.device("meta"):
        model = convnext.create_model(m["name"])
    assert model.count_layer_groups(scheme) == (sum(model.depths) if scheme == "single" else 12)


def test_no_weight_decay_patterns_pick_grn_exactly():
    model = convnext.create_model("convnextv2_atto", depths=(1, 1, 1, 1))
    patterns = recipe("fcmae_ft_in1k_tiny")["optim"]["no_weight_decay"]
    picked = {n for n, p in model.named_parameters() if p.ndim > 1 and any(fnmatch(n, pat) for pat in patterns)}
    assert picked == {n for n, _ in model.named_parameters() if ".grn." in n}


def test_fashion_mnist_recipes():
    pre, ft = recipe("fcmae_fashion_mnist"), recipe("fcmae_ft_fashion_mnist")
    assert pre["task"] == "fcmae" and pre["model"]["name"] == ft["model"]["name"] == "convnextv2_fmnist"
    assert pre["data"]["dataset"] == ft["data"]["dataset"] == "fashion_mnist"
    assert pre["optim"]["betas"] == [0.9, 0.95] and pre["fcmae"]["mask_ratio"] == 0.6
    assert ft["optim"]["epochs"] == 17 and ft["model"]["head_init_scale"] == 0.001  # the recorded schedule
