"""FCMAE on Fashion-MNIST: the pretraining loss after a few steps at a given lr (batch 256, AdamW betas 0.95,
20 warmup steps), to choose recipes/v2/fcmae_fashion_mnist.yaml's lr. Appends a line to fcmae_fmnist_lr.jsonl.

    PYTHONPATH=src python benchmarks/fcmae_fmnist_lr.py 2e-3 --steps 160 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from convnext.benchmark import cpu_name
from convnext.data.datasets import FASHION_MNIST_MEAN, FASHION_MNIST_STD, fashion_mnist
from convnext.pretrain import build_fcmae, fcmae_loss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("lr", type=float)
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images, _ = fashion_mnist(train=True)
    x = (images.float().div(255) - FASHION_MNIST_MEAN[0]) / FASHION_MNIST_STD[0]
    torch.manual_seed(0)
    model = build_fcmae("convnextv2_fmnist", in_chans=1, decoder_embed_dim=128)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.05)
    g = torch.Generator().manual_seed(0)
    start, losses = time.time(), []
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / 20)
        loss = fcmae_loss(model, x[torch.randint(0, len(x), (256,), generator=g)])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    record = {"lr": args.lr, "steps": args.steps, "seconds": round(time.time() - start),
              "loss_per_20_steps": [round(sum(losses[i:i + 20]) / len(losses[i:i + 20]), 3)
                                    for i in range(0, args.steps, 20)],
              "cpu": cpu_name(), "threads": args.threads, "load_avg_1m": os.getloadavg()[0]}
    print(json.dumps(record))
    with open(Path(__file__).with_name("fcmae_fmnist_lr.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
