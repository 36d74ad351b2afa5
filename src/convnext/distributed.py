"""torch.distributed set-up for torchrun (one process per device, any number of nodes), a resumable
deterministic sampler, and the small collective helpers training and evaluation need.

Run on many GPUs or nodes with torchrun, e.g. `torchrun --nproc_per_node 8 -m convnext train --recipe in1k_tiny`
(multi-node: add `--nnodes N --node_rank R --rdzv_endpoint HOST:PORT`). Without torchrun, everything runs in
one process and none of this is needed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, writes checkpoints and plots."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the torchrun job if there is one (NCCL on CUDA, gloo on CPU); a single-process DistInfo otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return DistInfo(rank, world, local)


def cleanup() -> None:
    """Leave the process group (if this process joined one), once every rank got here."""
    if dist.is_available() and dist.is_initialized():
        # A rank that tears gloo down while another still talks to it can abort ("terminate called without an
        # active exception", seen once in the 2-process FSDP test on a loaded machine).
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum numbers over all ranks (a no-op in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


class ResumableSampler(Sampler):
    """Deterministic epoch-seeded shuffling, sharded across ranks so that the ranks together see exactly the
    batches a single process would, and able to start mid-epoch.

    Each epoch's order is a permutation drawn from (seed, epoch). Global batch k is `order[k*B:(k+1)*B]`
    with B = batch_size * world_size; rank r takes its every world_size-th element, so the union over ranks
    of their k-th batches is the single-process k-th batch. Each item is `(index, sample_seed)`: the data set
    seeds its random augmentation from `sample_seed`, which depends only on (seed, epoch, position), so an
    image's augmentation does not depend on worker processes, ranks or resumption.

    The last incomplete global batch is dropped (training); use `set_epoch(epoch, start_batch)` to resume.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True) -> None:
        self.n, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world = rank, world_size
        self.shuffle = shuffle
        self.epoch, self.start_batch = 0, 0
        if self.batches_per_epoch == 0:
            raise ValueError(f"{num_samples} training images are fewer than one global batch "
                             f"({batch_size} x {world_size} ranks); lower optim.batch_size")

    @property
    def batches_per_epoch(self) -> int:
        """Complete global batches per epoch."""
        return self.n // (self.batch_size * self.world)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Iterate over `epoch`, beginning at its batch `start_batch`."""
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        sample_seeds = torch.randint(0, 2**62, (self.n,), generator=g)
        gb = self.batch_size * self.world
        for k in range(self.start_batch, self.batches_per_epoch):
            for pos in range(k * gb + self.rank, (k + 1) * gb, self.world):
                yield int(order[pos]), int(sample_seeds[pos])
