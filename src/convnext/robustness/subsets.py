"""ImageNet-A / ImageNet-R cover 200 of the 1000 ImageNet classes: their indices and the logit masking.

The index and synset lists are timm's (`timm/data/_info/`), so they are never typed by hand here.
"""

from __future__ import annotations

import pkgutil
from collections.abc import Sequence
from functools import cache

import torch

SUBSETS = ("imagenet-a", "imagenet-r")


def _timm_list(name: str) -> list[str]:
    data = pkgutil.get_data("timm.data", f"_info/{name}")
    if data is None:
        raise FileNotFoundError(f"timm ships no {name}; upgrade timm (>= 0.9)")
    return [line.strip() for line in data.decode().splitlines() if line.strip()]


@cache
def imagenet_synsets() -> tuple[str, ...]:
    """The 1000 ImageNet-1k WordNet ids (n01440764, ...) in class-index order."""
    return tuple(_timm_list("imagenet_synsets.txt"))


@cache
def subset_indices(subset: str) -> tuple[int, ...]:
    """The 1000-class indices of the 200 classes of "imagenet-a" or "imagenet-r", ascending."""
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, not {subset!r}")
    key = subset.replace("-", "_")
    indices = tuple(int(i) for i in _timm_list(f"{key}_indices.txt"))
    synsets = _timm_list(f"{key}_synsets.txt")
    # timm's two files must agree with its 1k synset list; check rather than trust the line order.
    all_synsets = imagenet_synsets()
    if [all_synsets[i] for i in indices] != synsets:
        raise RuntimeError(f"timm's {key} index and synset lists disagree; reinstall timm")
    return indices


def masked_predictions(logits: torch.Tensor, keep: Sequence[int] | torch.Tensor | None) -> torch.Tensor:
    """Top-1 class indices (in the 1000-class numbering) when only the classes in `keep` may be predicted.

    This is the ImageNet-A/-R protocol: the 1000-way classifier's logits restricted to the data set's
    200 classes, then the argmax among those. `keep=None` is the plain argmax.
    """
    if keep is None:
        return logits.argmax(dim=-1)
    keep = torch.as_tensor(keep, dtype=torch.long, device=logits.device)
    return keep[logits.index_select(-1, keep).argmax(dim=-1)]
