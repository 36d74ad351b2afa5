"""Helpers shared by the checkpoint and predict tests."""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn


@torch.no_grad()
def randomize(model: nn.Module, scale: float = 0.1) -> nn.Module:
    """Perturb every parameter, so layer scale, norms and biases all change the output (and a swapped or
    dropped tensor shows in the logits)."""
    generator = torch.Generator().manual_seed(1)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=generator) * scale)
    return model.eval()


@contextlib.contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """Serve `directory` over HTTP on 127.0.0.1 from a thread; yields the base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def training_checkpoint(model: nn.Module, data_config=None, recipe: dict | None = None, **extra) -> dict:
    """A checkpoint in the training loop's format: {"model", "model_config", "data_config", "config", ...};
    `data_config=None` writes one from before checkpoints recorded model and data configs (no model_config,
    no data_config: only the recipe says what was trained)."""
    ck = {"model": model.state_dict(), "config": recipe or {}, "epoch": 1, "top1": 50.0, **extra}
    if data_config is not None:
        ck.update(model_config=model.config, data_config=data_config.to_dict())
    return ck


def fmnist_recipe(**model) -> dict:
    """The parts of a resolved Fashion-MNIST recipe a checkpoint reader may look at."""
    return {"recipe": "fashion_mnist", "model": {"name": "convnext_fmnist", "in_chans": None, "kwargs": {}, **model},
            "data": {"dataset": "fashion_mnist", "root": "", "input_size": 28}, "resolved": {"num_classes": 10}}
