"""FCMAE (ConvNeXt V2 pretraining): the masking property of the dense masked encoder, the mask, the decoder and
the loss as the official code defines them, and a loss that trains."""

import copy

import pytest
import torch

import convnext
from checkpoint_helpers import randomize
from convnext.models import GRN, BlockV2
from convnext.pretrain import FCMAE, build_fcmae, fcmae_loss

# tiny models: one thread avoids OpenMP oversubscription on the shared test machine (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"depths": (2, 2, 2, 2), "dims": (16, 32, 48, 64)}


@pytest.fixture(scope="module")
def fcmae():
    torch.manual_seed(0)
    # GRN's gamma and beta start at zero (GRN = identity): perturbed, so that its statistics matter
    return randomize(build_fcmae("convnextv2_atto", decoder_embed_dim=32, **SMALL), 0.3)


def _with_new_masked_pixels(model, imgs, mask):
    """`imgs` with every pixel of the masked patches replaced by large random values."""
    p = model.patch_size
    n, _, h, w = imgs.shape
    masked = mask.view(n, 1, h // p, w // p).bool().repeat_interleave(p, 2).repeat_interleave(p, 3).expand_as(imgs)
    changed = imgs.clone()
    changed[masked] = torch.randn(int(masked.sum()), dtype=imgs.dtype) * 50
    return changed, masked


def test_masked_pixels_never_reach_visible_positions(fcmae):
    imgs = torch.randn(3, 3, 96, 128)  # a 3 x 4 grid of 32-pixel patches
    mask = fcmae.random_mask(3, (3, 4), generator=torch.Generator().manual_seed(1))
    changed, _ = _with_new_masked_pixels(fcmae, imgs, mask)
    with torch.no_grad():
        out, out_changed = fcmae.forward_encoder(imgs, mask), fcmae.forward_encoder(changed, mask)
        visible = (mask == 0).view(3, 1, 3, 4).expand_as(out)
        assert torch.equal(out[visible], out_changed[visible])  # bit for bit
        assert out[visible].abs().min() > 0 and (out[~visible] == 0).all()
        # Without the masking, the same change reaches the visible positions: the test can fail
        assert not torch.allclose(fcmae.encoder.forward_features(imgs)[visible],
                                  fcmae.encoder.forward_features(changed)[visible])


def test_masked_encoder_computes_what_the_sparse_encoder_does(fcmae, monkeypatch):
    # Sparse convolutions see absent sites as zeros and GRN pools the present ones: with the visible patches a
    # top-left 2 x 2 block, that is the encoder run on the 64 x 64 crop of those patches (zero padding and all).
    # In float64, so that only the order of the sums differs. Masking the stem alone keeps the masked pixels out;
    # masking the depthwise conv and GRN's statistics is what makes the rest the sparse computation.
    model = copy.deepcopy(fcmae).double()
    imgs = torch.randn(2, 3, 96, 128, dtype=torch.float64)
    mask = torch.ones(2, 3, 4)
    mask[:, :2, :2] = 0
    mask = mask.flatten(1)
    crop = imgs[..., :64, :64]
    with torch.no_grad():
        expected = model.encoder.forward_features(crop)
        torch.testing.assert_close(model.forward_encoder(imgs, mask)[..., :2, :2], expected)
        # GRN's statistics over all positions (the junk of masked ones included) would not be the sparse encoder
        real = GRN.response
        monkeypatch.setattr(GRN, "response", lambda self, x, visible=None: real(self, x))
        assert not torch.allclose(model.forward_encoder(imgs, mask)[..., :2, :2], expected, rtol=1e-3)
        monkeypatch.undo()

        def dwconv_unmasked(self, x, visible=None):  # GRN masked, the depthwise conv's input and output not
            y = self.act(self.pwconv1(self.norm(self.dwconv(x).permute(0, 2, 3, 1))))
            y = self.pwconv2(self.grn(y, None if visible is None else visible.permute(0, 2, 3, 1)))
            return x + y.permute(0, 3, 1, 2)

        monkeypatch.setattr(BlockV2, "forward", dwconv_unmasked)  # visible values spread into masked sites and back
        assert not torch.allclose(model.forward_encoder(imgs, mask)[..., :2, :2], expected, rtol=1e-3)


def test_random_mask_is_the_official_one(fcmae):
    model = build_fcmae("convnextv2_atto", **SMALL)
    assert model.mask_ratio == 0.6
    mask = model.random_mask(64, (7, 7), generator=torch.Generator().manual_seed(0))
    assert mask.shape == (64, 49) and set(mask.unique().tolist()) == {0.0, 1.0}
    assert (mask.sum(1) == 49 - int(49 * 0.4)).all()  # 30 masked, 19 visible in every sample
    assert len({tuple(m.tolist()) for m in mask}) == 64  # drawn per sample
    again = model.random_mask(64, (7, 7), generator=torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)


def test_decoder_and_state_dict_follow_the_official_fcmae():
    model = build_fcmae("convnextv2_tiny", optimize=False)
    assert model.patch_size == 32 and model.in_chans == 3
    sd = model.state_dict()
    assert sd["mask_token"].shape == (1, 512, 1, 1)
    assert sd["proj.weight"].shape == (512, 768, 1, 1)
    assert sd["decoder.0.grn.gamma"].shape == (1, 1, 1, 2048) and "decoder.1.dwconv.weight" not in sd
    assert sd["pred.weight"].shape == (32 * 32 * 3, 512, 1, 1)
    assert not any(k.startswith(("encoder.norm", "encoder.head")) for k in sd)  # no final norm, no head
    assert model.config["fcmae"] == {"mask_ratio": 0.6, "decoder_depth": 1, "decoder_embed_dim": 512,
                                     "norm_pix_loss": True}
    with pytest.raises(ValueError, match="needs a hierarchical ConvNeXt V2 encoder"):
        FCMAE(convnext.create_model("convnext_atto"))


def test_loss_is_normalised_pixels_on_masked_patches_only(fcmae):
    imgs = torch.randn(2, 3, 64, 64)
    mask = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0]])
    target = fcmae.patchify(imgs)
    # patch order (row, column, channel) within a patch: the official 'nchpwq->nhwpqc'
    assert torch.equal(target[0, 1, : 3], imgs[0, :, 0, 32])
    assert torch.equal(target[1, 2, 3 * 32: 3 * 33], imgs[1, :, 33, 0])
    assert torch.equal(fcmae.unpatchify(target, (2, 2)), imgs)
    norm = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    pred = norm.transpose(1, 2).reshape(2, -1, 2, 2).clone()  # (N, p*p*3, h, w), the decoder's layout
    visible = (mask == 0).view(2, 1, 2, 2).expand_as(pred)
    pred[visible] = 100.0  # wrong everywhere a patch is visible: no effect on the loss
    assert fcmae.forward_loss(imgs, pred, mask).item() == pytest.approx(0.0, abs=1e-10)
    pred = pred + 0.5 * (~visible)  # off by 0.5 on every masked value: loss 0.25
    assert fcmae.forward_loss(imgs, pred, mask).item() == pytest.approx(0.25, rel=1e-6)


def test_loss_trains_and_pads_28_pixel_images():
    torch.manual_seed(0)
    model = build_fcmae("convnextv2_fmnist", in_chans=1, decoder_embed_dim=32)
    assert model.patch_size == 8 and model.pad(torch.zeros(1, 1, 28, 28)).shape == (1, 1, 32, 32)
    # ramps of random orientation: their masked patches are predictable from the visible ones
    angle = torch.rand(8, 1, 1, 1) * 6.3
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 28), torch.linspace(-1, 1, 28), indexing="ij")
    imgs = torch.sin(3 * (xs * angle.cos() + ys * angle.sin()))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95))
    losses = []
    for _ in range(30):
        torch.manual_seed(1)  # the same masks each step: the loss of one batch must fall
        loss = fcmae_loss(model, (imgs, torch.zeros(8)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(p.grad is not None for p in model.parameters())
    assert losses[-1] < 0.5 * losses[0], losses


# `convnext pretrain`'s recipe, tiny: 192 Fashion-MNIST images, batch 32 (6 steps per epoch)
PRETRAIN = ["model.kwargs.dims=[8,16,32]", "model.kwargs.depths=[1,1,1]", "fcmae.decoder_embed_dim=16",
            "data.limit_train=192", "data.limit_val=64", "optim.batch_size=32", "optim.reference_batch=32",
            "optim.epochs=2", "optim.warmup_epochs=0.5", "run.progress=false", "run.tensorboard=false",
            "run.threads=1", "data.num_workers=0", "run.amp=none", "run.ckpt_every_steps=1"]


class _Crash(Exception):
    pass


def test_pretrain_resumes_exactly_and_its_checkpoint_fine_tunes(tmp_path, capsys):
    from convnext.cli import main
    from convnext.pretrain.task import pretrain
    from convnext.train import load_config, train
    from convnext.train.state import CheckpointManager

    def cfg(name, *extra):
        return load_config("fcmae_fashion_mnist", [*PRETRAIN, f"run.out_dir={tmp_path}", f"run.name={name}", *extra])

    full = pretrain(cfg("full"))
    assert full["steps"] == 12 and full["final"]["val_loss"] > 0 and (tmp_path / "full" / "loss.png").exists()

    def crash_after_7(state):
        if state.global_step == 7:
            raise _Crash

    with pytest.raises(_Crash):  # a crash mid-epoch, right after step 7's checkpoint
        pretrain(cfg("crashed"), callbacks=[crash_after_7])
    resumed = pretrain(cfg("crashed", "run.resume=auto"))
    a, b = (torch.load(CheckpointManager(tmp_path / n).latest(), weights_only=True) for n in ("full", "crashed"))
    assert resumed["final"] == full["final"]  # the same masks and images after resuming: the same numbers
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["task"] == "fcmae" and a["model_config"]["num_classes"] == 0

    # fine-tuning: the encoder from the pretraining checkpoint, a fresh norm and head
    last = CheckpointManager(tmp_path / "full").latest()
    with pytest.warns(UserWarning, match="norm and head"):
        start = convnext.create_model("convnextv2_fmnist", pretrained=str(last), num_classes=10)
    assert torch.equal(start.state_dict()["stages.2.0.grn.gamma"], a["model"]["encoder.stages.2.0.grn.gamma"])
    ft = load_config("fcmae_ft_fashion_mnist", [
        "model.kwargs.dims=[8,16,32]", "model.kwargs.depths=[1,1,1]", f"model.init={last}", "data.limit_train=128",
        "data.limit_val=64", "optim.batch_size=32", "optim.epochs=1", "run.progress=false", "run.threads=1",
        "data.num_workers=0", f"run.out_dir={tmp_path}", "run.name=ft", "run.tensorboard=false", "run.plots=false"])
    with pytest.warns(UserWarning, match="norm and head"):
        result = train(ft, callbacks=[lambda state: None])
    assert result.steps == 4
    tuned = torch.load(tmp_path / "ft" / "best.pt", weights_only=True)["model"]
    assert not torch.equal(tuned["stages.0.0.pwconv1.weight"], a["model"]["encoder.stages.0.0.pwconv1.weight"])

    # the command: a classification recipe is refused with the command to use, and the other way round
    assert main(["pretrain", "--recipe", "fashion_mnist", "--print-config"]) == 2
    assert "run it with `convnext train" in capsys.readouterr().err
    assert main(["train", "--recipe", "fcmae_fashion_mnist", "--print-config"]) == 2
    assert "run it with `convnext pretrain" in capsys.readouterr().err
