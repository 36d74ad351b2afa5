"""FCMAE: the fully convolutional masked autoencoder that pretrains ConvNeXt V2 (Woo et al., CVPR 2023, Section 3).

Random patches of the image are masked; the ConvNeXt V2 encoder sees only the visible ones; a light decoder
(one V2 block) predicts the pixels of the masked patches; the loss is the mean squared error on the masked
patches only, against per-patch normalised pixels.

The official PyTorch encoder runs on sparse convolutions (MinkowskiEngine). This one runs densely and re-applies
the mask after every spatial operation, as the authors' JAX code does ("numerically identical to sparse conv"):
the stem output and every downsampling output are zeroed at masked positions, every block zeroes its input
before the depthwise convolution and the convolution's output after it, and GRN takes its statistics over
visible positions only (`BlockV2(x, visible)`). The mask patches are as large as the encoder's total stride
(32 pixels for the paper's models), so the patchify stem and the 2x2 downsampling never mix a visible and a
masked patch either. Nothing flows from masked to visible positions: tests/test_fcmae.py changes the masked
pixels and checks that the encoder's visible outputs stay bit for bit the same, and checks that the visible
outputs are what the sparse encoder computes (the encoder run on the visible patches alone, zero-padded).

Two documented departures from the official PyTorch code: GRN's statistics are per sample, as in the dense
model and the JAX code (the sparse GRN pools all samples of the batch, facebookresearch/ConvNeXt-V2#86); and the
weights start from the ConvNeXt init (truncated normal, std 0.02), where the official `FCMAE._init_weights`
re-initialises the encoder's depthwise and linear weights and every Conv2d with timm 0.3.2's `trunc_normal_`
default std of 1.0.

    model = build_fcmae("convnextv2_atto")
    loss = fcmae_loss(model, images)          # what a training loop calls per batch
    weights = encoder_state_dict("checkpoint.pth")   # -> the V2 classifier's official keys (no norm, no head)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models import BlockV2, ConvNeXt

# The paper's settings (official main_pretrain.py, models/fcmae.py)
MASK_RATIO, DECODER_DEPTH, DECODER_EMBED_DIM = 0.6, 1, 512


class FCMAE(nn.Module):
    """A ConvNeXt V2 encoder, a decoder of `decoder_depth` V2 blocks of width `decoder_embed_dim`, and the masked
    reconstruction loss. The state dict has the official FCMAE names (`encoder.*` dense, `proj.*`,
    `mask_token`, `decoder.*`, `pred.*`); `encoder_state_dict` turns it into classifier weights.

    Args:
        encoder: a hierarchical ConvNeXt with `use_grn=True` (e.g. `create_model("convnextv2_tiny",
            num_classes=0)`); its final norm and head are removed (the official encoder has none).
        decoder_depth, decoder_embed_dim: the decoder (paper: 1 block of width 512).
        mask_ratio: the fraction of patches masked (paper: 0.6).
        norm_pix_loss: the targets are each patch's pixels normalised by the patch's mean and (unbiased)
            variance, as the paper's runs (official main_pretrain.py sets it).
    """

    def __init__(self, encoder: ConvNeXt, decoder_depth: int = DECODER_DEPTH,
                 decoder_embed_dim: int = DECODER_EMBED_DIM, mask_ratio: float = MASK_RATIO,
                 norm_pix_loss: bool = True) -> None:
        super().__init__()
        if not isinstance(encoder, ConvNeXt) or not getattr(encoder, "use_grn", False):
            raise ValueError("FCMAE needs a hierarchical ConvNeXt V2 encoder (a convnextv2_* model, whose blocks "
                             f"take a mask); got a {type(encoder).__name__} without GRN blocks.")
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        for name in ("norm", "head"):
            if hasattr(encoder, name):
                delattr(encoder, name)
        self.encoder = encoder
        stem = encoder.downsample_layers[0][0]
        # A mask patch covers one position of the last stage: the stem's stride times 2 per downsampling
        self.patch_size = stem.stride[0] * 2 ** (len(encoder.stages) - 1)
        self.in_chans = stem.in_channels
        self.mask_ratio, self.norm_pix_loss = mask_ratio, norm_pix_loss
        self.proj = nn.Conv2d(encoder.dims[-1], decoder_embed_dim, 1)
        self.mask_token = nn.Parameter(torch.zeros(1, decoder_embed_dim, 1, 1))
        self.decoder = nn.Sequential(*[BlockV2(decoder_embed_dim) for _ in range(decoder_depth)])
        self.pred = nn.Conv2d(decoder_embed_dim, self.patch_size ** 2 * self.in_chans, 1)
        for m in (self.proj, self.decoder, self.pred):
            m.apply(_init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def random_mask(self, n: int, grid: tuple[int, int], device: torch.device | str = "cpu",
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """A random mask (N, h * w), 1 = masked, 0 = visible: per sample int(L * (1 - mask_ratio)) visible
        patches, drawn as the official `gen_random_mask` (argsort of Gaussian noise)."""
        length = grid[0] * grid[1]
        keep = int(length * (1 - self.mask_ratio))
        noise = torch.randn(n, length, generator=generator, device=generator.device if generator else "cpu")
        rank = noise.argsort(dim=1).argsort(dim=1)  # each patch's place in the shuffled order
        return (rank >= keep).float().to(device)

    def pad(self, imgs: torch.Tensor) -> torch.Tensor:
        """`imgs` padded (replicating the border) to a multiple of the patch size, e.g. Fashion-MNIST's 28 -> 32."""
        p = self.patch_size
        dh, dw = -imgs.shape[-2] % p, -imgs.shape[-1] % p
        if dh == dw == 0:
            return imgs
        return F.pad(imgs, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2), mode="replicate")

    def forward_encoder(self, imgs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The encoder's last feature map (N, C, h, w) for padded `imgs`, computed from the visible patches only
        (mask: (N, h * w), 1 = masked); zero at masked positions, as the sparse encoder's dense output."""
        n, _, height, width = imgs.shape
        grid = (height // self.patch_size, width // self.patch_size)
        visible = (mask == 0).view(n, 1, *grid)
        x = imgs
        for i, down in enumerate(self.encoder.downsample_layers):
            x = down(x)
            scale = x.shape[-1] // grid[1]
            vis = visible.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
            x = torch.where(vis, x, 0.0)
            for block in self.encoder.stages[i]:
                x = block(x, vis)
        return torch.where(visible, x, 0.0)

    def forward_decoder(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per position of the last stage, the predicted pixels of its patch (N, p * p * in_chans, h, w)."""
        x = self.proj(x)
        m = mask.view(x.shape[0], 1, *x.shape[-2:]).to(x.dtype)
        x = x * (1.0 - m) + self.mask_token.to(x.dtype) * m
        return self.pred(self.decoder(x))

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, L, p * p * C), each patch ordered (row, column, channel) as the official code."""
        p, (n, c, height, width) = self.patch_size, imgs.shape
        x = imgs.reshape(n, c, height // p, p, width // p, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(n, (height // p) * (width // p), p * p * c)

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """The inverse of `patchify` for a (h, w) grid of patches."""
        p, n, c = self.patch_size, x.shape[0], self.in_chans
        x = x.reshape(n, grid[0], grid[1], p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(n, c, grid[0] * p, grid[1] * p)

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error per patch, averaged over the masked patches only."""
        target = self.patchify(imgs).float()
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        pred = pred.flatten(2).transpose(1, 2).float()  # (N, L, p * p * C)
        loss = (pred - target).square().mean(dim=-1)
        return (loss * mask).sum() / mask.sum().clamp_min(1)

    def forward(self, imgs: torch.Tensor, mask: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, predicted patches (N, p * p * C, h, w), mask (N, h * w)); a random mask unless one is given."""
        imgs = self.pad(imgs)
        grid = (imgs.shape[-2] // self.patch_size, imgs.shape[-1] // self.patch_size)
        if mask is None:
            mask = self.random_mask(imgs.shape[0], grid, imgs.device, generator)
        pred = self.forward_decoder(self.forward_encoder(imgs, mask), mask)
        return self.forward_loss(imgs, pred, mask), pred, mask


def build_fcmae(name: str, *, mask_ratio: float = MASK_RATIO, decoder_depth: int = DECODER_DEPTH,
                decoder_embed_dim: int = DECODER_EMBED_DIM, norm_pix_loss: bool = True, optimize: bool = True,
                **model_kwargs: Any) -> FCMAE:
    """FCMAE around the encoder `name` (a convnextv2_* model; `model_kwargs` go to `create_model`, e.g.
    in_chans, drop_path_rate, depths, dims). `model.config` records what rebuilds it."""
    from ..api import create_model

    encoder = create_model(name, num_classes=0, optimize=optimize, **model_kwargs)
    model = FCMAE(encoder, decoder_depth, decoder_embed_dim, mask_ratio, norm_pix_loss)
    model.config = {"model": name, **{k: v for k, v in encoder.config.items() if k not in ("model", "num_classes")},
                    "fcmae": {"mask_ratio": mask_ratio, "decoder_depth": decoder_depth,
                              "decoder_embed_dim": decoder_embed_dim, "norm_pix_loss": norm_pix_loss}}
    return model


def fcmae_loss(model: FCMAE, batch: torch.Tensor | tuple | list) -> torch.Tensor:
    """The pretraining loss of one batch: `batch` is the images, or (images, labels) whose labels FCMAE ignores."""
    images = batch[0] if isinstance(batch, (tuple, list)) else batch
    return model(images)[0]


def encoder_state_dict(checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
                       key: str | None = None) -> dict[str, torch.Tensor]:
    """The encoder weights of an FCMAE checkpoint as a ConvNeXt V2 classifier state dict (official layout,
    without the final norm and head, which fine-tuning initialises), as the official fine-tuning extracts them:
    the decoder dropped, `encoder.` stripped, MinkowskiEngine kernels reshaped to dense convolutions.

    `checkpoint` is a path or a state dict: the official sparse pretraining checkpoint, ours (`FCMAE`), or a
    released `pt_only/*_fcmae.pt` encoder. Load the result with `create_model(name, pretrained=path)` after
    saving it, or `model.load_state_dict(weights, strict=False)` (norm.* and head.* stay as initialised).
    """
    from ..checkpoints import read_checkpoint, to_official, unwrap_state_dict

    raw = checkpoint if isinstance(checkpoint, Mapping) else read_checkpoint(checkpoint)
    state_dict = to_official(unwrap_state_dict(dict(raw), key))
    if not any(k.endswith(".grn.gamma") for k in state_dict):
        raise ValueError("This checkpoint has no GRN parameters: it is not a ConvNeXt V2 (FCMAE) encoder.")
    return {k: v for k, v in state_dict.items() if not k.startswith(("norm.", "head."))}


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
