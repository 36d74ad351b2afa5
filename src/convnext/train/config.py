"""Training configuration: recipes (YAML) -> validated dataclasses -> the resolved config saved with each run.

A recipe is a YAML file with the sections `model`, `data`, `optim` and `run` (the fields of the dataclasses
below). It may name another recipe in `base:`, whose values it overrides. `--set section.key=value` overrides
any field from the command line; values are parsed as YAML (`--set optim.lr=1e-3`, `--set model.kwargs.dims=[32,64]`).
Every key is checked: an unknown key is an error that names it and the nearest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from ..evaluate import TTA_MODES


class ConfigError(ValueError):
    """A recipe or override that cannot be used: unknown key, wrong type, missing recipe."""


@dataclass
class ModelConfig:
    """Which network to train. `kwargs` go to the model constructor (e.g. depths, dims, patch_size)."""

    name: str = "convnext_tiny"
    num_classes: int | None = None  # None: the data set's number of classes
    in_chans: int | None = None  # None: the data set's number of channels
    drop_path_rate: float = 0.1
    layer_scale_init_value: float | None = 1e-6
    head_init_scale: float = 1.0
    kwargs: dict = field(default_factory=dict)
    init: str | None = None  # weights to start from (fine-tuning): a training checkpoint or any supported layout


@dataclass
class DataConfig:
    """Where the images come from and how they are augmented."""

    dataset: str = "imagefolder"  # "imagefolder" (root/train, root/val), "fashion_mnist", "wds" (tar shards), "hf"
    root: str = ""
    train_split: str = "train"  # wds: also a shard pattern, e.g. "train-{000000..001023}.tar"
    val_split: str = "val"  # image folder: a sub-folder; Fashion-MNIST: "val" (held out of train), "test", "train"
    test_split: str | None = None  # image folder: a sub-folder evaluated once at the end (Fashion-MNIST: its test set)
    val_size: int = 5000  # Fashion-MNIST: training images held out for validation (500 per class; 0: none)
    input_size: int = 224
    crop_pct: float | None = None  # eval crop; None: the paper's (0.875 below 384, squash at >= 384)
    interpolation: str = "bicubic"
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    color_jitter: float = 0.4
    reprob: float = 0.25  # random erasing probability
    remode: str = "pixel"
    hflip: float = 0.5
    scale: tuple[float, float] | None = None  # random resized crop's area range; None: timm's (0.08, 1.0)
    crop_padding: int = 2  # small-image datasets: random crop after zero padding by this many pixels
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    label_smoothing: float = 0.1
    bad_images: str = "skip"  # "skip" (report path, count, substitute another image) or "stop"
    max_bad_images: int = 100  # stop anyway when more than this many images are unreadable
    limit_train: int | None = None  # use only the first N training images (quick runs, tests)
    limit_val: int | None = None  # and of the test images
    num_workers: int = 2


@dataclass
class OptimConfig:
    """AdamW and its schedule. `lr` is for `reference_batch`; the run uses lr * effective_batch / reference_batch."""

    lr: float = 4e-3
    reference_batch: int = 4096
    batch_size: int = 128  # per device
    accum_steps: int = 1
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    epochs: int = 300
    warmup_epochs: float = 20
    min_lr: float = 1e-6
    layer_decay: float | None = None  # layer-wise lr decay (fine-tuning), e.g. 0.8
    layer_decay_type: str = "group"  # "group" (ConvNeXt's official scheme) or "single" (one group per block: V2)
    no_weight_decay: list[str] = field(default_factory=list)  # fnmatch patterns beyond 1-D params (V2: GRN)
    clip_grad: float | None = None


@dataclass
class RunConfig:
    """Everything about running: precision, devices, checkpoints, logging."""

    name: str | None = None  # run folder name under out_dir; None: the recipe's name
    out_dir: str = "runs"
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda"
    amp: str = "auto"  # "auto" (bf16 on CUDA and on CPUs with bf16 in hardware, else none), "bf16", "fp16", "none"
    channels_last: bool = True
    compile: bool = False
    strategy: str = "ddp"  # "ddp" or "fsdp" (shards parameters, gradients and optimizer state; for XL)
    ema: bool = True
    ema_decay: float = 0.9999
    eval_every: int = 1  # epochs
    tta: str = "none"  # test-time augmentation of validation and test alike: "none" or "hflip" (convnext.evaluate)
    ckpt_every_steps: int | None = None  # also checkpoint mid-epoch every N optimizer steps
    keep_last: int = 2
    resume: str | None = None  # "auto", a checkpoint path, or None
    deterministic: bool = False
    max_steps: int | None = None  # stop after this many optimizer steps (quick runs, tests)
    threads: int | None = None  # torch CPU threads; None: torch's default
    progress: bool = True
    tensorboard: bool = True
    plots: bool = True


@dataclass
class FCMAEConfig:
    """ConvNeXt V2's masked autoencoder pretraining (`task: fcmae`; convnext.pretrain.FCMAE): the paper's values."""

    mask_ratio: float = 0.6
    decoder_depth: int = 1
    decoder_embed_dim: int = 512
    norm_pix_loss: bool = True


@dataclass
class Config:
    """A full training configuration."""

    recipe: str = "custom"
    task: str = "classification"  # or "fcmae" (masked pretraining, `convnext pretrain`)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    fcmae: FCMAEConfig = field(default_factory=FCMAEConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists, numbers, strings) for YAML/JSON and for `torch.load(weights_only=True)`."""
        return _plain(asdict(self))


SECTIONS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "run": RunConfig, "fcmae": FCMAEConfig}
TASKS = ("classification", "fcmae")
CHOICES = {
    ("data", "dataset"): ("imagefolder", "fashion_mnist", "wds", "hf"),
    ("data", "bad_images"): ("skip", "stop"),
    ("run", "device"): ("auto", "cpu", "cuda"),
    ("run", "amp"): ("auto", "bf16", "fp16", "none"),
    ("run", "strategy"): ("ddp", "fsdp"),
    ("run", "tta"): TTA_MODES,
    ("optim", "layer_decay_type"): ("group", "single"),
}


def recipe_dir() -> Path:
    """The folder of the recipes shipped with the package."""
    return Path(str(resources.files("convnext") / "recipes"))


def list_recipes() -> list[str]:
    """Names of the shipped recipes."""
    return sorted(p.stem for p in recipe_dir().glob("*.yaml"))


def _recipe_path(name_or_file: str) -> Path:
    p = Path(name_or_file)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise ConfigError(f"Recipe file {p} not found")
        return p
    shipped = recipe_dir() / f"{name_or_file}.yaml"
    if shipped.exists():
        return shipped
    close = difflib.get_close_matches(name_or_file, list_recipes(), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"Unknown recipe {name_or_file!r}.{hint} Shipped recipes: {', '.join(list_recipes())}")


def _read_recipe(name_or_file: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    path = _recipe_path(name_or_file)
    if str(path) in seen:
        raise ConfigError(f"Recipe {path} inherits from itself (base chain: {' -> '.join(seen)})")
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"Recipe {path} must be a mapping of sections, got {type(raw).__name__}")
    raw.pop("resolved", None)  # a run's saved config.yaml can be used as a recipe: its derived values are recomputed
    base = raw.pop("base", None)
    if base is None:
        return raw
    base_path = Path(base) if Path(base).suffix in (".yaml", ".yml") else None
    if base_path is not None and not base_path.is_absolute():
        base = str(path.parent / base_path)
    merged = _read_recipe(base, (*seen, str(path)))
    for section, values in raw.items():
        if isinstance(values, dict) and isinstance(merged.get(section), dict):
            merged[section] = {**merged[section], **values}
        else:
            merged[section] = values
    return merged


def _valid_keys() -> list[str]:
    return ["task", *(f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in fields(cls))]


def _unknown(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, _valid_keys(), n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"Unknown config key {key!r}.{hint}")


# (name in the type hint, accepted Python types, how to say it); bool is checked apart, as it is also an int.
_KINDS = (("list", (list, tuple), "a list"), ("tuple", (list, tuple), "a list"), ("dict", (dict,), "a mapping"),
          ("bool", (bool,), "true or false"), ("float", (int, float), "a number"), ("int", (int,), "an integer"),
          ("str", (str,), "a string"))


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check `value` against the field's type hint, converting int -> float and list -> tuple where meant."""
    text = str(hint)
    if value is None:
        if "None" in text:
            return None
        raise ConfigError(f"{key} cannot be null")
    if "float" in text and isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    for name, types, say in _KINDS:
        if name in text:
            if not isinstance(value, types) or (name != "bool" and isinstance(value, bool)):
                raise ConfigError(f"{key} must be {say}, got {value!r}")
            if name == "list":
                return list(value)
            if name == "tuple":
                return tuple(float(v) for v in value)
            return float(value) if name == "float" else value
    return value


def _apply(cfg: Config, section: str, values: dict[str, Any]) -> None:
    if section == "recipe":
        cfg.recipe = str(values)
        return
    if section == "task":
        if values not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}; got {values!r}")
        cfg.task = values
        return
    if section not in SECTIONS:
        raise _unknown(section)
    if not isinstance(values, dict):
        raise ConfigError(f"Section {section!r} must be a mapping of keys, got {values!r}")
    obj = getattr(cfg, section)
    hints = get_type_hints(type(obj))
    for key, value in values.items():
        full = f"{section}.{key}"
        if key not in hints:
            raise _unknown(full)
        value = _coerce(full, value, hints[key])
        choices = CHOICES.get((section, key))
        if choices and value not in choices:
            raise ConfigError(f"{full} must be one of {', '.join(choices)}; got {value!r}")
        setattr(obj, key, value)


def parse_override(item: str) -> tuple[str, Any]:
    """`section.key=value` (value parsed as YAML) -> ("section.key", value)."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, text = item.split("=", 1)
    return key.strip(), yaml.safe_load(text) if text.strip() else None


def load_config(recipe: str, overrides: list[str] | None = None) -> Config:
    """Read a shipped recipe by name (or a YAML file), apply `key=value` overrides, validate everything."""
    raw = _read_recipe(recipe)
    cfg = Config(recipe=Path(recipe).stem)
    for section, values in raw.items():
        _apply(cfg, section, values)
    for item in overrides or []:
        key, value = parse_override(item)
        parts = key.split(".")
        if parts[0] in SECTIONS and len(parts) > 2 and parts[1] == "kwargs":
            cfg.model.kwargs[".".join(parts[2:])] = value
            continue
        if parts == ["task"]:
            _apply(cfg, "task", value)
            continue
        if len(parts) != 2:
            raise _unknown(key)
        _apply(cfg, parts[0], {parts[1]: value})
    validate(cfg)
    return cfg


def from_dict(d: dict[str, Any]) -> Config:
    """Rebuild a Config from `Config.to_dict()` (e.g. the one stored in a checkpoint)."""
    cfg = Config(recipe=d.get("recipe", "custom"))
    _apply(cfg, "task", d.get("task", "classification"))
    for section in SECTIONS:
        _apply(cfg, section, d.get(section, {}))
    return cfg


def validate(cfg: Config) -> None:
    """Cross-field checks: model kwargs against the constructor, positive sizes, sensible probabilities."""
    from ..models import MODELS

    if cfg.model.name not in MODELS:
        close = difflib.get_close_matches(cfg.model.name, MODELS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"model.name: unknown model {cfg.model.name!r}.{hint}")
    params = inspect.signature(MODELS[cfg.model.name].cls.__init__).parameters
    for key in cfg.model.kwargs:
        if key not in params or key == "self":
            close = difflib.get_close_matches(key, [p for p in params if p != "self"], n=1)
            hint = f" Did you mean 'model.kwargs.{close[0]}'?" if close else ""
            raise ConfigError(f"Unknown config key 'model.kwargs.{key}' for {cfg.model.name}.{hint}")
    for key in ("batch_size", "accum_steps", "reference_batch", "epochs"):
        if getattr(cfg.optim, key) < 1:
            raise ConfigError(f"optim.{key} must be >= 1, got {getattr(cfg.optim, key)}")
    for key in ("reprob", "hflip", "mixup_prob", "mixup_switch_prob", "label_smoothing"):
        if not 0.0 <= getattr(cfg.data, key) <= 1.0:
            raise ConfigError(f"data.{key} must be in [0, 1], got {getattr(cfg.data, key)}")
    if cfg.run.keep_last < 1:
        raise ConfigError("run.keep_last must be >= 1")


def effective_batch(cfg: Config, world_size: int) -> int:
    """Images per optimizer step: devices x per-device batch x accumulation steps."""
    return world_size * cfg.optim.batch_size * cfg.optim.accum_steps


def scaled_lr(cfg: Config, world_size: int) -> float:
    """The recipe's lr (given for `reference_batch`) scaled linearly to the effective batch, as the paper does."""
    return cfg.optim.lr * effective_batch(cfg, world_size) / cfg.optim.reference_batch


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if dataclasses.is_dataclass(x):
        return _plain(asdict(x))
    return x


def dump_yaml(d: dict[str, Any]) -> str:
    """The resolved config as YAML, sections in a fixed order."""
    return yaml.safe_dump(d, sort_keys=False, default_flow_style=None)
