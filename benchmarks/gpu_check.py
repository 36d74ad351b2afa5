"""The first GPU run: every path that would run on CUDA, checked against the float64 reference, in one go.

No session had a GPU when these paths were written, so none of them has run on one. This script runs them all
and records what it saw in benchmarks/gpu_check.jsonl (append-only), with the device named:

1. inference: `create_model` (optimized) and `convnext.freeze`, fp32, bf16 and fp16 autocast, against the
   reference in float64 on the same device, relative to the fp32 (or low-precision) reference's own error;
2. a training step's gradients in fp32, bf16 autocast, and fp16 autocast with a GradScaler;
3. `convnext train` (the shared loop) for a few steps with amp fp16 (GradScaler) and bf16 on a generated image
   folder, which must end with finite weights;
4. 2-process DDP with NCCL under torchrun against 1 process, when the machine has 2 GPUs (NCCL cannot put two
   ranks on one device; with one GPU this part is recorded as skipped).

    python benchmarks/gpu_check.py                 # on a CUDA machine: about 2 minutes
    python benchmarks/gpu_check.py --device cpu    # the same checks on the CPU (gloo), to keep the script honest
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import convnext  # noqa: E402
from convnext.benchmark import cpu_name  # noqa: E402

SMALL = dict(depths=(1, 1, 2, 1), dims=(32, 64, 96, 128), num_classes=10)
FACTOR = 8.0  # as tests/numerics.py: a few times the reference's own rounding error


def rel(got: torch.Tensor, exact: torch.Tensor) -> float:
    got, exact = got.detach().double().flatten(), exact.detach().double().flatten()
    return float((got - exact).norm() / exact.norm().clamp_min(1e-300))


def perturbed(device: torch.device) -> torch.nn.Module:
    """A small ConvNeXt with gamma, LN and biases far from their init, so folding and fusing are really tested."""
    torch.manual_seed(0)
    model = convnext.create_model("convnext_atto", optimize=False, **SMALL)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma") or (".norm" in name and name.endswith("weight")):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.to(device)


def check(results: list[dict], name: str, got: torch.Tensor, ref: torch.Tensor, exact: torch.Tensor) -> None:
    e_got, e_ref = rel(got, exact), rel(ref, exact)
    finite = bool(torch.isfinite(got).all())
    ok = finite and e_got <= FACTOR * max(e_ref, 2.0**-24)
    results.append({"check": name, "ok": ok, "finite": finite, "error": e_got, "reference_error": e_ref})
    print(f"{'ok  ' if ok else 'FAIL'} {name}: error {e_got:.2e}, the reference's own {e_ref:.2e}")


def inference(device: torch.device, results: list[dict]) -> None:
    ref = perturbed(device).eval()
    exact_model = copy.deepcopy(ref).double()
    x = torch.randn(8, 3, 96, 96, device=device)
    with torch.no_grad():
        exact = exact_model(x.double())
        fast = convnext.optimize(copy.deepcopy(ref))
        check(results, "inference fp32 optimized", fast(x), ref(x), exact)
        check(results, "inference fp32 frozen", convnext.freeze(ref)(x), ref(x), exact)
        for dtype in (torch.bfloat16, torch.float16):
            if device.type == "cpu" and dtype == torch.float16:
                continue
            with torch.autocast(device.type, dtype=dtype):
                low_ref = ref(x).float()
                check(results, f"inference {dtype} autocast optimized", fast(x).float(), low_ref, exact)
            check(results, f"inference {dtype} frozen", convnext.freeze(ref, dtype)(x.to(dtype)).float(), low_ref,
                  exact)


def training(device: torch.device, results: list[dict]) -> None:
    x = torch.randn(8, 3, 96, 96, device=device)
    target = torch.randint(0, 10, (8,), device=device)

    def grads(model, dtype, scaler=None, double=False):
        model.train()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(x.double() if double else x)
        loss = torch.nn.functional.cross_entropy(out.float() if not double else out, target)
        (scaler.scale(loss) if scaler else loss).backward()
        scale = scaler.get_scale() if scaler else 1.0
        return torch.cat([p.grad.flatten() / scale for p in model.parameters()])

    ref = perturbed(device)
    exact = grads(copy.deepcopy(ref).double(), None, double=True)
    check(results, "train fp32 gradients", grads(convnext.optimize(copy.deepcopy(ref)), None),
          grads(copy.deepcopy(ref), None), exact)
    for dtype in (torch.bfloat16, torch.float16):
        if device.type == "cpu" and dtype == torch.float16:
            continue
        scaler = (lambda: torch.amp.GradScaler(device.type)) if dtype == torch.float16 else (lambda: None)
        check(results, f"train {dtype} autocast gradients" + (" (GradScaler)" if dtype == torch.float16 else ""),
              grads(convnext.optimize(copy.deepcopy(ref)), dtype, scaler()),
              grads(copy.deepcopy(ref), dtype, scaler()), exact)


def image_folder(root: Path) -> Path:
    """A tiny generated ImageFolder (train/ and val/, 2 classes) for the end-to-end runs."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 32), ("val", 8)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
                Image.fromarray(img).save(root / split / c / f"{i}.png")
    return root


def train_runs(device: torch.device, work: Path, results: list[dict]) -> None:
    data = image_folder(work / "data")
    base = ["--recipe", "in1k_tiny", "--set", f"data.root={data}", "--set", "data.input_size=32",
            "--set", "data.num_workers=0", "--set", "model.name=convnext_atto", "--set", "model.kwargs.patch_size=2",
            "--set", "optim.batch_size=8", "--set", "optim.accum_steps=1", "--set", "optim.epochs=1",
            "--set", "run.progress=false", "--set", f"run.device={device.type}", "--out", str(work)]
    amps = ["fp16", "bf16"] if device.type == "cuda" else ["bf16"]
    for amp in amps:
        t0 = time.time()
        r = subprocess.run([sys.executable, "-m", "convnext", "train", *base, "--name", f"amp-{amp}",
                            "--set", f"run.amp={amp}"], capture_output=True, text=True, env=_env())
        ck = _latest(work / f"amp-{amp}")
        finite = r.returncode == 0 and ck is not None and all(
            torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
        results.append({"check": f"convnext train amp={amp}", "ok": finite, "seconds": time.time() - t0,
                        "stderr_tail": r.stderr[-500:] if not finite else ""})
        print(f"{'ok  ' if finite else 'FAIL'} convnext train amp={amp} ({time.time() - t0:.0f} s)")
    gpus = torch.cuda.device_count() if device.type == "cuda" else 2
    if gpus < 2:
        results.append({"check": "2-process DDP (NCCL)", "ok": None,
                        "skipped": f"{gpus} GPU: NCCL cannot place two ranks on one device"})
        print("skip 2-process DDP: one GPU")
        return
    common = ["--set", "optim.epochs=1", "--set", "run.max_steps=3", "--set", "data.mixup=0.0", "--set",
              "data.cutmix=0.0", "--set", "run.ema=false", "--set", "model.drop_path_rate=0.0", "--set",
              "run.amp=none", "--set", "data.auto_augment=null", "--set", "data.reprob=0"]
    subprocess.run([sys.executable, "-m", "convnext", "train", *base, *common, "--name", "one"], check=True,
                   capture_output=True, env=_env())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                        f"--master_port={port}", "-m", "convnext", "train", *base, *common, "--name", "two",
                        "--set", "optim.batch_size=4"], capture_output=True, text=True, env=_env())
    a, b = _latest(work / "one"), _latest(work / "two")
    worst = max((a["model"][k] - b["model"][k]).abs().max().item() for k in a["model"]) if a and b else float("inf")
    ok = r.returncode == 0 and worst < 1e-4
    results.append({"check": "2-process DDP vs 1 process", "ok": ok, "max_weight_difference": worst,
                    "backend": "nccl" if device.type == "cuda" else "gloo", "stderr_tail": r.stderr[-500:] if not ok
                    else ""})
    print(f"{'ok  ' if ok else 'FAIL'} 2-process DDP vs 1 process: weights within {worst:.1e}")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


def _latest(run: Path) -> dict | None:
    ckpts = sorted(run.glob("last-*.pt"))
    return torch.load(ckpts[-1], map_location="cpu", weights_only=True) if ckpts else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--record", type=Path, default=ROOT / "benchmarks" / "gpu_check.jsonl")
    parser.add_argument("--no-record", action="store_true", help="print only (the test suite's CPU run)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: run it on a GPU machine, or with --device cpu", file=sys.stderr)
        return 2
    results: list[dict] = []
    t0 = time.time()
    inference(device, results)
    training(device, results)
    with tempfile.TemporaryDirectory() as tmp:
        train_runs(device, Path(tmp), results)
    record = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": args.device,
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None, "cpu": cpu_name(),
              "torch": torch.__version__, "seconds": round(time.time() - t0, 1),
              "fast_path": convnext.fast.describe("train", device), "results": results}
    if not args.no_record:
        with open(args.record, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"recorded in {args.record}")
    return 0 if all(r["ok"] is not False for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
