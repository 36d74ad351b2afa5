"""`convnext benchmark`: throughput, latency, peak memory and GMACs of ours and the peers' models, one protocol.

Every model in a run sees the same input (fixed batch and size), the same warm-up, the same number of timed
repetitions and the same thread count; the models are interleaved within each repetition, so load from
elsewhere on the machine hits them all alike, and the median, min and max of the repetitions are reported.
A square matmul per dtype gives the machine's peak, and each result states the fraction of it achieved.

Models are named SOURCE:NAME[@VARIANT]:

- ``ours:convnext_tiny`` (inference on `convnext.freeze`'s folded, packed copy), ``@optimized``
  (`convnext.optimize` only), ``@reference`` (the plain network), ``@compiled`` (optimized, then
  `convnext.fast.compile`); ``ours:runs/fashion_mnist/best.pt`` a checkpoint (its model, input channels, size);
- peers at their best: ``timm:NAME``, ``tv:NAME`` (torchvision), ``hf:convnext_tiny`` (transformers), each
  eager NCHW, ``@cl`` (model and input channels_last), ``@compiled`` (Inductor, through `convnext.fast.compile`,
  with Inductor's freezing for inference as a CPU user of timm would) or ``@cl+compiled``;
- other runtimes, inference only: ``ort:NAME`` (our model exported to ONNX, in ONNX Runtime, fp32) and
  ``ov:NAME`` (timm's NAME converted by `openvino.convert_model`, in OpenVINO; ``ov:NAME@ours`` converts ours),
  fp32 and bf16 (OpenVINO's bf16 inference precision hint).

A model that cannot be built, or fails when first run here, is reported in one line and left out of the
comparison; the run goes on.
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
import warnings
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
OURS_VARIANTS = ("frozen", "optimized", "reference", "compiled")
PEER_VARIANTS = ("cl", "compiled")  # combinable: timm:NAME@cl+compiled
OV_VARIANTS = ("ours",)
RUNTIMES = ("ort", "ov")  # inference-only runtimes that run a converted graph, not a torch module


# ---------------------------------------------------------------------------------------------- backends


class Unsupported(Exception):
    """A subject cannot run this (mode, precision): reported in one line, not an error."""


@dataclass
class Subject:
    """One model ready to run: `fn` for torch modules (the module or its compiled wrapper), or `runtime` for a
    converted graph (ONNX Runtime, OpenVINO) that makes an inference function per (precision, input shape)."""

    label: str
    module: nn.Module | None  # the trainable module; None for a converted graph (inference only)
    fn: Callable[[torch.Tensor], Any] | None
    macs: int
    params: int
    freeze: bool = False  # infer with `convnext.freeze(module, dtype)`, made per precision (ours by default)
    in_chans: int = 3
    num_classes: int = 1000
    channels_last: bool = False  # this subject's input is fed channels_last
    compiled: bool = False  # Inductor; inference compiles with freezing
    runtime: Callable[[str, tuple[int, ...]], Callable[[torch.Tensor], Any]] | None = None
    engine: str = "pytorch eager"  # what computes it, for the record

    @property
    def source(self) -> str:
        return self.label.partition(":")[0]


@dataclass(frozen=True)
class Spec:
    """A parsed SOURCE:NAME[@VARIANT[+VARIANT]]."""

    source: str
    name: str
    variants: frozenset[str] = frozenset()


def parse_spec(spec: str) -> Spec:
    """Parse and check a model spec (see the module docstring); ValueError says what to write."""
    source, sep, rest = spec.partition(":")
    sources = (*BUILDERS, *RUNTIMES)
    if not sep or not rest or source not in sources:
        raise ValueError(f"model {spec!r} must be SOURCE:NAME with SOURCE one of {', '.join(sources)}, "
                         "e.g. ours:convnext_tiny, timm:convnext_tiny@compiled or ov:convnext_tiny")
    name, variant = _ours_variant(rest)
    tokens = frozenset(variant.split("+")) if variant else frozenset()
    allowed = {"ours": OURS_VARIANTS, "ort": (), "ov": OV_VARIANTS}.get(source, PEER_VARIANTS)
    if source in ("ours", "ort", "ov"):
        ok, hint = len(tokens) <= 1 and tokens <= set(allowed), " or ".join(allowed) or "absent (ort has none)"
    else:
        ok, hint = tokens <= set(allowed), "cl, compiled or cl+compiled"
    if not ok:
        raise ValueError(f"{spec}: the variant after @ must be {hint}")
    return Spec(source, name, tokens)


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


def _onnxruntime(name: str, size: tuple[int, int], threads: int, workdir: Path
                 ) -> tuple[Callable[[str, tuple[int, ...]], Callable[[torch.Tensor], Any]], str]:
    """Our model exported with `convnext.export.export_onnx` and run by an onnxruntime CPU session (fp32)."""
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

    def make(precision: str, shape: tuple[int, ...]) -> Callable[[torch.Tensor], Any]:
        if precision != "fp32":
            raise Unsupported("ONNX Runtime runs the exported fp32 graph only")
        return lambda x: session.run(None, {input_name: x.contiguous().numpy()})[0]

    return make, f"onnxruntime {ort.__version__}"


def _openvino(name: str, variant: frozenset[str], size: tuple[int, int], in_chans: int, threads: int
              ) -> tuple[Callable[[str, tuple[int, ...]], Callable[[torch.Tensor], Any]], str]:
    """timm's NAME (or ours, @ours) converted by `openvino.convert_model` and compiled for OpenVINO's CPU plugin
    per (precision, input shape): a static shape, `threads` inference threads and one stream (the latency
    hint), so it runs each batch on the same cores as every other model, in fp32 or under its bf16 hint."""
    try:
        import openvino as ov
    except ImportError as e:
        raise RuntimeError(f"ov:{name} needs OpenVINO: pip install 'convnext[bench]'") from e
    # ours in its reference form: a converter traces standard ops, not oneDNN's private ones
    model = (_ours(f"{name}@reference") if "ours" in variant else _timm(name)).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # convert_model traces with torch.jit, which warns each time
        converted = ov.convert_model(model, example_input=torch.randn(1, in_chans, *size))
    core = ov.Core()

    def make(precision: str, shape: tuple[int, ...]) -> Callable[[torch.Tensor], Any]:
        if precision not in ("fp32", "bf16"):
            raise Unsupported(f"OpenVINO is measured in fp32 and bf16 here, not {precision}")
        graph = converted.clone()
        graph.reshape({graph.inputs[0]: ov.PartialShape(list(shape))})
        compiled = core.compile_model(graph, "CPU", {
            "INFERENCE_PRECISION_HINT": "f32" if precision == "fp32" else "bf16",
            "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1})
        used = compiled.get_property("INFERENCE_PRECISION_HINT")
        if used != (ov.Type.f32 if precision == "fp32" else ov.Type.bf16):  # the plugin falls back where it must
            raise Unsupported(f"OpenVINO's CPU plugin runs {used.get_type_name()}, not {precision}, on this CPU")
        request = compiled.create_infer_request()

        def infer(x: torch.Tensor) -> Any:
            return request.infer({0: x.contiguous().numpy()}, share_inputs=True, share_outputs=True)

        return infer

    return make, f"openvino {ov.__version__.split('-')[0]}"


def build_subject(spec: str, size: tuple[int, int], device: torch.device, threads: int, workdir: Path,
                  channels_last: bool = False, compile_model: bool = False) -> Subject:
    """Build the model `spec` ("SOURCE:NAME[@VARIANT]") on `device`, with GMACs and params counted on one image.

    `channels_last` and `compile_model` apply to every torch model (the CLI's --channels-last, --compile); a
    spec's own variant adds to them.
    """
    parsed = parse_spec(spec)
    source, name, variants = parsed.source, parsed.name, parsed.variants
    if source in RUNTIMES:
        if device.type != "cpu":
            raise ValueError(f"the {source} backend runs on CPU only")
        reference = _ours(name) if source == "ort" or "ours" in variants else build_for_counting(f"timm:{name}")
        in_chans = _io(reference)[0]
        macs = count_macs(reference, size, in_chans)
        params = sum(p.numel() for p in reference.parameters())
        if source == "ort":
            runtime, engine = _onnxruntime(name, size, threads, workdir)
        else:
            runtime, engine = _openvino(name, variants, size, in_chans, threads)
        return Subject(spec, None, None, macs, params, in_chans=in_chans, runtime=runtime, engine=engine)
    if source == "ours":
        model = _ours(name if "compiled" not in variants else f"{name}@optimized")
    else:
        model = BUILDERS[source](name)
    in_chans, num_classes = _io(model)
    macs = count_macs(model, size, in_chans)
    model = model.to(device)
    cl = channels_last or "cl" in variants
    if cl:
        model = model.to(memory_format=torch.channels_last)
    compiled = compile_model or "compiled" in variants
    fn = fast.compile(model, dynamic=False) if compiled else model  # static shapes: batch 1 gets its own graph
    # ours infers frozen (folded, packed weights) unless a variant says otherwise; a frozen model does not compile
    freeze = source == "ours" and not variants and not compiled
    engine = ("inductor" if compiled else "pytorch eager") + (" channels_last" if cl else "")
    return Subject(spec, model, fn, macs, sum(p.numel() for p in model.parameters()), freeze, in_chans, num_classes,
                   channels_last=cl, compiled=compiled, engine=engine)


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
    """One model under one (mode, precision, batch): throughput over the timed repetitions and what it costs."""

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
    engine: str = ""  # what computed it: pytorch eager (channels_last), inductor, onnxruntime, openvino
    first_call_s: float | None = None  # the first (untimed) step: allocation, oneDNN primitives, compilation


@dataclass
class Failure:
    """A model that could not be built or run in one (mode, precision, batch) here, and why (one line)."""

    model: str
    stage: str  # "build", or "MODE PRECISION batch N"
    reason: str

    def line(self) -> str:
        return f"{self.model}: not measured ({self.stage}): {self.reason}"


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
    """One timed unit of work for a subject: an inference batch, or a training step (forward, backward, AdamW).

    Made lazily by `prepare` (it may fail: a runtime without this precision, a compile that breaks)."""

    def __init__(self, subject: Subject, mode: str, precision: str, x: torch.Tensor, device: torch.device,
                 grad_mode: str) -> None:
        self.subject, self.mode, self.precision, self.device = subject, mode, precision, device
        self.x = x.to(_DTYPES[precision]) if precision == "bf16-weights" else x
        if subject.channels_last:
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.grad_mode = grad_mode
        self.target = torch.randint(0, max(subject.num_classes, 1), (x.shape[0],), device=device)
        self.optimizer = None
        self.infer: Callable[[torch.Tensor], Any] | None = None

    def prepare(self) -> None:
        """Make the step's function; raises `Unsupported` where this subject cannot run this mode or precision."""
        subject, module = self.subject, self.subject.module
        if subject.runtime is not None:
            if self.mode == "train":
                raise Unsupported("an inference runtime: no training step")
            self.infer = subject.runtime(self.precision, tuple(self.x.shape))
            return
        assert module is not None and subject.fn is not None
        if self.precision == "bf16-weights":
            module.to(torch.bfloat16)
        module.train(self.mode == "train")
        self.infer = subject.fn
        if self.mode == "train":
            self.optimizer = torch.optim.AdamW(module.parameters(), lr=1e-6)
        elif subject.freeze:
            self.infer = fast.freeze(module, torch.bfloat16 if self.precision in ("bf16", "bf16-weights") else None)

    def engine(self) -> str:
        """What computes this step, for the record."""
        frozen = self.mode == "infer" and self.subject.freeze
        return self.subject.engine + (", convnext.freeze" if frozen else "")

    def __call__(self) -> None:
        assert self.infer is not None
        if self.mode == "infer":
            ctx = torch.inference_mode() if self.grad_mode == "inference_mode" else torch.no_grad()
            # Inductor folds the weights into the graph as constants (freezing) for inference, as a CPU user does
            freezing = _inductor_freezing() if self.subject.compiled else contextlib.nullcontext()
            with ctx, _autocast(self.device, self.precision), freezing:
                self.infer(self.x)
        else:
            assert self.optimizer is not None
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


def _inductor_freezing() -> contextlib.AbstractContextManager:
    import torch._inductor.config as inductor_config

    return inductor_config.patch(freezing=True)


@contextlib.contextmanager
def _compile_limits() -> Iterator[None]:
    """Room for every graph a run compiles: one per (mode, precision, batch) and layout per model class, more
    than Dynamo's default of 8 recompiles per function, past which it would silently run eager."""
    import torch._dynamo.config as dynamo_config

    limit = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    with dynamo_config.patch(**{limit: max(64, getattr(dynamo_config, limit))}):
        yield


def measure(subjects: list[Subject], mode: str, precision: str, batch_size: int, size: tuple[int, int],
            device: torch.device, warmup: int = 1, reps: int = 3, channels_last: bool = False,
            peaks: dict[str, float] | None = None, grad_mode: str = "inference_mode",
            failures: list[Failure] | None = None, log: Callable[[str], None] = print) -> list[Result]:
    """Time `subjects` interleaved: `warmup` untimed steps each, then `reps` rounds of one step per subject.
    Every subject with the same number of input channels gets the same batch. A subject that cannot run here
    is left out: one line through `log`, and a `Failure` in `failures` unless it merely does not apply (a
    training step of an inference runtime)."""
    inputs: dict[int, torch.Tensor] = {}
    steps = []
    stage = f"{mode} {precision} batch {batch_size}"
    for s in subjects:
        if s.in_chans not in inputs:
            x = torch.randn(batch_size, s.in_chans, *size, device=device)
            inputs[s.in_chans] = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        steps.append(_Step(s, mode, precision, inputs[s.in_chans], device, grad_mode))
    times: dict[str, list[float]] = {}
    memory: dict[str, float | None] = {}
    first: dict[str, float] = {}
    ready = []
    for st in steps:
        label = st.subject.label
        try:
            st.prepare()
            start = time.perf_counter()
            st()  # the first step allocates and, for compiled models, compiles
            first[label] = time.perf_counter() - start
            if first[label] > 5:  # compilation, conversion: say where the time goes
                log(f"  {label}: first call {first[label]:.0f} s")
            for _ in range(warmup - 1):
                st()
            memory[label] = peak_memory_mb(st, device) if st.subject.module is not None else None
        except Unsupported as e:
            if not (mode == "train" and st.subject.runtime is not None):  # expected: say nothing
                log(f"  {label}: not measured in {stage}: {e}")
                if failures is not None:
                    failures.append(Failure(label, stage, str(e)))
            st.close()
            continue
        except Exception as e:  # a peer variant that breaks on this machine is reported, not fatal
            reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
            log(f"  {label}: FAILED in {stage}: {reason}")
            if failures is not None:
                failures.append(Failure(label, stage, reason))
            st.close()
            continue
        times[label] = []
        ready.append(st)
    for _ in range(reps):
        for st in ready:
            start = time.perf_counter()
            st()
            times[st.subject.label].append(time.perf_counter() - start)
    results = []
    for st in ready:
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
            peak_fraction=achieved / peak if peak else None, times_s=t, engine=st.engine(),
            first_call_s=first[st.subject.label],
        ))
    return results


def environment(device: torch.device, threads: int) -> dict[str, Any]:
    """Hardware, versions and machine load, recorded beside every result."""
    caps = fast.capabilities()
    env: dict[str, Any] = {
        "device": device.type, "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "threads": threads, "cpu": cpu_name(), "cpu_count": os.cpu_count(),
        "isa": caps.isa, "cpu_flags": list(caps.cpu_flags),
        # bf16 autocast on a CPU without bf16 hardware is emulated, slower than fp32: say which it was
        "bf16": "native" if caps.native_bf16 else "emulated",
        "load_avg_1m": env_load(), "load_avg": load_averages(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "malloc_tuned": malloc_is_tuned(),  # freed memory reused (convnext/malloc.py): changes absolute img/s a lot
    }
    env.update(peer_versions())
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["tf32"] = torch.backends.cuda.matmul.allow_tf32
    return env


def peer_versions() -> dict[str, str]:
    """Versions of the peer libraries and runtimes installed here (those that are absent are left out)."""
    versions = {}
    for pkg in ("timm", "torchvision", "transformers", "onnxruntime", "openvino"):
        with contextlib.suppress(ImportError):
            versions[pkg] = __import__(pkg).__version__
    return versions


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
        latency_batch: int | None = None, latency_reps: int | None = None,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Benchmark `models` in every (mode, precision) and return {"env", "peaks_gflops", "results", "failures"}
    (JSON-ready). The matmul peak is measured before and after the models, and the higher of the two kept.

    `latency_batch` also times inference at that batch size (e.g. 1), with `latency_reps` repetitions (default
    5x `reps`: short steps are noisier). A model that cannot be built or run is one line in "failures".
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
        parse_spec(m)
    img_size = img_size or checkpoint_input_size(models) or (224, 224)
    env = environment(dev, threads)  # the load average before this run adds its own
    peaks = {}
    for p in dict.fromkeys("bf16" if p == "bf16-weights" else p for p in precisions):
        peaks[p] = matmul_peak_gflops(_DTYPES[p], dev, peak_size)
        log(f"matmul peak {p}: {peaks[p]:.0f} GFLOP/s")
    env.update(channels_last=channels_last, compile=compile_model, grad_mode=grad_mode, paper_protocol=paper_protocol,
               warmup=warmup, reps=reps, latency_reps=latency_reps or 5 * reps)
    results: list[Result] = []
    failures: list[Failure] = []
    with tempfile.TemporaryDirectory() as tmp, _compile_limits():
        subjects = []
        for m in models:
            try:
                subjects.append(build_subject(m, img_size, dev, threads, Path(tmp), channels_last, compile_model))
            except Exception as e:  # a peer that cannot be built here (missing package, conversion error)
                failures.append(Failure(m, "build", f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
                                        if str(e).strip() else type(e).__name__))
                log(f"  {failures[-1].line()}")
        env["engines"] = {s.label: s.engine for s in subjects}
        paths = env["ours_paths"] = {}
        for mode in modes:
            for precision in precisions:
                batches = [(batch_size, reps)]
                if latency_batch and mode == "infer" and latency_batch != batch_size:
                    batches.append((latency_batch, latency_reps or 5 * reps))
                if any(m.startswith("ours:") for m in models):
                    paths[f"{mode} {precision}"] = fast.describe("train" if mode == "train" else "inference", dev,
                                                                 _DTYPES[precision])
                for batch, n in batches:
                    # the 1-minute load as each group starts: a busy moment in the middle shows in the record
                    env.setdefault("load_during", {})[f"{mode} {precision} batch {batch}"] = env_load()
                    log(f"{mode} {precision} batch {batch}: {len(subjects)} models x ({warmup} warm-up + {n} timed)")
                    if batch == batch_size and f"{mode} {precision}" in paths:
                        log(f"  ours: {paths[f'{mode} {precision}']}")
                    results += measure(subjects, mode, precision, batch, img_size, dev, warmup, n, channels_last,
                                       peaks, grad_mode, failures, log)
    # The peak again at the end, the best of both kept: a busy moment at the start would otherwise understate it
    # and overstate every model's share of it.
    for p in peaks:
        peaks[p] = max(peaks[p], matmul_peak_gflops(_DTYPES[p], dev, peak_size))
    for r in results:
        peak = peaks.get("bf16" if r.precision == "bf16-weights" else r.precision)
        r.peak_fraction = r.achieved_gflops / peak if peak else None
    env["load_avg_1m_end"] = env_load()
    env["load_avg_end"] = load_averages()
    return {"env": env, "peaks_gflops": peaks, "results": [asdict(r) for r in results],
            "failures": [asdict(f) for f in failures]}


def env_load() -> float | None:
    """The 1-minute load average, where the OS has one."""
    loads = load_averages()
    return loads[0] if loads else None


def load_averages() -> list[float] | None:
    """The 1, 5 and 15-minute load averages, where the OS has them."""
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


# ---------------------------------------------------------------------------------------------- reporting


def is_ours(label: str) -> bool:
    """Whether a result is ours (our code computing it) rather than a peer's library or runtime."""
    return label.startswith("ours:")


def model_name(label: str) -> str:
    """The architecture a label runs: SOURCE:NAME@VARIANT -> NAME. Peers are compared on the same NAME only."""
    base, sep, variant = label.partition(":")[2].rpartition("@")
    return base if sep and base and "/" not in variant else label.partition(":")[2]


def _best_peers(group: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The fastest peer result per architecture in one (mode, precision, batch) group."""
    best: dict[str, dict[str, Any]] = {}
    for r in group:
        name = model_name(r["model"])
        if not is_ours(r["model"]) and (name not in best or r["img_per_s"] > best[name]["img_per_s"]):
            best[name] = r
    return best


def format_table(report: dict[str, Any]) -> str:
    """A Markdown table of the results, each model's speed relative to the fastest peer running the same
    architecture in its (mode, precision, batch) group, where there is one."""
    rows = ["| model | engine | mode | precision | batch | img/s (median) | min-max | latency ms | vs best peer "
            "| peak mem MB | first call s | % matmul peak |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, group in _groups(report["results"]):
        best = _best_peers(group)
        for r in group:
            peer = best.get(model_name(r["model"]))
            mem = "-" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:.0f}"
            frac = "-" if r["peak_fraction"] is None else f"{100 * r['peak_fraction']:.0f}%"
            vs = f"{r['img_per_s'] / peer['img_per_s']:.2f}x" if peer else "-"
            first = "-" if r.get("first_call_s") is None else f"{r['first_call_s']:.1f}"
            rows.append(f"| {r['model']} | {r.get('engine') or '-'} | {r['mode']} | {r['precision']} | "
                        f"{r['batch_size']} | {r['img_per_s']:.2f} | {r['img_per_s_min']:.2f}-{r['img_per_s_max']:.2f} "
                        f"| {r['latency_ms']:.1f} | {vs} | {mem} | {first} | {frac} |")
    return "\n".join(rows)


def summarize(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per (mode, precision, batch) and architecture of ours: our fastest variant, the fastest peer running the
    same architecture, and their ratio."""
    rows = []
    for (mode, precision, batch), group in _groups(report["results"]):
        best = _best_peers(group)
        for name in dict.fromkeys(model_name(r["model"]) for r in group if is_ours(r["model"])):
            ours = max((r for r in group if is_ours(r["model"]) and model_name(r["model"]) == name),
                       key=lambda r: r["img_per_s"])
            peer = best.get(name)
            rows.append(dict(mode=mode, precision=precision, batch_size=batch, model=name, ours=ours, peer=peer,
                             ratio=ours["img_per_s"] / peer["img_per_s"] if peer else None))
    return rows


def format_summary(report: dict[str, Any]) -> str:
    """A Markdown table: ours at its best against the best peer of the same architecture, per (mode, precision,
    batch)."""
    rows = ["| mode | precision | batch | ours, fastest variant: img/s | best peer: img/s | ours / best peer "
            "| ours % matmul peak |", "|---|---|---|---|---|---|---|"]
    for s in summarize(report):
        ours, peer = s["ours"], s["peer"]
        p = f"{peer['model']}: {peer['img_per_s']:.2f}" if peer else "-"
        ratio = f"**{s['ratio']:.2f}x**" if s["ratio"] else "-"
        frac = f"{100 * ours['peak_fraction']:.0f}%" if ours.get("peak_fraction") else "-"
        rows.append(f"| {s['mode']} | {s['precision']} | {s['batch_size']} | {ours['model']}: {ours['img_per_s']:.2f} "
                    f"| {p} | {ratio} | {frac} |")
    return "\n".join(rows)


def _groups(results: list[dict[str, Any]]) -> Iterator[tuple[tuple[str, str, int], list[dict[str, Any]]]]:
    keys = list(dict.fromkeys((r["mode"], r["precision"], r["batch_size"]) for r in results))
    for k in keys:
        yield k, [r for r in results if (r["mode"], r["precision"], r["batch_size"]) == k]


def plot(report: dict[str, Any], path: str | Path) -> Path:
    """Horizontal bar chart of img/s (median, min-max whiskers), one panel per (mode, precision)."""
    from .plots import pyplot, save_figure

    plt = pyplot()

    groups = list(_groups(report["results"]))
    fig, axes = plt.subplots(len(groups), 1, figsize=(8, 0.5 + 0.45 * sum(len(g) for _, g in groups) + len(groups)),
                             squeeze=False)
    for ax, ((mode, precision, batch), group) in zip(axes[:, 0], groups, strict=True):
        labels = [r["model"] for r in group][::-1]
        med = [r["img_per_s"] for r in group][::-1]
        err = [[m - r["img_per_s_min"] for m, r in zip(med, group[::-1], strict=True)],
               [r["img_per_s_max"] - m for m, r in zip(med, group[::-1], strict=True)]]
        ax.barh(labels, med, xerr=err, color=["tab:blue" if is_ours(lbl) else "tab:gray" for lbl in labels])
        for i, m in enumerate(med):
            ax.text(m, i, f" {m:.1f}", va="center", fontsize=8)
        ax.set_title(f"{mode}, {precision}, batch {batch}", fontsize=9)
        ax.set_xlabel("images / s")
    env = report["env"]
    fig.suptitle(f"{env['cpu'] if env['device'] == 'cpu' else env.get('gpu')}, {env['threads']} threads, "
                 f"torch {env['torch']}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))  # room for the suptitle
    return save_figure(fig, path)
