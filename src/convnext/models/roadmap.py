"""The paper's roadmap from ResNet to ConvNeXt (Section 2, Figure 2, Tables 10 and 11) as a design space.

A `Design` is a frozen set of named design choices; `RoadmapNet` is the one network built from any of
them; a roadmap is a list of `Step`s, each the previous kept step plus a `dataclasses.replace` of one or a
few fields, with the paper's top-1 and GMACs beside it. The list reads like Figure 2:

    >>> [s.name for s in ROADMAP_T][:4]
    ['ResNet-50', 'modern recipe', 'stage ratio', 'patchify stem']

Readings of the paper that the FLOP counts decide (docs/roadmap.md works each one out):

- ResNet downsampling is torchvision's "v1.5": the stride sits on the spatial (k x k) conv of the first
  block of stages 2-4, and the shortcut is a strided 1x1 conv + norm (4.09 GMACs, 25.56M params).
- The inverted bottleneck's hidden width is 4x the stage width (also in a stage's first block, whose
  first 1x1 runs at the input resolution): 4.64. Moving the depthwise conv up puts it, with the stride,
  on the block's input channels: 4.065 (paper 4.07).
- The patchify stem is a 4x4 stride-4 conv followed by the norm, with no activation and no pooling (Swin's
  patch embedding; a patchify layer is linear). The stem's norm becomes LN with every other norm at BN -> LN.
- "Fewer activations" keeps the one activation before the last 1x1 conv (and drops the one after the
  residual add); "fewer norms" keeps the one norm after the spatial conv. The shortcut projection's norm is
  not in the residual branch and stays until separate downsampling removes the projection.
- Layer scale (1e-6) belongs to the modern recipe (paper Table 5), so it starts at step 1.
- A conv has a bias exactly when no BatchNorm follows it (BN's mean subtraction makes one redundant; a
  channels-LN's does not), which gives ResNet-50 its bias-free convs and ConvNeXt its biased ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from .convnext import _init_weights
from .layers import LayerNorm2d

CHOICES: dict[str, tuple[str, ...]] = {
    "recipe": ("resnet", "modern"),
    "stem": ("resnet", "patchify"),
    "block": ("bottleneck", "inverted"),
    "spatial_conv": ("dense", "depthwise"),
    "spatial_position": ("middle", "first"),
    "act": ("relu", "gelu"),
    "acts": ("all", "one"),
    "norm": ("bn", "ln"),
    "norms": ("all", "one"),
    "downsample": ("in_block", "separate"),
}


@dataclass(frozen=True)
class Design:
    """One point of the design space between ResNet and ConvNeXt. The defaults are ResNet-50.

    Attributes:
        recipe: the training recipe, "resnet" (90 epochs, SGD) or "modern" (paper Section 4); the network
            ignores it, the small-scale sweep does not.
        depths: blocks per stage.
        widths: the stage widths C: a bottleneck block runs at C inside and 4C outside (ResNet-50: 64..512),
            an inverted bottleneck at C outside and 4C inside (ConvNeXt-T: 96..768).
        stem: "resnet" (7x7/2 conv, norm, act, 3x3/2 max pool) or "patchify" (patch_size conv, norm).
        patch_size: kernel and stride of the patchify stem.
        block: "bottleneck" (1x1 reduce, k x k, 1x1 expand) or "inverted" (1x1 expand, k x k, 1x1 reduce).
        expansion: ratio of the wide to the narrow width of a block (4).
        spatial_conv: the k x k conv, "dense" or "depthwise" (groups = channels).
        spatial_position: "middle" of the block or "first" (the depthwise conv moved up).
        kernel_size: k.
        act: "relu" or "gelu".
        acts: "all" (after every conv but the last, and after the residual add) or "one" (only before the
            last 1x1 conv).
        norm: "bn" (BatchNorm) or "ln" (LayerNorm over channels) everywhere.
        norms: "all" (after every conv) or "one" (only after the spatial conv) in the residual branch.
        downsample: "in_block" (ResNet: strided spatial conv and a strided 1x1 projection shortcut in the first
            block of stages 2-4) or "separate" (norm + 2x2/2 conv between stages, as ConvNeXt).
        head_norm: a norm between global average pooling and the classifier.
        layer_scale: initial per-channel scale of the residual branch (0: none).
    """

    recipe: str = "resnet"
    depths: tuple[int, ...] = (3, 4, 6, 3)
    widths: tuple[int, ...] = (64, 128, 256, 512)
    stem: str = "resnet"
    patch_size: int = 4
    block: str = "bottleneck"
    expansion: int = 4
    spatial_conv: str = "dense"
    spatial_position: str = "middle"
    kernel_size: int = 3
    act: str = "relu"
    acts: str = "all"
    norm: str = "bn"
    norms: str = "all"
    downsample: str = "in_block"
    head_norm: bool = False
    layer_scale: float = 0.0

    def __post_init__(self) -> None:
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"Design.{name} must be one of {allowed}, not {getattr(self, name)!r}")
        if len(self.depths) != len(self.widths) or not self.depths:
            raise ValueError(f"depths {self.depths} and widths {self.widths} must be non-empty and equally long")
        if min(self.depths) < 1 or min(self.widths) < 1 or self.kernel_size % 2 == 0:
            raise ValueError("depths and widths must be >= 1 and kernel_size odd")

    @property
    def out_widths(self) -> tuple[int, ...]:
        """Channels between blocks (the residual stream) of each stage."""
        return tuple(w * self.expansion for w in self.widths) if self.block == "bottleneck" else self.widths

    def scaled(self, width: float = 1.0, depth: float = 1.0) -> Design:
        """The same design with widths x `width` and depths x `depth` (each at least 1), for small-scale runs."""
        return replace(
            self,
            widths=tuple(max(1, round(w * width)) for w in self.widths),
            depths=tuple(max(1, round(d * depth)) for d in self.depths),
        )

    def diff(self, other: Design) -> dict[str, tuple]:
        """The fields in which `other` differs from this design: name -> (ours, theirs)."""
        return {f.name: (getattr(self, f.name), getattr(other, f.name)) for f in fields(self)
                if getattr(self, f.name) != getattr(other, f.name)}


def _norm(kind: str, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if kind == "bn" else LayerNorm2d(channels)


def _act(kind: str) -> nn.Module:
    return nn.ReLU(inplace=True) if kind == "relu" else nn.GELU()


class Pointwise(nn.Linear):
    """A 1x1 conv on NCHW tensors whose weight is stored as a Linear's (out, in), the official layout of
    ConvNeXt's pwconv1/pwconv2, so that the final roadmap step loads ConvNeXt weights unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight[:, :, None, None], self.bias)


class RoadmapBlock(nn.Module):
    """The residual block of any `Design`: a spatial conv and two 1x1 convs in the design's order, norms
    and activations where it says, optional layer scale and stochastic depth, and a shortcut that projects
    (strided 1x1 conv + norm) when the block changes resolution or width.

    Submodules carry ConvNeXt's names whatever the design: `dwconv` is the k x k conv (dense until the
    depthwise step), `pwconv1`/`pwconv2` the 1x1 convs in order, `norm` the norm after the spatial conv and
    `pwnorm1`/`pwnorm2` those after the 1x1 convs.
    """

    def __init__(self, d: Design, in_ch: int, stage: int, stride: int = 1, drop_path: float = 0.0) -> None:
        super().__init__()
        out_ch = d.out_widths[stage]
        wide = d.widths[stage] * d.expansion
        hidden = wide if d.block == "inverted" else d.widths[stage]
        if d.spatial_position == "first":
            spatial_ch, order = in_ch, ("dwconv", "pwconv1", "pwconv2")
        else:
            spatial_ch, order = hidden, ("pwconv1", "dwconv", "pwconv2")
        self.order = order
        norm_after = {"dwconv": "norm", "pwconv1": "pwnorm1", "pwconv2": "pwnorm2"}
        normed = set(order) if d.norms == "all" else {"dwconv"}
        self.acts_after = set(order[:-1]) if d.acts == "all" else {order[1]}

        def bias(conv: str) -> bool:  # a following BatchNorm makes a conv bias redundant
            return not (conv in normed and d.norm == "bn")

        groups = spatial_ch if d.spatial_conv == "depthwise" else 1
        self.dwconv = nn.Conv2d(spatial_ch, spatial_ch, d.kernel_size, stride, d.kernel_size // 2, groups=groups,
                                bias=bias("dwconv"))
        self.pwconv1 = Pointwise(in_ch, hidden, bias=bias("pwconv1"))
        self.pwconv2 = Pointwise(hidden, out_ch, bias=bias("pwconv2"))
        for conv in order:
            if conv in normed:
                width = {"dwconv": spatial_ch, "pwconv1": hidden, "pwconv2": out_ch}[conv]
                self.add_module(norm_after[conv], _norm(d.norm, width))
        self.norm_after = {c: norm_after[c] for c in order if c in normed}
        self.act = _act(d.act)
        self.gamma = nn.Parameter(torch.full((out_ch,), d.layer_scale)) if d.layer_scale > 0 else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.act_after_add = d.acts == "all"
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=d.norm != "bn"),
                                          _norm(d.norm, out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for conv in self.order:
            y = getattr(self, conv)(y)
            if conv in self.norm_after:
                y = getattr(self, self.norm_after[conv])(y)
            if conv in self.acts_after:
                y = self.act(y)
        if self.gamma is not None:
            y = y * self.gamma[:, None, None]
        y = self.shortcut(x) + self.drop_path(y)
        return self.act(y) if self.act_after_add else y


class RoadmapNet(nn.Module):
    """The network of a `Design`: stem, stages of `RoadmapBlock`s, pooling, optional norm, classifier.

    Its state dict uses ConvNeXt's official keys (`downsample_layers.0` is the stem, `downsample_layers.1-3`
    the separate downsampling layers when the design has them, `stages.i.j.*`, `norm`, `head`), so the last
    roadmap step loads `convnext_tiny` / `convnext_base` weights as they are.
    """

    def __init__(self, design: Design, in_chans: int = 3, num_classes: int = 1000, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        d = self.design = design
        outs = d.out_widths
        stem_ch = d.widths[0]  # as torchvision's ResNet; the first bottleneck block projects it to 4C
        if d.stem == "resnet":
            stem = nn.Sequential(nn.Conv2d(in_chans, stem_ch, 7, 2, 3, bias=d.norm != "bn"),
                                 _norm(d.norm, stem_ch), _act(d.act), nn.MaxPool2d(3, 2, 1))
        else:
            stem = nn.Sequential(nn.Conv2d(in_chans, stem_ch, d.patch_size, d.patch_size, bias=d.norm != "bn"),
                                 _norm(d.norm, stem_ch))
        self.downsample_layers = nn.ModuleList([stem])
        separate = d.downsample == "separate"
        if separate:
            for i in range(1, len(outs)):
                self.downsample_layers.append(nn.Sequential(
                    _norm(d.norm, outs[i - 1]), nn.Conv2d(outs[i - 1], outs[i], 2, 2, bias=d.norm != "bn")))

        rates = torch.linspace(0, drop_path_rate, sum(d.depths), device="cpu").tolist()
        self.stages = nn.ModuleList()
        in_ch, k = stem_ch, 0
        for i, depth in enumerate(d.depths):
            if separate and i > 0:
                in_ch = outs[i]
            blocks = []
            for j in range(depth):
                stride = 2 if (i > 0 and j == 0 and not separate) else 1
                blocks.append(RoadmapBlock(d, in_ch, i, stride, rates[k]))
                in_ch, k = outs[i], k + 1
            self.stages.append(nn.Sequential(*blocks))

        self.num_features = outs[-1]
        if d.head_norm:
            self.norm = nn.LayerNorm(outs[-1], eps=1e-6) if d.norm == "ln" else nn.BatchNorm1d(outs[-1])
        else:
            self.norm = nn.Identity()
        self.head = nn.Linear(outs[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map."""
        for i, stage in enumerate(self.stages):
            if i < len(self.downsample_layers):
                x = self.downsample_layers[i](x)
            x = stage(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.forward_features(x).mean((-2, -1))))


@dataclass(frozen=True)
class Step:
    """One row of the roadmap: a design, the change that made it from its parent, the paper's figures.

    `paper_top1` / `paper_gmacs` are None where the paper gives no number. `kept` is False for the kernel
    sizes the paper tried and did not keep: the next step builds on the last kept one (`parent`).
    `note` records a reading or a disagreement within the paper; `gmacs_reference` is the figure a step
    whose Table 10 number no honest reading reaches is checked against instead (with its source in `note`).
    """

    index: int
    name: str
    change: str
    design: Design
    parent: str | None
    changed: tuple[str, ...]
    paper_top1: float | None
    paper_gmacs: float | None
    kept: bool = True
    note: str = ""
    gmacs_reference: float | None = None
    group: str = ""


@dataclass(frozen=True)
class Regime:
    """A whole roadmap: its steps and the Transformer it is compared with."""

    name: str
    steps: tuple[Step, ...]
    reference: tuple[str, float, float]  # (name, top-1, GMACs)
    final_model: str  # the registry model the last step must equal
    paper_source: str = field(default="")

    def __getitem__(self, key: int | str) -> Step:
        if isinstance(key, int):
            return self.steps[key]
        for s in self.steps:
            if s.name == key:
                return s
        raise KeyError(f"no step {key!r} in the {self.name} roadmap; steps: {[s.name for s in self.steps]}")

    def __iter__(self):
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)


_STEP15_NOTE = ("Table 10 gives 4.46 GMACs, Figure 2 gives 4.2: replacing BN by LN adds no conv or matmul, so no "
                "reading reaches 4.46; Figure 2's 4.2 is the previous steps' 4.15 at one decimal (4.46 would "
                "print 4.5), so we check against 4.15")
_STEP16_NOTE = ("Table 10 gives 4.49, but this step is ConvNeXt-T, whose count is 4.456 (Table 9: 4.46); no "
                "reading reaches 4.49 and stays ConvNeXt-T, so we check against Table 9")


def _modernize(start: Design, start_name: str, depths: Sequence[int], widths: Sequence[int],
               final_name: str, paper: dict[str, tuple[float | None, float | None]]) -> tuple[Step, ...]:
    """The steps of Section 2 from `start`, each as (name, the paper's words, fields changed, kept, note)."""
    # Figure 2's groups of steps.
    groups = {"stage ratio": "macro design", "patchify stem": "macro design", "depthwise conv": "ResNeXt",
              "increase width": "ResNeXt", "inverted bottleneck": "inverted bottleneck",
              "move depthwise up": "large kernel", "kernel 5": "large kernel", "kernel 7": "large kernel",
              "kernel 9": "large kernel", "kernel 11": "large kernel"}
    rows: list[tuple[str, str, dict, bool, str]] = [
        (start_name, "the original 90-epoch recipe", {}, True, ""),
        ("modern recipe", "300 epochs, AdamW, mixup, cutmix, RandAugment, random erasing, stochastic depth, "
         "label smoothing, layer scale", {"recipe": "modern", "layer_scale": 1e-6}, True,
         "layer scale 1e-6 is part of the recipe (Table 5)"),
        ("stage ratio", f"blocks per stage -> {tuple(depths)}", {"depths": tuple(depths)}, True, ""),
        ("patchify stem", "7x7/2 conv + max pool -> 4x4 stride-4 conv", {"stem": "patchify"}, True,
         "conv + norm, no activation (Swin's patch embedding)"),
        ("depthwise conv", "3x3 conv -> depthwise (groups = channels)", {"spatial_conv": "depthwise"}, True, ""),
        ("increase width", f"stage widths -> {tuple(widths)}", {"widths": tuple(widths)}, True, ""),
        ("inverted bottleneck", "1x1 C->4C, d3x3 4C, 1x1 4C->C", {"block": "inverted"}, True,
         "hidden = 4x the stage width; the shortcut projection narrows to C_in->C_out"),
        ("move depthwise up", "d3x3 C, 1x1 C->4C, 1x1 4C->C", {"spatial_position": "first"}, True,
         "the strided depthwise conv runs on the block's input channels"),
        ("kernel 5", "depthwise kernel 3 -> 5", {"kernel_size": 5}, True, ""),
        ("kernel 7", "depthwise kernel 5 -> 7 (kept)", {"kernel_size": 7}, True, ""),
        ("kernel 9", "depthwise kernel 7 -> 9 (not kept)", {"kernel_size": 9}, False, ""),
        ("kernel 11", "depthwise kernel 7 -> 11 (not kept)", {"kernel_size": 11}, False, ""),
        ("ReLU -> GELU", "every ReLU -> GELU", {"act": "gelu"}, True, ""),
        ("fewer activations", "one GELU per block, between the two 1x1 layers", {"acts": "one"}, True,
         "also none after the residual add"),
        ("fewer norms", "one BN per block, after the depthwise conv", {"norms": "one"}, True,
         "the shortcut projection keeps its norm"),
        ("BN -> LN", "every BN -> LN", {"norm": "ln"}, True, ""),
        (final_name, "LN + 2x2/2 conv between stages, LN after pooling",
         {"downsample": "separate", "head_norm": True}, True,
         "separate downsampling; the stem's LN is there since BN -> LN"),
    ]
    steps: list[Step] = []
    base: Step | None = None
    for i, (name, change, changes, kept, note) in enumerate(rows):
        design = start if base is None else replace(base.design, **changes)
        top1, gmacs = paper.get(name, (None, None))
        ref = None
        if name == "BN -> LN" and gmacs == 4.46:
            note, ref = _STEP15_NOTE, 4.15
        elif name == final_name and gmacs == 4.49:
            note, ref = _STEP16_NOTE, 4.46
        group = groups.get(name, "micro design" if i > 11 else "recipe")
        step = Step(i, name, change, design, base.name if base else None, tuple(changes), top1, gmacs, kept, note,
                    ref, group)
        steps.append(step)
        if kept:
            base = step
    return tuple(steps)


# Paper Table 10 (reference/paper.md section 3): (top-1, GMACs).
_TABLE10 = {
    "ResNet-50": (76.13, 4.09), "modern recipe": (78.82, 4.09), "stage ratio": (79.36, 4.53),
    "patchify stem": (79.51, 4.42), "depthwise conv": (78.28, 2.35), "increase width": (80.50, 5.27),
    "inverted bottleneck": (80.64, 4.64), "move depthwise up": (79.92, 4.07), "kernel 5": (80.35, 4.10),
    "kernel 7": (80.57, 4.15), "kernel 9": (80.57, 4.21), "kernel 11": (80.47, 4.29), "ReLU -> GELU": (80.62, 4.15),
    "fewer activations": (81.27, 4.15), "fewer norms": (81.41, 4.15), "BN -> LN": (81.47, 4.46),
    "ConvNeXt-T": (81.97, 4.49),
}
# Paper Table 11: only its endpoints are in our reference; the other cells are unknown, not invented.
_TABLE11 = {"ResNet-200": (78.20, 15.01), "ConvNeXt-B": (83.60, 15.35)}

ROADMAP_T = Regime(
    "T", _modernize(Design(), "ResNet-50", (3, 3, 9, 3), (96, 192, 384, 768), "ConvNeXt-T", _TABLE10),
    ("Swin-T", 81.30, 4.50), "convnext_tiny", "Table 10 / Figure 2")
ROADMAP_B = Regime(
    "B", _modernize(Design(depths=(3, 24, 36, 3)), "ResNet-200", (3, 3, 27, 3), (128, 256, 512, 1024),
                    "ConvNeXt-B", _TABLE11),
    ("Swin-B", 83.50, 15.43), "convnext_base", "Table 11")
REGIMES: dict[str, Regime] = {"t": ROADMAP_T, "b": ROADMAP_B}


def build(step: Step | Design, num_classes: int = 1000, in_chans: int = 3, drop_path_rate: float = 0.0) -> RoadmapNet:
    """The network of a roadmap step (or of any design)."""
    design = step.design if isinstance(step, Step) else step
    return RoadmapNet(design, in_chans=in_chans, num_classes=num_classes, drop_path_rate=drop_path_rate)
