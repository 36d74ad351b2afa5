"""Fashion-MNIST-C: is a small ConvNeXt more robust to common corruptions than a ResNet of similar cost?

Both models are trained with the same recipe (the built-in `fashion_mnist` recipe, same epochs, seed and
augmentation) through `convnext.train`; Fashion-MNIST-C is the first N test images under the 15 ImageNet-C
corruptions x 5 severities, written by `convnext corrupt`. The ResNet is the baseline that normalises the
ConvNeXt's corruption errors (AlexNet numbers exist only for ImageNet), so its own mCE is 100 by definition.

    PYTHONPATH=src nice -n 10 python benchmarks/fashion_mnist_c.py --epochs 4 --limit 1000

Prints a Markdown table and writes it with the raw numbers to benchmarks/fashion_mnist_c.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torchvision.transforms as T
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

from convnext.data.datasets import fashion_mnist
from convnext.data_config import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from convnext.flops import count_macs, count_params
from convnext.robustness import evaluate_corruptions, summarize
from convnext.robustness.corrupt import fashion_mnist_samples, write_corrupted
from convnext.robustness.evaluate import top1_error
from convnext.train.classification import build_model, train
from convnext.train.config import load_config

HERE = Path(__file__).resolve().parent


def small_resnet(widths: tuple[int, int, int] = (24, 48, 96), depths: tuple[int, int, int] = (2, 2, 2)) -> nn.Module:
    """A 3-stage ResNet (2+2+2 BasicBlocks, BatchNorm, ReLU) for 28x28 grayscale: timm's deep 3x3 stem at stride 2
    without the max pool, so its stages run at 14, 7 and 4 pixels like the small ConvNeXt's 14, 7 and 3."""
    model = ResNet(BasicBlock, depths, num_classes=10, in_chans=1, channels=widths, stem_width=widths[0] // 2,
                   stem_type="deep")
    model.maxpool = nn.Identity()
    model.layer4 = nn.Identity()  # timm's forward always calls a 4th stage
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--limit", type=int, default=1000, help="test images in Fashion-MNIST-C")
    p.add_argument("--workdir", default="/tmp/fashion_mnist_c")
    p.add_argument("--resnet-widths", type=int, nargs=3, default=(24, 48, 96))
    p.add_argument("--out", default=str(HERE / "fashion_mnist_c"))
    p.add_argument("--max-steps", type=int, help="stop each training after N steps (a smoke test)")
    p.add_argument("--limit-train", type=int, help="train on the first N training images only")
    p.add_argument("--eval-limit", type=int, help="score N evenly spaced images of each corrupted folder")
    args = p.parse_args()
    work = Path(args.workdir)
    t0 = time.time()

    # 1. the corrupted copy (skipped when already written with the same size)
    data_c = work / "data_c"
    manifest = data_c / "corruptions.json"
    if not manifest.exists() or json.loads(manifest.read_text())["images"] != args.limit:
        n, samples = fashion_mnist_samples(limit=args.limit)
        write_corrupted(samples, data_c, seed=0, total=n)
    t_corrupt = time.time() - t0

    # 2. both models, one recipe
    overrides = [f"optim.epochs={args.epochs}", f"run.out_dir={work / 'runs'}", f"run.eval_every={args.epochs}",
                 "run.progress=false", "run.tensorboard=false", "run.plots=false",
                 "run.tta=none"]  # the engine's clean score must be the same plain scoring as the corrupted ones
    if args.max_steps:
        overrides.append(f"run.max_steps={args.max_steps}")
    if args.limit_train:
        overrides.append(f"data.limit_train={args.limit_train}")
    cfg = load_config("fashion_mnist", overrides)
    torch.manual_seed(0)
    convnext = build_model(cfg, num_classes=10, in_chans=1)
    torch.manual_seed(0)
    resnet = small_resnet(tuple(args.resnet_widths))
    models = {"ConvNeXt (convnext_fmnist)": convnext, f"ResNet 2-2-2 {tuple(args.resnet_widths)}": resnet}
    results = {}
    stamp = time.strftime("%H%M%S")
    for (name, model), run_name in zip(models.items(), ("convnext", "resnet"), strict=True):
        cfg.run.name = f"{run_name}_{stamp}"  # a fresh run folder: the engine refuses to overwrite one
        t = time.time()
        res = train(cfg, model=model)
        results[name] = {"train_s": time.time() - t, "recipe_best_top1": res.best_top1,
                         "params_M": count_params(model) / 1e6, "MMACs": count_macs(model, 28, in_chans=1) / 1e6}

    # 3. evaluation: the final (non-EMA) weights of both, clean and corrupted
    transform = T.Compose([T.ToTensor(), T.Normalize(FASHION_MNIST_MEAN, FASHION_MNIST_STD)])
    x, y = fashion_mnist(train=False)
    clean = torch.utils.data.TensorDataset((x.float() / 255 - FASHION_MNIST_MEAN[0]) / FASHION_MNIST_STD[0], y)
    # The clean versions of exactly the images scored corrupted: the folders list them by class folder then
    # file name, and --eval-limit takes evenly spaced ones of that order (as top1_error does).
    folder_order = sorted(range(args.limit), key=lambda i: (str(int(y[i])), i))
    n_eval = args.eval_limit or args.limit
    same_images = [folder_order[int(k * args.limit / n_eval)] for k in range(n_eval)]
    errors = {}
    for name, model in models.items():
        model = model.float().eval().to(memory_format=torch.contiguous_format)
        results[name]["clean_error"] = top1_error(model, clean, workers=0, batch_size=500)
        results[name]["clean_error_subset"] = top1_error(model, torch.utils.data.Subset(clean, same_images),
                                                         workers=0, batch_size=500)
        errors[name] = evaluate_corruptions(model, data_c, transform, image_mode="L", workers=0, batch_size=500,
                                            limit=args.eval_limit)
    base_name = list(models)[1]
    for name in models:
        s = summarize(errors[name], results[name]["clean_error_subset"], errors[base_name],
                      results[base_name]["clean_error_subset"])
        results[name].update(mce=s["mce"], relative_mce=s.get("relative_mce", float("nan")),
                             unnormalized_mce=s["unnormalized_mce"], corruption_errors=s["corruption_mean_errors"],
                             severity_errors=s["severity_errors"], ce=s["ce"])

    rows = ["| model | params (M) | MMACs (28x28) | train (s) | clean top-1 (10k) | corrupted top-1 (mean) "
            "| mCE (ResNet = 100) | relative mCE | unnormalised mCE |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        rows.append(f"| {name} | {r['params_M']:.2f} | {r['MMACs']:.1f} | {r['train_s']:.0f} "
                    f"| {100 * (1 - r['clean_error']):.2f} | {100 * (1 - r['unnormalized_mce']):.2f} "
                    f"| {100 * r['mce']:.1f} | {100 * r['relative_mce']:.1f} | {100 * r['unnormalized_mce']:.1f} |")
    per_c = ["| corruption | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for c in next(iter(errors.values())):
        per_c.append(f"| {c} | " + " | ".join(f"{100 * results[n]['corruption_errors'][c]:.1f}" for n in models)
                     + " |")
    env = (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
           f"{torch.__version__}; recipe fashion_mnist, {args.epochs} epochs each on "
           f"{args.limit_train or 60000} training images; Fashion-MNIST-C = "
           f"{args.eval_limit or args.limit} of the first {args.limit} test images x 15 corruptions x 5 "
           f"severities; corruption {t_corrupt:.0f} s, total {time.time() - t0:.0f} s")
    table = "\n".join(rows) + "\n\nTop-1 error (%) per corruption, mean over severities:\n\n" + "\n".join(per_c)
    print(table + "\n\n" + env)
    Path(args.out + ".json").write_text(json.dumps({"env": env, "results": results, "errors": errors}, indent=2))
    Path(args.out + ".md").write_text(table + "\n\n" + env + "\n")


if __name__ == "__main__":
    main()
