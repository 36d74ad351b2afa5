"""FLOP and parameter counting with torch.utils.flop_counter (GMACs = FLOPs / 2, as the paper counts)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Number of parameters (all of them, trainable or not)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, size: int | tuple[int, int] = 224, in_chans: int = 3) -> int:
    """Multiply-accumulates of one forward pass on a single image of `size` (an int or (H, W)).

    Counted on the "meta" device where the model allows it, so even XL at 384 costs no memory or time.
    """
    h, w = (size, size) if isinstance(size, int) else size
    x = torch.zeros(1, in_chans, h, w, device=next(model.parameters()).device)
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() // 2
