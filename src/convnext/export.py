"""`convnext export`: ONNX, TorchScript and torch.export ExportedProgram files with a dynamic batch,
verified when written: the exported file's logits on real photographs must match PyTorch's.

Also the inference-time transforms for deployment, each returning a modified copy:
`fold_layer_scale` (gamma folded into pwconv2), `to_bf16` (bf16 weights) and `to_channels_last`;
`top1_agreement` checks any of them against the original on real images.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from . import fast
from .data_config import DataSpec

FORMATS: dict[str, str] = {"onnx": ".onnx", "torchscript": ".ts", "exported-program": ".pt2"}
INPUT_NAME, OUTPUT_NAME = "images", "logits"
# scikit-image's bundled photographs (no download): the real images every export is checked on.
SAMPLE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina", "immunohistochemistry")


class ExportError(RuntimeError):
    """An exported file whose outputs differ from the PyTorch model's."""


def _size(input_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(input_size, int):
        return input_size, input_size
    h, w = input_size
    return int(h), int(w)


def _in_chans(model: nn.Module) -> int:
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    return first.in_channels


def _example(model: nn.Module, input_size: int | Sequence[int], batch: int = 2) -> torch.Tensor:
    # Batch 2, not 1: exporters specialise a dimension of size 1, which would defeat the dynamic batch.
    p = next(model.parameters())
    return torch.randn(batch, _in_chans(model), *_size(input_size), dtype=p.dtype, device=p.device)


@contextmanager
def _exportable(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode computing with the reference's standard ops: `convnext.optimize`'s CPU kernels
    (oneDNN's fused Linear) are opaque to every exporter. Training mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with fast.reference(model):
            yield model
    finally:
        model.train(was_training)


def export_onnx(model: nn.Module, path: str | os.PathLike, input_size: int | Sequence[int] = 224,
                opset: int | None = None) -> Path:
    """Write `model` as ONNX (torch.export-based exporter) with a dynamic batch dimension; returns the path.

    The graph input is "images" (N, C, H, W) and the output "logits" (N, classes).
    """
    try:
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it; say so before a long trace)
    except ImportError as e:
        raise ImportError("ONNX export needs onnxscript: pip install 'convnext[export]'") from e
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = _example(model, input_size)
    batch = torch.export.Dim("batch", min=1, max=65536)
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    with _exportable(model):
        torch.onnx.export(model, (example,), str(path), dynamo=True, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},), opset_version=opset,
                          external_data=n_bytes > 1.8e9, verbose=False)
    return path


def export_torchscript(model: nn.Module, path: str | os.PathLike, input_size: int | Sequence[int] = 224) -> Path:
    """Write `model` as a traced TorchScript module (any batch size); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = _example(model, input_size)
    # TorchScript is deprecated upstream but still what many C++ and mobile runtimes load; say so once, in the
    # docs, rather than on every call.
    with _exportable(model), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(path))
    return path


def export_program(model: nn.Module, path: str | os.PathLike, input_size: int | Sequence[int] = 224) -> Path:
    """Write `model` as a torch.export ExportedProgram (.pt2) with a dynamic batch; returns the path."""
    path = Path(path)
    if path.suffix != ".pt2":
        raise ValueError(f"{path}: an ExportedProgram file must end in .pt2 (torch.export.load refuses others)")
    path.parent.mkdir(parents=True, exist_ok=True)
    example = _example(model, input_size)
    batch = torch.export.Dim("batch", min=1, max=65536)
    with _exportable(model):
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path


EXPORTERS: dict[str, Callable[..., Path]] = {
    "onnx": export_onnx, "torchscript": export_torchscript, "exported-program": export_program,
}


def onnx_session(path: str | os.PathLike, threads: int | None = None):
    """An ONNX Runtime CPU inference session for an exported file."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def load_exported(path: str | os.PathLike, fmt: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function images -> logits that runs an exported file (ONNX through ONNX Runtime on CPU)."""
    if fmt == "onnx":
        session = onnx_session(path)
        return lambda x: torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.cpu().numpy()})[0])
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(path), map_location="cpu")
    if fmt == "exported-program":
        return torch.export.load(str(path)).module()
    raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")


def sample_images(spec: DataSpec | int | Sequence[int] = 224, in_chans: int = 3,
                  paths: Sequence[str | os.PathLike] | None = None) -> torch.Tensor:
    """Real photographs as a model input batch (N, in_chans, H, W): the files in `paths`, or scikit-image's
    bundled photographs, through a model's eval transform: its data config `spec` (`model.data_config`), or,
    given a size, ImageNet's input format at that size (mean/std averaged over the channels when not RGB)."""
    from .data.transforms import load_image, transform

    if not isinstance(spec, DataSpec):
        spec = DataSpec.for_channels(in_chans, input_size=_size(spec), crop_pct=1.0)
    if paths:
        images = [load_image(p) for p in paths]
    else:
        try:
            import skimage.data
        except ImportError as e:
            raise ImportError("no images given and scikit-image (for its sample photographs) is not installed: "
                              "pass image files (--images) or pip install scikit-image") from e
        images = [getattr(skimage.data, name)() for name in SAMPLE_PHOTOS]
    tf = transform(spec)
    return torch.stack([tf(img) for img in images])


@torch.no_grad()
def verify_export(model: nn.Module, path: str | os.PathLike, fmt: str, images: torch.Tensor,
                  atol: float = 1e-4) -> float:
    """Compare an exported file's logits with `model`'s on `images`, at two batch sizes (1 and all).

    Returns the largest absolute difference; raises ExportError above `atol`.
    """
    model = model.eval()
    run = load_exported(path, fmt)
    p = next(model.parameters())
    worst = 0.0
    for batch in (images[:1], images):
        batch = batch.to(p.dtype)
        expected = model(batch.to(p.device)).float().cpu()
        got = run(batch).float().cpu()
        if got.shape != expected.shape:
            raise ExportError(f"{path}: output shape {tuple(got.shape)} for batch {len(batch)}, "
                              f"PyTorch gives {tuple(expected.shape)}")
        worst = max(worst, float((got - expected).abs().max()))
    if not worst <= atol:
        raise ExportError(f"{path}: {fmt} logits differ from PyTorch's by up to {worst:.3g} (> {atol:g}) on real "
                          "images; the file is not a faithful export. Report the model and size.")
    return worst


def export(model: nn.Module, path: str | os.PathLike, fmt: str, input_size: int | Sequence[int] = 224,
           images: torch.Tensor | None = None, atol: float = 1e-4) -> tuple[Path, float]:
    """Export in format `fmt` and verify on real images; returns (path, largest logit difference)."""
    if fmt not in EXPORTERS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    path = EXPORTERS[fmt](model, path, input_size)
    if images is None:
        spec = getattr(model, "data_config", None)
        images = sample_images(spec.at_size(_size(input_size)) if spec else input_size, _in_chans(model))
    return path, verify_export(model, path, fmt, images, atol)


# ----------------------------------------------------------------------------------------------- deployment

def fold_layer_scale(model: nn.Module) -> nn.Module:
    """A copy of `model` with each block's layer scale folded into its second pointwise layer:
    gamma * (W x + b) == (gamma W) x + gamma b, so inference does one multiply less per block.
    The copy has no `gamma` parameters (its state dict is for inference, not for the official layout)."""
    from .models import Block

    folded = copy.deepcopy(model)
    with torch.no_grad():
        for block in folded.modules():
            if isinstance(block, Block) and block.gamma is not None:
                block.pwconv2.weight.mul_(block.gamma[:, None])
                block.pwconv2.bias.mul_(block.gamma)
                block.gamma = None
    return folded


def to_bf16(model: nn.Module) -> nn.Module:
    """A copy with bfloat16 weights (feed it bfloat16 inputs; `top1_agreement` does)."""
    return copy.deepcopy(model).to(torch.bfloat16)


def to_channels_last(model: nn.Module) -> nn.Module:
    """A copy with its convolution weights stored channels_last (feed it channels_last inputs)."""
    return copy.deepcopy(model).to(memory_format=torch.channels_last)


@torch.no_grad()
def top1_agreement(reference: nn.Module, candidate: nn.Module, images: torch.Tensor) -> tuple[float, float]:
    """(fraction of images with the same top-1 class, largest absolute logit difference) of `candidate`
    against `reference`. Inputs are cast to each model's dtype; the candidate gets them channels_last when
    its weights are stored that way."""
    reference.eval()
    candidate.eval()
    p_ref, p_cand = next(reference.parameters()), next(candidate.parameters())
    expected = reference(images.to(p_ref.device, p_ref.dtype)).float().cpu()
    x = images.to(p_cand.device, p_cand.dtype)
    conv = next(m for m in candidate.modules() if isinstance(m, nn.Conv2d))
    if conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous():
        x = x.contiguous(memory_format=torch.channels_last)
    got = candidate(x).float().cpu()
    same = (got.argmax(-1) == expected.argmax(-1)).float().mean().item()
    return same, float((got - expected).abs().max())
