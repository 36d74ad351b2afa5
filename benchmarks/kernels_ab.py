"""A/B timings behind the design choices of `convnext.fast`, each against the alternative it replaced.

On ConvNeXt-T's stage-0 shapes (batch 32, 56x56 pixels, C = 96), fp32 unless said, in one process under the
tuned allocator, the two sides of each pair alternating (median of --reps runs after 2 warm-ups, in ms):

- pwconv1 forward: ATen's `F.linear` (addmm) against oneDNN's matmul (`mkldnn._linear_pointwise`), which the
  training MLP uses (fast/mlp.py);
- pwconv1's weight gradient: `x^T dh` against `dh^T x` (the orientation fast/mlp.py computes);
- the block's MLP forward + backward under bf16 autocast: autocast's Linear layers against `pointwise_mlp`'s
  oneDNN bf16 path (where the CPU computes bf16 in hardware), and the same two in ConvNeXt-T's whole bf16
  training step (batch 32 at 224, no optimizer step);
- the depthwise 7x7 conv, forward + backward: bf16 against fp32 (why it stays fp32 under autocast, fast/block.py);
- a frozen block (fast/block.py `FrozenBlock`) at stage 0 and stage 2 (384 channels at 14x14), fp32 and bf16:
  the MLP on 2048-pixel tiles (what it did until 2026-12-08) against the whole tensor at once, and weights packed
  in oneDNN's layout (what `freeze` ships where oneDNN's fused Linear serves the dtype) against plain ones;
  the same for the whole frozen ConvNeXt-T in bf16 at batch 32 and 1.

Each run is APPENDED to benchmarks/results/kernels.jsonl and benchmarks/kernels.md is regenerated from it.

    PYTHONPATH=src python benchmarks/kernels_ab.py [--threads 2] [--reps 7]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import statistics
import sys
import time
import unittest.mock
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import convnext  # noqa: E402
from convnext import fast, tune_malloc  # noqa: E402
from convnext.benchmark import cpu_name, load_averages  # noqa: E402
from convnext.fast import block as fast_block  # noqa: E402
from convnext.fast import mlp as fast_mlp  # noqa: E402
from convnext.fast.mlp import pointwise_mlp  # noqa: E402
from convnext.models.layers import Block  # noqa: E402

HERE = Path(__file__).resolve().parent
HISTORY = HERE / "results" / "kernels.jsonl"
N, C, S = 32, 96, 56  # ConvNeXt-T stage 0 at batch 32


def pair(a: Callable[[], object], b: Callable[[], object], reps: int) -> tuple[float, float]:
    """Median ms of `a` and of `b`, run alternately after 2 warm-ups each."""
    for _ in range(2):
        a()
        b()
    ta, tb = [], []
    for _ in range(reps):
        for fn, t in ((a, ta), (b, tb)):
            start = time.perf_counter()
            fn()
            t.append(time.perf_counter() - start)
    return statistics.median(ta) * 1e3, statistics.median(tb) * 1e3


def measure(reps: int) -> list[dict]:
    rows = []

    def add(what: str, a_label: str, b_label: str, times: tuple[float, float]) -> None:
        rows.append({"what": what, "a": a_label, "b": b_label, "a_ms": round(times[0], 2),
                     "b_ms": round(times[1], 2), "b_over_a": round(times[1] / times[0], 3)})
        print(f"{what}: {a_label} {times[0]:.1f} ms, {b_label} {times[1]:.1f} ms", flush=True)

    g = torch.Generator().manual_seed(0)
    m = N * S * S
    x = torch.randn(m, C, generator=g)
    w1, b1 = torch.randn(4 * C, C, generator=g) * 0.1, torch.zeros(4 * C)
    with torch.no_grad():
        add("pwconv1 forward (M x 96 -> 384)", "F.linear (addmm)", "oneDNN _linear_pointwise",
            pair(lambda: F.linear(x, w1, b1), lambda: torch.ops.mkldnn._linear_pointwise(x, w1, b1, "none", [], ""),
                 reps))
        dh = torch.randn(m, 4 * C, generator=g)
        add("pwconv1 weight gradient (384 x 96)", "dh^T x", "(x^T dh)^T",
            pair(lambda: dh.t().mm(x), lambda: x.t().mm(dh).t(), reps))

    if fast.capabilities().native_bf16 and fast.capabilities().linear_kernels(torch.bfloat16):
        add("block MLP forward + backward under bf16 autocast (+ fp32 shortcut)", "autocast's F.linear (addmm)",
            "pointwise_mlp (oneDNN bf16)", pair(_mlp_step(autocast_mlp, g), _mlp_step(pointwise_mlp, g), reps))
        add("ConvNeXt-T training step under bf16 autocast (forward, loss, backward; batch 32)",
            "MLP through autocast's Linear", "MLP through pointwise_mlp (oneDNN bf16)", _model_step_pair(g, reps))

    act = torch.randn(N, C, S, S, generator=g).contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(C, C, 7, padding=3, groups=C)

    def dw_step(dtype: torch.dtype) -> Callable[[], None]:
        xi = act.to(dtype).requires_grad_()
        layer = torch.nn.Conv2d(C, C, 7, padding=3, groups=C).to(dtype)
        layer.load_state_dict(conv.state_dict())

        def step() -> None:
            layer(xi).sum().backward()
            xi.grad = None
            layer.zero_grad(set_to_none=True)

        return step

    add("depthwise 7x7 conv forward + backward (PyTorch's)", "fp32", "bf16",
        pair(dw_step(torch.float32), dw_step(torch.bfloat16), reps))

    for c, size in ((C, S), (4 * C, S // 4)):  # stage 0 and stage 2 of ConvNeXt-T
        block = Block(c, layer_scale_init_value=1.0).eval()
        with torch.no_grad():
            for p in block.parameters():
                p.uniform_(-0.1, 0.1)
        for dtype in (torch.float32, torch.bfloat16):
            if not fast.capabilities().linear_kernels(dtype):  # tiles and packing exist for oneDNN's Linear only
                continue
            act = torch.randn(N, c, size, size, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
            frozen = fast_block.FrozenBlock(block, dtype)
            name = {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]
            with torch.inference_mode():
                add(f"frozen block, {c} channels at {size}x{size} ({name}, packed weights)", "2048-pixel tiles",
                    "whole tensor (shipped)", pair(lambda f=frozen, a=act: _tiled(f, a), lambda f=frozen, a=act: f(a),
                                                   reps))
            with _plain_weights():
                other = fast_block.FrozenBlock(block, dtype)
            with torch.inference_mode():
                add(f"frozen block, {c} channels at {size}x{size} ({name}, whole tensor)", "packed weights (shipped)",
                    "plain weights",
                    pair(lambda f=frozen, a=act: f(a), lambda f=other, a=act: f(a), reps))
    if fast.capabilities().linear_kernels(torch.bfloat16):
        model = convnext.create_model("convnext_tiny").eval()
        with torch.no_grad():  # away from the near-identity init, as a trained model is
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g), alpha=0.02)
        packed = convnext.freeze(model, torch.bfloat16)
        with _plain_weights():
            plain = convnext.freeze(model, torch.bfloat16)
        for batch in (32, 1):
            xb = torch.randn(batch, 3, 224, 224, generator=g).to(torch.bfloat16)
            with torch.inference_mode():
                add(f"frozen ConvNeXt-T, bf16, batch {batch}", "packed weights (shipped)", "plain weights",
                    pair(lambda x=xb: packed(x), lambda x=xb: plain(x), reps if batch > 1 else 5 * reps))
    return rows


@contextlib.contextmanager
def _plain_weights() -> Iterator[None]:
    """FrozenBlocks made within keep their folded weights plain (unpacked); they still run oneDNN's fused Linear,
    which `mlp_inference` chooses per call."""
    with unittest.mock.patch.object(fast_block, "onednn_fusion", lambda t: False):
        yield


def _tiled(frozen: fast_block.FrozenBlock, x: torch.Tensor, tile: int = 2048) -> torch.Tensor:
    """`frozen`'s block with its MLP run on `tile` pixels at a time, as FrozenBlock did until 2026-12-08: a tile's
    4C-wide activation can stay in cache between the two matmuls."""
    y = F.conv2d(x, frozen.dw_w, frozen.dw_b, padding=frozen.padding, groups=frozen.groups)
    n, c, h, w = y.shape
    y, shortcut = y.permute(0, 2, 3, 1).reshape(-1, c), x.permute(0, 2, 3, 1).reshape(-1, c)
    out = torch.empty_like(y)
    for r in range(0, y.shape[0], tile):
        t = F.layer_norm(y[r:r + tile], (c,), None, None, frozen.eps)
        t = torch.ops.mkldnn._linear_pointwise(t, frozen.w1, frozen.b1, "gelu", [], "none")
        out[r:r + tile] = torch.ops.mkldnn._linear_pointwise.binary(t, shortcut[r:r + tile], frozen.w2, frozen.b2,
                                                                    "add")
    return out.view(n, h, w, c).permute(0, 3, 1, 2)


def autocast_mlp(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                 shortcut: torch.Tensor) -> torch.Tensor:
    """The MLP as the reference block computes it: autocast casts for F.linear, the add in fp32."""
    return shortcut + F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)


def _mlp_step(mlp: Callable[..., torch.Tensor], g: torch.Generator) -> Callable[[], None]:
    """One forward + backward of `mlp` at stage 0 under bf16 autocast, fp32 inputs and parameters."""
    x, shortcut = (torch.randn(N, S, S, C, generator=g).requires_grad_() for _ in range(2))
    params = [(torch.randn(*s, generator=g) * 0.1).requires_grad_() for s in ((4 * C, C), (4 * C,), (C, 4 * C), (C,))]

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = mlp(x, *params, shortcut=shortcut)
        y.sum().backward()
        for t in (x, shortcut, *params):
            t.grad = None

    return step


def _model_step_pair(g: torch.Generator, reps: int) -> tuple[float, float]:
    """ConvNeXt-T's bf16 training step, optimized, with the block MLP through autocast's Linear (A: what ran before
    the bf16 path of `pointwise_mlp`) and through `pointwise_mlp`'s bf16 path (B), one model, alternating."""
    model = convnext.create_model("convnext_tiny", optimize=True)
    x, y = torch.randn(N, 3, 224, 224, generator=g), torch.randint(0, 1000, (N,), generator=g)
    fused_dtype = fast_mlp._fused_dtype

    def step(bf16_mlp: bool) -> None:
        fast_mlp._fused_dtype = fused_dtype if bf16_mlp else (
            lambda x, w1, shortcut: None if torch.is_autocast_enabled("cpu") else fused_dtype(x, w1, shortcut))
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            model.zero_grad(set_to_none=True)
        finally:
            fast_mlp._fused_dtype = fused_dtype

    return pair(lambda: step(False), lambda: step(True), reps)


def render(records: list[dict]) -> str:
    lines = ["# Kernel A/B timings (`python benchmarks/kernels_ab.py`)", "",
             "Generated from [results/kernels.jsonl](results/kernels.jsonl), newest run first. Each pair ran "
             "alternately in one process (median ms); ConvNeXt-T stage-0 shapes, batch 32.", ""]
    for r in sorted(records, key=lambda r: r["date"], reverse=True):
        lines += [f"## {r['date']}, commit {r.get('commit')}: {r['cpu']} ({r['isa']}), {r['threads']} threads", "",
                  f"torch {r['torch']}; load average (1/5/15 min) before {r['load_avg_before']}, after "
                  f"{r['load_avg_after']}; {r['reps']} runs per side" + (f"; note: {r['note']}" if r.get("note")
                                                                          else ""), "",
                  "| what | A | A ms | B | B ms | B / A |", "|---|---|---|---|---|---|"]
        lines += [f"| {x['what']} | {x['a']} | {x['a_ms']} | {x['b']} | {x['b_ms']} | {x['b_over_a']:.2f} |"
                  for x in r["rows"]]
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    tune_malloc()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(HERE))
    from run_all import git_commit

    before = load_averages()
    rows = measure(args.reps)
    record = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": git_commit(),
              "command": "PYTHONPATH=src python benchmarks/kernels_ab.py", "cpu": cpu_name(),
              "isa": fast.capabilities().isa, "cores": os.cpu_count(), "threads": args.threads,
              "torch": torch.__version__, "reps": args.reps, "load_avg_before": before,
              "load_avg_after": load_averages(), "note": args.note, "rows": rows}
    HISTORY.parent.mkdir(parents=True, exist_ok=True)
    with open(HISTORY, "a") as f:
        f.write(json.dumps(record) + "\n")
    records = [json.loads(line) for line in HISTORY.read_text().splitlines() if line.strip()]
    (HERE / "kernels.md").write_text(render(records))
    print(f"appended to {HISTORY}; wrote {HERE / 'kernels.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
