"""What a model expects of its input and what its outputs mean: the data config every checkpoint carries.

The same record for our training runs, our safetensors folders and the official releases (timm's
`pretrained_cfg` / `resolve_data_config`, HF's preprocessor config): input channels and size, normalisation,
the eval resize (interpolation, crop_pct) and the class names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DataSpec:
    """A model's input format and class names.

    `crop_pct`: the eval transform resizes to size / crop_pct and center-crops `input_size` (1.0: resize only).
    `class_names`: one per output, or None where they are not known (then "class i").
    """

    in_chans: int = 3
    input_size: tuple[int, int] = (224, 224)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    class_names: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain lists, numbers and strings: for JSON and for `torch.load(weights_only=True)`."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataSpec:
        """The inverse of `to_dict`; unknown keys are ignored, missing ones take the defaults."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known})
