"""Every compute path computes what the official "linear" path computes: logits, features and gradients."""

import copy

import pytest
import torch
from PIL import Image

from convnext import create_model
from convnext.data.transforms import eval_transform
from convnext.models import Block

FAST_PATHS = ("conv", "fused")
# bf16 keeps 8 bits of mantissa: logits of these small random-weight models move by at most this, relative
# to their spread (measured about 0.01-0.02; the bound leaves room for other CPUs' kernels).
BF16_TOLERANCE = 0.06

SMALL = {
    "hierarchical": dict(name="convnext_atto", depths=(1, 1, 2, 1), dims=(16, 32, 48, 64), num_classes=10),
    "isotropic": dict(name="convnext_iso_small", depth=2, dim=32, patch_size=8, num_classes=10,
                      layer_scale_init_value=1e-6),
    "isotropic_no_gamma": dict(name="convnext_iso_small", depth=2, dim=32, patch_size=8, num_classes=10),
    "backbone": dict(name="convnext_atto", depths=(1, 1, 2, 1), dims=(16, 32, 48, 64), features_only=True),
}


def _perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Give gamma, the LayerNorms and the biases values far from their init, so folding them is really tested
    (gamma = 1e-6 and LN = identity would make any folding look right)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma") or (".norm" in name and name.endswith("weight")):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def _pair(kind: str, path: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    kwargs = dict(SMALL[kind])
    ref = _perturb(create_model(kwargs.pop("name"), compute_path="linear", **kwargs))
    fast = copy.deepcopy(ref)
    fast.set_compute_path(path)
    return ref, fast


def _outputs(y) -> list[torch.Tensor]:
    return list(y) if isinstance(y, (list, tuple)) else [y]


def _close(a, b, atol=1e-5) -> None:
    for x, y in zip(_outputs(a), _outputs(b), strict=True):
        assert x.shape == y.shape
        torch.testing.assert_close(x, y, rtol=1e-5, atol=atol)


@pytest.mark.parametrize("path", FAST_PATHS)
@pytest.mark.parametrize("kind", list(SMALL))
def test_eval_outputs_match_reference(kind, path):
    ref, fast = _pair(kind, path)
    ref.eval(), fast.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = ref(x)
        _close(fast(x), expected)
    with torch.inference_mode():
        _close(fast(x), expected)
    # with autograd on, the fused path runs its differentiable branch: same numbers
    _close(fast(x), expected)


@pytest.mark.parametrize("path", FAST_PATHS)
@pytest.mark.parametrize("kind", ["hierarchical", "isotropic", "backbone"])
def test_train_mode_gradients_match_reference(kind, path):
    ref, fast = _pair(kind, path)
    ref.train(), fast.train()
    x = torch.randn(2, 3, 64, 64)
    outs = []
    for m in (ref, fast):
        y = _outputs(m(x))
        sum((t * torch.linspace(-1, 1, t.numel()).view_as(t)).sum() for t in y).backward()
        outs.append(y)
    _close(outs[1], outs[0])
    grads = dict(ref.named_parameters())
    for name, p in fast.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_train_gradients_match_reference_with_drop_path():
    # With stochastic depth the fused path keeps the residual add outside its fused MLP: same draws, same numbers.
    kwargs = dict(SMALL["hierarchical"], drop_path_rate=0.5)
    ref = _perturb(create_model(kwargs.pop("name"), compute_path="linear", **kwargs)).train()
    fast = copy.deepcopy(ref)
    fast.set_compute_path("fused")
    x = torch.randn(4, 3, 64, 64)
    outs = []
    for m in (ref, fast):
        torch.manual_seed(3)
        y = m(x)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        outs.append(y)
    _close(outs[1], outs[0])
    grads = dict(ref.named_parameters())
    for name, p in fast.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_auto_picks_fused_on_cpu_and_keeps_the_state_dict():
    model = create_model("convnext_atto", depths=(1, 1, 1, 1), dims=(8, 16, 24, 32))
    keys = list(model.state_dict())
    model.eval()(torch.randn(1, 3, 32, 32))
    assert {b.compute_path for b in model.modules() if isinstance(b, Block)} == {"fused"}
    assert list(model.state_dict()) == keys and not any("cache" in k for k in keys)


def test_folded_weights_follow_parameter_changes():
    ref, fast = _pair("hierarchical", "fused")
    ref.eval(), fast.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        fast(x)  # fills the cache of folded weights
    # an optimizer step changes gamma, LN and both pointwise layers in place
    for m in (ref, fast):
        opt = torch.optim.SGD(m.parameters(), lr=0.5)
        m(x).square().mean().backward()
        opt.step()
    with torch.no_grad():
        _close(fast(x), ref(x))
        # load_state_dict copies into the parameters; in-place edits bump the version counter too
        new = _perturb(copy.deepcopy(ref))
        with torch.no_grad():
            for p in new.parameters():
                p.mul_(1.5)
        ref.load_state_dict(new.state_dict())
        fast.load_state_dict(new.state_dict())
        _close(fast(x), ref(x))
        fast.stages[2][1].gamma.mul_(-1)
        ref.stages[2][1].gamma.mul_(-1)
        _close(fast(x), ref(x))


@pytest.mark.parametrize("opt_kwargs", [{"fused": True}, {"foreach": True}, {}])
def test_eval_after_any_optimizer_sees_the_new_weights(opt_kwargs):
    # torch's fused AdamW writes parameters without bumping their version counter (measured in torch 2.15)
    ref, fast = _pair("hierarchical", "fused")
    x = torch.randn(2, 3, 64, 64)
    for m in (ref, fast):
        m.eval()
        with torch.inference_mode():
            m(x)  # fills the cache of folded weights
        m.train()
        opt = torch.optim.AdamW(m.parameters(), lr=0.1, **opt_kwargs)
        m(x).square().mean().backward()
        opt.step()
        m.eval()
    with torch.inference_mode():
        _close(fast(x), ref(x))


def test_fused_inference_tiles_cover_every_pixel():
    # 3 x 40 x 37 = 4440 pixels: two full tiles of the fused MLP and a partial one
    from convnext.models import layers

    ref = Block(16).eval()
    with torch.no_grad():
        ref.gamma.uniform_(0.5, 1.5)
        ref.norm.weight.uniform_(0.5, 1.5)
    fast = copy.deepcopy(ref)
    fast.compute_path = "fused"
    x = torch.randn(3, 16, 40, 37).contiguous(memory_format=torch.channels_last)
    assert x.shape[0] * x.shape[2] * x.shape[3] > 2 * layers._TILE_ROWS
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), ref(x), rtol=1e-5, atol=1e-5)


def test_fused_inference_splits_only_batches_over_the_mmap_ceiling(monkeypatch):
    from convnext.models import convnext as convnext_module

    # ConvNeXt-T at batch 32, 224 x 224: 38.5 MB per stage-0 activation in fp32 (two pieces), 19 MB in bf16
    tiny = create_model("convnext_tiny", num_classes=0).eval()
    with torch.inference_mode():
        assert tiny._inference_pieces(torch.empty(32, 3, 224, 224)) == 2
        assert tiny._inference_pieces(torch.empty(32, 3, 224, 224, dtype=torch.bfloat16)) is None
    ref, fast = _pair("hierarchical", "fused")
    ref.eval(), fast.eval()
    x = torch.randn(7, 3, 64, 64)  # stem output 16 x 16 x 16 fp32 = 16 KiB per image
    with torch.inference_mode():
        assert fast._inference_pieces(x) is None  # 112 KiB: far under glibc's 32 MiB
        expected = ref(x)
        monkeypatch.setattr(convnext_module, "_MMAP_CEILING_BYTES", 50 * 2**10)  # 3 images fit
        assert fast._inference_pieces(x) == 3  # the fewest pieces that fit
        seen = []
        hook = fast.stages[0].register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
        _close(fast(x), expected)
        hook.remove()
        assert seen == [3, 2, 2]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert fast._inference_pieces(x) == 2  # bf16 halves the activation: 6 images fit
        assert ref._inference_pieces(x) is None  # only the fused path splits
        _close(torch.fx.symbolic_trace(ref)(x), expected)  # the check never looks at x on the reference path
        monkeypatch.setattr(convnext_module, "_MMAP_CEILING_BYTES", 10 * 2**10)
        assert fast._inference_pieces(x) is None  # one image alone is over it: splitting gains nothing
        monkeypatch.setattr(convnext_module, "_MMAP_CEILING_BYTES", 50 * 2**10)
    assert fast._inference_pieces(x) is None  # autograd on: a backward needs the whole batch's graph
    with torch.no_grad():
        assert fast.train()._inference_pieces(x) is None


def test_model_copies_and_pickles_after_fused_inference():
    # the fp32 cache holds oneDNN's opaque packed weights, which themselves cannot be copied or saved
    import io

    _, fast = _pair("hierarchical", "fused")
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        expected = fast.eval()(x)
    assert any(b._inference_cache for b in fast.modules() if isinstance(b, Block))
    twin = copy.deepcopy(fast)
    buffer = io.BytesIO()
    torch.save(fast, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    with torch.inference_mode():
        for m in (twin, loaded, fast):
            torch.testing.assert_close(m(x), expected, rtol=0, atol=0)


def test_cache_is_reused_while_weights_stay():
    _, fast = _pair("hierarchical", "fused")
    block = fast.stages[0][0]
    with torch.inference_mode():
        fast.eval()(torch.randn(1, 3, 64, 64))
        first = block._inference_weights(torch.float32)
        fast(torch.randn(1, 3, 64, 64))
        assert all(a is b for a, b in zip(block._inference_weights(torch.float32), first, strict=True))


def _real_batch(size: int = 64) -> torch.Tensor:
    skimage_data = pytest.importorskip("skimage.data")
    tf = eval_transform(size)
    names = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")
    return torch.stack([tf(Image.fromarray(getattr(skimage_data, n)())) for n in names])


@pytest.mark.parametrize("kind", ["hierarchical", "isotropic"])
def test_bf16_within_tolerance_and_same_top1(kind):
    """Ours under bf16 autocast and with bf16 weights against the fp32 reference, on real images."""
    ref, fast = _pair(kind, "fused")
    ref.eval(), fast.eval()
    x = _real_batch()
    with torch.inference_mode():
        expected = ref(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = fast(x).float()
        weights = copy.deepcopy(fast).to(torch.bfloat16)(x.bfloat16()).float()
    spread = expected.std()
    top2 = expected.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * BF16_TOLERANCE * spread  # a near-tie may flip legitimately
    assert clear.sum() >= 3
    for got in (autocast, weights):
        err = (got - expected).abs().max() / spread
        assert err < BF16_TOLERANCE, f"bf16 logits off by {err:.3f} of their spread"
        assert err > 0  # bf16 really ran
        assert torch.equal(got.argmax(1)[clear], expected.argmax(1)[clear])


def test_compiled_fused_training_matches_reference():
    # `run.compile` in a recipe: torch.compile of the fused path's training branch (its hand-written kernels step
    # aside for Inductor) computes the reference's logits and gradients.
    ref, fast = _pair("hierarchical", "fused")
    ref.train(), fast.train()
    x = torch.randn(2, 3, 64, 64)
    outs = []
    for m in (ref, torch.compile(fast)):
        y = m(x)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        outs.append(y)
    _close(outs[1], outs[0], atol=1e-4)
    grads = dict(ref.named_parameters())
    for name, p in fast.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-3, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


def test_compiled_fused_inference_matches_reference():
    # `run.compile` evaluates torch.compile(model) in eval mode under no_grad: the fused inference branch with
    # its folded weights, compiled (oneDNN's packed weights stay out of the graph)
    ref, fast = _pair("hierarchical", "fused")
    ref.eval(), fast.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        _close(torch.compile(fast)(x), ref(x), atol=1e-4)


@pytest.mark.parametrize("kind", ["hierarchical", "isotropic"])
def test_bf16_autocast_training_gradients_as_close_as_the_reference_under_bf16(kind):
    # `run.amp=bf16` on CPU (the long Fashion-MNIST recipe): the fused training branch under autocast (depthwise
    # conv kept fp32, the MLP through autocast's bf16 matmuls) against the fp32 reference's gradients, and no
    # further off than the reference itself under the same autocast (measured: 0.5-0.8% of the gradient norm
    # for both; single small bias vectors, whose terms nearly cancel, reach 10% on either path alike).
    ref, fast = _pair(kind, "fused")
    ref_bf16 = copy.deepcopy(ref)
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for m, dtype in ((ref, None), (fast, torch.bfloat16), (ref_bf16, torch.bfloat16)):
        m.train()
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            y = m(x)
        (y.float() * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        assert all(p.grad.dtype == torch.float32 for p in m.parameters())  # fp32 master weights and gradients

    want = torch.cat([p.grad.flatten() for p in ref.parameters()])

    def rel_err(m: torch.nn.Module) -> float:
        return ((torch.cat([p.grad.flatten() for p in m.parameters()]) - want).norm() / want.norm()).item()

    err, ref_err = rel_err(fast), rel_err(ref_bf16)
    # the fused fp32 path differs from the reference by ~1e-6: a floor of 1e-3 shows bf16 really ran on both
    assert 1e-3 < err < 0.03 and ref_err > 1e-3, f"bf16 gradients off by {err:.4f} (reference {ref_err:.4f})"
    assert err < 2 * ref_err, f"ours {err:.4f} vs the reference's own bf16 error {ref_err:.4f}"
