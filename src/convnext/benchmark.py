"""`convnext benchmark`: throughput, latency, peak memory and GMACs of ours and the peers' models, one protocol.

Every model in a run sees the same input (fixed batch and size), the same warm-up, the same number of timed
repetitions and the same thread count; the models are interleaved within each repetition, so load from
elsewhere on the machine hits them all alike, and the median, min and max of the repetitions are reported.
A square matmul per dtype gives the machine's peak, and each result states the fraction of it achieved.

Models are named SOURCE:NAME, e.g. ``ours:convnext_tiny``, ``ours:convnext_tiny@reference`` (a compute path),
``ours:runs/fashion_mnist/best.pt`` (a checkpoint: its model, input channels and size),
``timm:swin_tiny_patch4_window7_224``, ``tv:resnet50``, ``hf:convnext_tiny`` and ``ort:convnext_tiny`` (our
model exported to ONNX and run by onnxruntime; inference in fp32 only).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import fast
from .flops import count_macs
from .malloc import is_tuned as malloc_is_tuned
from .models import build_model

PRECISIONS = ("fp32", "bf16", "fp16", "bf16-weights")
MODES = ("infer", "train")
DEFAULT_MODELS = ("ours:convnext_tiny", "timm:convnext_tiny", "tv:convnext_tiny", "timm:swin_tiny_patch4_window7_224",
                  "tv:resnet50")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "bf16-weights": torch.bfloat16}


# ---------------------------------------------------------------------------------------------- backends


@dataclass
class Subject:
    """One model ready to run: `infer(x)` and, for trainable backends, an nn.Module to train."""

    label: str
    module: nn.Module | None
    infer: Callable[[torch.Tensor], Any]
    macs: int
    params: int
    freeze: bool = False  # infer with `convnext.freeze(module, dtype)`, made per precision (ours by default)
    in_chans: int = 3
    num_classes: int = 1000


OURS_VARIANTS = ("frozen", "optimized", "reference")


def _ours(name: str) -> nn.Module:
    """ours:NAME[@VARIANT], NAME a registered model (random weights) or a checkpoint path (its model)."""
    from .api import create_model, load

    name, variant = _ours_variant(name)
    if variant and variant not in OURS_VARIANTS:
        raise ValueError(f"ours:{name}@{variant}: the variant must be one of {', '.join(OURS_VARIANTS)}")
    if is_checkpoint(name):
        return load(name, optimize=variant != "reference")
    return create_model(name, optimize=variant != "reference")


def _ours_variant(name: str) -> tuple[str, str]:
    base, sep, variant = name.rpartition("@")
    return (base, variant) if sep else (name, "")


def is_checkpoint(name: str) -> bool:
    """Whether ours:NAME names a checkpoint file or folder rather than a registered model."""
    return os.path.exists(name) or "/" in name or os.sep in name or name.endswith((".pt", ".pth", ".safetensors"))


def checkpoint_input_size(models: list[str]) -> tuple[int, int] | None:
    """The input size of the first checkpoint among `models` (ours:PATH), from its data config."""
    from .api import read_source

    for spec in models:
        source, _, name = spec.partition(":")
        if source in ("ours", "ort") and is_checkpoint(_ours_variant(name)[0]):
            data_config = read_source(_ours_variant(name)[0]).data_config
            return data_config.input_size if data_config else None  # bare weights: the default, 224
    return None


def _timm(name: str) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=False)


def _torchvision(name: str) -> nn.Module:
    import torchvision

    return torchvision.models.get_model(name, weights=None)


class _LogitsOnly(nn.Module):
    """HF models return an output object; the benchmark wants the logits tensor like every other model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def _hf(name: str) -> nn.Module:
    from transformers import ConvNextConfig, ConvNextForImageClassification

    from .models.registry import MODELS

    spec = MODELS.get(name)
    if spec is None or "depths" not in spec.kwargs:
        raise ValueError(f"hf:{name}: only the hierarchical ConvNeXt sizes are built for HF ({', '.join(MODELS)})")
    cfg = ConvNextConfig(depths=list(spec.kwargs["depths"]), hidden_sizes=list(spec.kwargs["dims"]), num_labels=1000)
    return _LogitsOnly(ConvNextForImageClassification(cfg))


BUILDERS: dict[str, Callable[[str], nn.Module]] = {"ours": _ours, "timm": _timm, "tv": _torchvision, "hf": _hf}


def _onnxruntime(name: str, size: tuple[int, int], threads: int, workdir: Path) -> Callable[[torch.Tensor], Any]:
    """Our model exported with `convnext.export.export_onnx` and run by an onnxruntime CPU session."""
    try:
        import onnxruntime as ort

        from .export import export_onnx
    except ImportError as e:
        raise RuntimeError(f"ort:{name} needs onnxruntime and convnext.export ({e})") from e
    file = re.sub(r"[^\w.-]", "_", name) + ".onnx"  # a checkpoint path becomes one file name inside workdir
    path = export_onnx(_ours(name).eval(), workdir / file, input_size=size)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    return lambda x: session.run(None, {input_name: x.contiguous().numpy()})[0]


def _parse_spec(spec: str) -> tuple[str, str]:
    source, sep, name = spec.partition(":")
    if not sep or not name or source not in (*BUILDERS, "ort"):
        raise ValueError(f"model {spec!r} must be SOURCE:NAME with SOURCE one of {', '.join((*BUILDERS, 'ort'))}, "
                         "e.g. ours:convnext_tiny or timm:swin_tiny_patch4_window7_224")
    return source, name


def build_subject(spec: str, size: tuple[int, int], device: torch.device, threads: int, workdir: Path,
                  channels_last: bool = False, compile_model: bool = False) -> Subject:
    """Build the model `spec` ("SOURCE:NAME") on `device`, with GMACs and params counted on one image."""
    source, name = _parse_spec(spec)
    if source == "ort":
        if device.type != "cpu":
            raise ValueError("the ort backend runs on CPU only")
        reference = _ours(name)
        in_chans = _io(reference)[0]
        return Subject(spec, None, _onnxruntime(name, size, threads, workdir), count_macs(reference, size, in_chans),
                       sum(p.numel() for p in reference.parameters()), in_chans=in_chans)
    model = BUILDERS[source](name)
    in_chans, num_classes = _io(model)
    macs = count_macs(model, size, in_chans)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fn = fast.compile(model) if compile_model else model
    # ours infers frozen (folded, packed weights) unless a variant says otherwise; a frozen model does not compile
    freeze = source == "ours" and name.partition("@")[2] in ("", "frozen") and not compile_model
    return Subject(spec, model, fn, macs, sum(p.numel() for p in model.parameters()), freeze, in_chans, num_classes)


def _io(model: nn.Module) -> tuple[int, int]:
    """(input channels, classes) of one of our models, (3, 1000) for the peers'."""
    config = getattr(model, "config", None) or {}
    return config.get("in_chans", 3), config.get("num_classes", 1000)


def build_for_counting(spec: str, features: bool = False, in_chans: int = 3) -> nn.Module:
    """The model `spec` (our name, or a peer's SOURCE:NAME) built on the meta device: no memory, no compute."""
    with torch.device("meta"):
        if ":" in spec:
            source, _, name = spec.partition(":")
            if source not in BUILDERS:
                raise ValueError(f"{spec!r}: SOURCE must be one of {', '.join(BUILDERS)}")
            return BUILDERS[source](name)
        return build_model(spec, features_only=features, in_chans=in_chans)


# ---------------------------------------------------------------------------------------------- measurement


@dataclass
class Result:
    """One model under one (mode, precision): throughput over the timed repetitions and what it costs."""

    model: str
    mode: str
    precision: str
    batch_size: int
    img_size: tuple[int, int]
    img_per_s: float
    img_per_s_min: float
    img_per_s_max: float
    latency_ms: float
    peak_mem_mb: float | None
    gmacs: float
    params_m: float
    achieved_gflops: float
    peak_fraction: float | None
    times_s: list[float] = field(default_factory=list)


def matmul_peak_gflops(dtype: torch.dtype, device: torch.device, n: int = 4096, reps: int = 5) -> float:
    """Best achieved GFLOP/s of an n x n matmul in `dtype`: the machine's practical dense-compute ceiling."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = math.inf
    for _ in range(reps + 1):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision in ("bf16", "fp16"):
        return torch.autocast(device.type, dtype=_DTYPES[precision])
    return contextlib.nullcontext()


def peak_memory_mb(step: Callable[[], None], device: torch.device) -> float:
    """Peak tensor memory one call of `step` adds on top of what was live before it, in MB.

    CUDA: the caching allocator's peak. CPU: the running sum of the profiler's allocation and free events
    (tensor memory only, like CUDA's figure; library scratch space and allocator caching are not in it).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    from torch.profiler import ProfilerActivity, profile

    # The profiler's C++ side may print its own lines (e.g. "USDT: ... profiler_start") straight to file
    # descriptors 1 and 2: keep them out of the command's table and JSON.
    with _quiet_fds(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    # allocations are charged to the op that made them (its self memory), frees are "[memory]" events
    events = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage)
    return max(0, *itertools.accumulate(d for _, d in events)) / 2**20


@contextlib.contextmanager
def _quiet_fds() -> Iterator[None]:
    """Send whatever C/C++ code writes to stdout and stderr within this context to /dev/null."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


class _Step:
    """One timed unit of work for a subject: an inference batch, or a training step (forward, backward, AdamW)."""

    def __init__(self, subject: Subject, mode: str, precision: str, x: torch.Tensor, device: torch.device,
                 grad_mode: str) -> None:
        self.subject, self.mode, self.precision, self.device = subject, mode, precision, device
        self.x = x.to(_DTYPES[precision]) if precision == "bf16-weights" else x
        self.grad_mode = grad_mode
        self.target = torch.randint(0, max(subject.num_classes, 1), (x.shape[0],), device=device)
        module = subject.module
        if module is not None:
            if precision == "bf16-weights":
                module.to(torch.bfloat16)
            module.train(mode == "train")
        self.optimizer = torch.optim.AdamW(module.parameters(), lr=1e-6) if mode == "train" else None
        self.infer = subject.infer
        if mode == "infer" and subject.freeze:
            self.infer = fast.freeze(module, torch.bfloat16 if precision in ("bf16", "bf16-weights") else None)

    def __call__(self) -> None:
        if self.mode == "infer":
            ctx = torch.inference_mode() if self.grad_mode == "inference_mode" else torch.no_grad()
            with ctx, _autocast(self.device, self.precision):
                self.infer(self.x)
        else:
            with _autocast(self.device, self.precision):
                loss = nn.functional.cross_entropy(self.infer(self.x).float(), self.target)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        _sync(self.device)

    def close(self) -> None:
        module = self.subject.module
        if module is not None:
            if self.precision == "bf16-weights":
                module.float()
            module.zero_grad(set_to_none=True)
        self.optimizer = self.infer = None


def measure(subjects: list[Subject], mode: str, precision: str, batch_size: int, size: tuple[int, int],
            device: torch.device, warmup: int = 1, reps: int = 3, channels_last: bool = False,
            peaks: dict[str, float] | None = None, grad_mode: str = "inference_mode") -> list[Result]:
    """Time `subjects` interleaved: `warmup` untimed steps each, then `reps` rounds of one step per subject.
    Every subject with the same number of input channels gets the same batch."""
    inputs: dict[int, torch.Tensor] = {}
    steps = []
    for s in subjects:
        if s.module is None and (mode == "train" or precision != "fp32"):
            continue  # exported graphs run fp32 inference only
        if s.in_chans not in inputs:
            x = torch.randn(batch_size, s.in_chans, *size, device=device)
            inputs[s.in_chans] = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        steps.append(_Step(s, mode, precision, inputs[s.in_chans], device, grad_mode))
    times: dict[str, list[float]] = {st.subject.label: [] for st in steps}
    memory: dict[str, float | None] = {}
    for st in steps:
        for _ in range(max(warmup, 1)):  # the first step allocates and, for compiled models, compiles
            st()
        memory[st.subject.label] = peak_memory_mb(st, device) if st.subject.module is not None else None
    for _ in range(reps):
        for st in steps:
            start = time.perf_counter()
            st()
            times[st.subject.label].append(time.perf_counter() - start)
    results = []
    for st in steps:
        st.close()
        t = times[st.subject.label]
        med = statistics.median(t)
        flops_per_img = 2 * st.subject.macs * (3 if mode == "train" else 1)  # backward ~ 2x forward
        achieved = flops_per_img * batch_size / med / 1e9
        peak = (peaks or {}).get("bf16" if precision == "bf16-weights" else precision)
        results.append(Result(
            model=st.subject.label, mode=mode, precision=precision, batch_size=batch_size, img_size=size,
            img_per_s=batch_size / med, img_per_s_min=batch_size / max(t), img_per_s_max=batch_size / min(t),
            latency_ms=med * 1e3, peak_mem_mb=memory[st.subject.label], gmacs=st.subject.macs / 1e9,
            params_m=st.subject.params / 1e6, achieved_gflops=achieved,
            peak_fraction=achieved / peak if peak else None, times_s=t,
        ))
    return results


def environment(device: torch.device, threads: int) -> dict[str, Any]:
    """Hardware, versions and machine load, recorded beside every result."""

    env: dict[str, Any] = {
        "device": device.type, "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "threads": threads, "cpu": cpu_name(), "cpu_count": os.cpu_count(),
        "load_avg_1m": env_load(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "malloc_tuned": malloc_is_tuned(),  # freed memory reused (convnext/malloc.py): changes absolute img/s a lot
    }
    for pkg in ("timm", "torchvision", "transformers", "onnxruntime"):
        with contextlib.suppress(ImportError):
            env[pkg] = __import__(pkg).__version__
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["tf32"] = torch.backends.cuda.matmul.allow_tf32
    return env


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it; platform.processor() where there is none."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def run(models: list[str], modes: list[str], precisions: list[str], batch_size: int = 32,
        img_size: tuple[int, int] | None = None, device: str = "cpu", threads: int | None = None, warmup: int = 1,
        reps: int = 3, channels_last: bool = False, compile_model: bool = False,
        grad_mode: str = "inference_mode", paper_protocol: bool | None = None, peak_size: int = 4096,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Benchmark `models` in every (mode, precision) and return {"env", "peaks", "results"} (JSON-ready).

    On CUDA the paper's Table 12 protocol is the default: TF32 matmuls and convolutions, channels_last.
    `img_size` None: the input size of the first checkpoint among `models` (ours:PATH), else 224.
    """
    dev = torch.device(device)
    if threads:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    if paper_protocol is None:
        paper_protocol = dev.type == "cuda"
    if paper_protocol and dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        channels_last = True
    for p in precisions:
        if p not in PRECISIONS:
            raise ValueError(f"precision {p!r} is not one of {', '.join(PRECISIONS)}")
    for m in modes:
        if m not in MODES:
            raise ValueError(f"mode {m!r} is not one of {', '.join(MODES)}")
    for m in models:
        _parse_spec(m)
    img_size = img_size or checkpoint_input_size(models) or (224, 224)
    peaks = {}
    for p in dict.fromkeys("bf16" if p == "bf16-weights" else p for p in precisions):
        peaks[p] = matmul_peak_gflops(_DTYPES[p], dev, peak_size)
        log(f"matmul peak {p}: {peaks[p]:.0f} GFLOP/s")
    env = environment(dev, threads)
    env.update(channels_last=channels_last, compile=compile_model, grad_mode=grad_mode, paper_protocol=paper_protocol,
               warmup=warmup, reps=reps)
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        subjects = [build_subject(m, img_size, dev, threads, Path(tmp), channels_last, compile_model) for m in models]
        paths = env["ours_paths"] = {}
        for mode in modes:
            for precision in precisions:
                log(f"{mode} {precision}: {len(subjects)} models x ({warmup} warm-up + {reps} timed)")
                if any(m.startswith("ours:") for m in models):
                    paths[f"{mode} {precision}"] = fast.describe("train" if mode == "train" else "inference", dev,
                                                                 _DTYPES[precision])
                    log(f"  ours: {paths[f'{mode} {precision}']}")
                results += measure(subjects, mode, precision, batch_size, img_size, dev, warmup, reps,
                                   channels_last, peaks, grad_mode)
    env["load_avg_1m_end"] = env_load()
    return {"env": env, "peaks_gflops": peaks, "results": [asdict(r) for r in results]}


def env_load() -> float | None:

    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


# ---------------------------------------------------------------------------------------------- reporting


def format_table(report: dict[str, Any]) -> str:
    """A Markdown table of the results, with each model's speed relative to the first model of its group."""
    rows = ["| model | mode | precision | img/s (median) | min-max | latency ms | vs first | peak mem MB | GMACs "
            "| % matmul peak |", "|---|---|---|---|---|---|---|---|---|---|"]
    for _, group in _groups(report["results"]):
        base = group[0]["img_per_s"]
        for r in group:
            mem = "-" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:.0f}"
            frac = "-" if r["peak_fraction"] is None else f"{100 * r['peak_fraction']:.0f}%"
            rows.append(f"| {r['model']} | {r['mode']} | {r['precision']} | {r['img_per_s']:.2f} | "
                        f"{r['img_per_s_min']:.2f}-{r['img_per_s_max']:.2f} | {r['latency_ms']:.0f} | "
                        f"{r['img_per_s'] / base:.2f}x | {mem} | {r['gmacs']:.2f} | {frac} |")
    return "\n".join(rows)


def _groups(results: list[dict[str, Any]]) -> Iterator[tuple[tuple[str, str], list[dict[str, Any]]]]:
    keys = list(dict.fromkeys((r["mode"], r["precision"]) for r in results))
    for k in keys:
        yield k, [r for r in results if (r["mode"], r["precision"]) == k]


def plot(report: dict[str, Any], path: str | Path) -> Path:
    """Horizontal bar chart of img/s (median, min-max whiskers), one panel per (mode, precision)."""
    from .plots import pyplot, save_figure

    plt = pyplot()

    groups = list(_groups(report["results"]))
    fig, axes = plt.subplots(len(groups), 1, figsize=(8, 0.5 + 0.45 * sum(len(g) for _, g in groups) + len(groups)),
                             squeeze=False)
    for ax, ((mode, precision), group) in zip(axes[:, 0], groups, strict=True):
        labels = [r["model"] for r in group][::-1]
        med = [r["img_per_s"] for r in group][::-1]
        err = [[m - r["img_per_s_min"] for m, r in zip(med, group[::-1], strict=True)],
               [r["img_per_s_max"] - m for m, r in zip(med, group[::-1], strict=True)]]
        ax.barh(labels, med, xerr=err, color=["tab:blue" if lbl.startswith("ours") else "tab:gray" for lbl in labels])
        for i, m in enumerate(med):
            ax.text(m, i, f" {m:.1f}", va="center", fontsize=8)
        ax.set_title(f"{mode}, {precision}, batch {group[0]['batch_size']}", fontsize=9)
        ax.set_xlabel("images / s")
    env = report["env"]
    fig.suptitle(f"{env['cpu'] if env['device'] == 'cpu' else env.get('gpu')}, {env['threads']} threads, "
                 f"torch {env['torch']}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))  # room for the suptitle
    return save_figure(fig, path)
