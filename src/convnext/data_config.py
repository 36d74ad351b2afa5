"""What a model expects of its input and what its outputs mean: the data config every checkpoint carries.

The same record for our training runs, our safetensors folders and the official releases (timm's
`pretrained_cfg` / `resolve_data_config`, HF's preprocessor config): input channels and size, normalisation,
the eval resize (interpolation, crop_pct, crop_mode) and the class names.

A leaf module: plain data, no imports from the rest of the package. `convnext.transform(model)` turns a
model's data config into its eval transform; `checkpoints` reads and writes it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.286,), (0.353,)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
CROP_MODES = ("center", "squash")
# PIL's resampling filters by number, as HF's preprocessor_config.json "resample" stores them.
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


@dataclass(frozen=True)
class DataSpec:
    """A model's input format and class names.

    The eval transform (`convnext.transform`): convert the image to grayscale (`in_chans` 1) or RGB (3); resize
    it to `input_size / crop_pct`, keeping its aspect ratio and cutting out the center (`crop_mode` "center")
    or squashing it to that size ("squash"); center-crop `input_size` (H, W); normalise with `mean`/`std`.
    `class_names`: one per output, or None where they are not known (then "class i").
    """

    in_chans: int = 3
    input_size: tuple[int, int] = (224, 224)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    crop_mode: str = "center"
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        # A config read from a file is checked once here, so that every consumer can trust it.
        size = self.input_size
        if isinstance(size, int):
            object.__setattr__(self, "input_size", size := (size, size))
        problems = []
        if not (isinstance(self.in_chans, int) and self.in_chans >= 1):
            problems.append(f"in_chans {self.in_chans!r} is not a positive integer")
        elif not all(isinstance(v, (tuple, list)) and len(v) == self.in_chans for v in (self.mean, self.std)):
            problems.append(f"mean {self.mean!r} and std {self.std!r} need {self.in_chans} value(s) each "
                            f"for in_chans {self.in_chans}")
        elif any(s <= 0 for s in self.std):
            problems.append(f"std {tuple(self.std)} has a value <= 0")
        if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)):
            problems.append(f"input_size {size!r} is not (height, width)")
        if self.interpolation not in INTERPOLATIONS:
            problems.append(f"interpolation {self.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
        if not 0 < self.crop_pct <= 1:
            problems.append(f"crop_pct {self.crop_pct!r} is not in (0, 1]")
        if self.crop_mode not in CROP_MODES:
            problems.append(f"crop_mode {self.crop_mode!r} is not one of {', '.join(CROP_MODES)}")
        if self.class_names is not None and not all(isinstance(n, str) for n in self.class_names):
            problems.append("class_names are not all strings")
        if problems:
            raise ValueError(f"Invalid data config: {'; '.join(problems)}.")
        for name in ("input_size", "mean", "std", "class_names"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))

    @classmethod
    def for_channels(cls, in_chans: int = 3, **fields: Any) -> DataSpec:
        """The default for an `in_chans`-channel model: ImageNet's input format (224, bicubic, crop_pct 0.875,
        ImageNet's mean/std, averaged over the channels when they are not RGB's), with `fields` changed."""
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        if in_chans != 3:
            mean, std = (round(sum(mean) / 3, 4),) * in_chans, (round(sum(std) / 3, 4),) * in_chans
        return cls(in_chans=in_chans, mean=mean, std=std, **fields)

    @property
    def num_classes(self) -> int | None:
        """How many classes `class_names` names (None when they are not known)."""
        return None if self.class_names is None else len(self.class_names)

    def class_name(self, index: int) -> str:
        """The name of output `index`, or "class i" when the names are not known."""
        names = self.class_names
        return names[index] if names is not None and 0 <= index < len(names) else f"class {index}"

    def replace(self, **changes: Any) -> DataSpec:
        """A copy with `changes` (checked like a new one)."""
        return dataclasses.replace(self, **changes)

    def for_classes(self, num_classes: int) -> DataSpec:
        """This config for a model with `num_classes` outputs: the class names dropped if they do not fit
        (a re-initialised head, a backbone without classifier)."""
        return self if self.num_classes in (None, num_classes) else self.replace(class_names=None)

    def at_size(self, size: int | tuple[int, int]) -> DataSpec:
        """This config evaluated at another input size, by the paper's protocol (the official code's eval):
        at 384 and above, squash the image to the size (crop_pct 1.0); below 384, resize and center-crop
        (crop_pct 0.875 where the config squashed, else its own)."""
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        if (h, w) == self.input_size:
            return self
        if max(h, w) >= 384:
            return self.replace(input_size=(h, w), crop_pct=1.0, crop_mode="squash")
        if self.crop_mode == "squash":
            return self.replace(input_size=(h, w), crop_pct=0.875, crop_mode="center")
        return self.replace(input_size=(h, w))

    def summary(self) -> str:
        """One line for people: '1x28x28, mean (0.286,), std (0.353,), bilinear, crop 1.0 center, 10 classes'."""
        h, w = self.input_size
        classes = "class names unknown" if self.class_names is None else f"{len(self.class_names)} named classes"
        return (f"{self.in_chans}x{h}x{w}, mean {_fmt(self.mean)}, std {_fmt(self.std)}, {self.interpolation}, "
                f"crop {self.crop_pct:g} {self.crop_mode}, {classes}")

    def to_dict(self) -> dict[str, Any]:
        """Plain lists, numbers and strings: for JSON and for `torch.load(weights_only=True)`."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataSpec:
        """The inverse of `to_dict`; unknown keys are ignored, missing ones take the defaults."""
        if not isinstance(d, dict):
            raise ValueError(f"Invalid data config: a {type(d).__name__}, not a dict.")
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known})

    def to_hf(self) -> dict[str, Any]:
        """HF transformers' `preprocessor_config.json` for `ConvNextImageProcessor`.

        HF's processor follows the paper's protocol (resize + center crop below 384, squash at 384 and above,
        square inputs), so a config outside it (non-square, squash below 384) is written approximately."""
        return {
            "image_processor_type": "ConvNextImageProcessor", "do_resize": True,
            "size": {"shortest_edge": self.input_size[0]}, "crop_pct": self.crop_pct,
            "resample": {v: k for k, v in _PIL_RESAMPLE.items()}[self.interpolation], "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(self.mean), "image_std": list(self.std),
        }

    @classmethod
    def from_hf(cls, preprocessor: dict[str, Any] | None, config: dict[str, Any] | None = None) -> DataSpec:
        """The data config of an HF model folder: its `preprocessor_config.json` (input size, crop_pct,
        resample, mean/std; HF's ConvNeXt defaults where absent) and `config.json` (num_channels, and id2label
        unless it holds only HF's placeholder "LABEL_i" names)."""
        pre, config = preprocessor or {}, config or {}
        size = pre.get("size", config.get("image_size", 224))
        if isinstance(size, dict):
            size = size.get("shortest_edge") or (size["height"], size["width"])
        size = (size, size) if isinstance(size, int) else tuple(size)
        labels = config.get("id2label") or {}
        names = tuple(labels[k] for k in sorted(labels, key=int)) if labels else None
        if names and all(n == f"LABEL_{i}" for i, n in enumerate(names)):
            names = None
        squash = min(size) >= 384  # ConvNextImageProcessor warps to size x size at 384 and above
        return cls(
            in_chans=int(config.get("num_channels", 3)), input_size=size,
            mean=tuple(pre.get("image_mean", IMAGENET_MEAN)), std=tuple(pre.get("image_std", IMAGENET_STD)),
            # HF's processor resamples bilinearly unless told; without any processor file, the paper's bicubic
            interpolation=_PIL_RESAMPLE.get(pre.get("resample", 2 if pre else 3), "bicubic"),
            crop_pct=1.0 if squash else float(pre.get("crop_pct") or 224 / 256),
            crop_mode="squash" if squash else "center", class_names=names,
        )


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ("," if len(values) == 1 else "") + ")"


def data_spec(data_cfg, in_chans: int, classes: Sequence[str] | None = None) -> DataSpec:
    """The data config (`DataSpec`) of a model trained on the recipe's data section `data_cfg` (a `DataConfig`,
    or its dict as a checkpoint's recipe holds it): what its checkpoints carry so that predict, eval and export
    prepare images the way evaluation did.

    Fashion-MNIST: 28x28, its mean/std and ten names. An image folder: the eval transform of `build_datasets`
    (input size, interpolation, crop_pct 0.875 below 384 and squash at 384 and above unless the recipe sets
    one; ImageNet's mean/std) and `classes`, by default the class folders of root/train_split if they exist.
    """
    c = data_cfg if isinstance(data_cfg, Mapping) else dataclasses.asdict(data_cfg)
    if c.get("dataset") == "fashion_mnist":
        # 28x28 inputs normalised, no resize or crop (the eval transform's crop_pct 1.0 at size 28)
        return DataSpec(in_chans=in_chans, input_size=(28, 28), mean=FASHION_MNIST_MEAN * in_chans,
                        std=FASHION_MNIST_STD * in_chans, interpolation="bilinear", crop_pct=1.0,
                        class_names=tuple(classes or FASHION_MNIST_CLASSES))
    spec = DataSpec.for_channels(in_chans, interpolation=c.get("interpolation") or "bicubic")
    spec = spec.at_size(int(c.get("input_size") or 224))
    if c.get("crop_pct") is not None:  # eval_transform: an explicit crop_pct means resize + center crop
        spec = spec.replace(crop_pct=float(c["crop_pct"]), crop_mode="center")
    if not classes and c.get("root"):
        split = Path(c["root"]) / (c.get("train_split") or "train")
        classes = sorted(d.name for d in split.iterdir() if d.is_dir() and not d.name.startswith(".")) \
            if split.is_dir() else None
    return spec.replace(class_names=tuple(classes) if classes else None)
