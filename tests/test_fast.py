"""`convnext.optimize` and `convnext.freeze` compute what the reference network computes, on every CPU.

Every comparison is against the reference run in float64, relative to the reference's own rounding error in
the same precision (tests/numerics.py), and each test checks that the fast kernel it is about really ran where
this machine's probe says it serves.
"""

import copy
import io
import subprocess
import sys

import pytest
import torch
from PIL import Image

import convnext
from conftest import cli_env
from convnext import fast
from convnext.data.transforms import eval_transform
from convnext.fast import block as fast_block
from convnext.fast import capabilities
from convnext.models import Block
from numerics import as_float64, assert_as_accurate, grads, normwise_error, outputs, weighted_sum

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
            elif name.endswith(("bias", "beta")):  # beta: V2's GRN
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


V2 = {
    "v2": dict(name="convnextv2_atto", depths=(1, 1, 2, 1), dims=(16, 32, 48, 64), num_classes=10),
    "v2_backbone": dict(name="convnextv2_atto", depths=(1, 1, 2, 1), dims=(16, 32, 48, 64), features_only=True),
}
SMALL_AND_V2 = {**SMALL, **V2}


def _reference(kind: str, **overrides) -> torch.nn.Module:
    kwargs = {**SMALL_AND_V2[kind], **overrides}
    return _perturb(convnext.create_model(kwargs.pop("name"), optimize=False, **kwargs))


@pytest.fixture
def count_fused(monkeypatch):
    """How often the oneDNN fused inference MLP ran (its ATen fallback does not count)."""
    calls = []
    real = fast_block.mlp_inference

    def spy(y, *args, **kwargs):
        fused = (kwargs.get("packed") or fast.block.onednn_fusion(y)) and not torch.compiler.is_compiling()
        calls.append(bool(fused))
        return real(y, *args, **kwargs)

    monkeypatch.setattr(fast_block, "mlp_inference", spy)
    return calls


def test_optimize_changes_the_computation_only():
    ref = _reference("hierarchical")
    params = dict(ref.named_parameters())
    keys = list(ref.state_dict())
    seen = []
    hook = ref.stages[0][0].register_forward_hook(lambda m, i, o: seen.append(type(m).__name__))
    model = convnext.optimize(ref)
    assert model is ref and all(isinstance(m, fast.FastBlock) for s in model.stages for m in s)
    assert dict(model.named_parameters()) == params and list(model.state_dict()) == keys
    model(torch.randn(1, 3, 32, 32))
    with fast.reference(model):
        assert all(type(m) is Block for s in model.stages for m in s)
        model(torch.randn(1, 3, 32, 32))
    assert seen == ["FastBlock", "Block"] and isinstance(model.stages[0][0], fast.FastBlock)
    hook.remove()
    # plain modules: deepcopy and pickling work, the optimized class travels with them
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    assert isinstance(torch.load(buffer, weights_only=False).stages[0][0], fast.FastBlock)
    assert isinstance(copy.deepcopy(model).stages[0][0], fast.FastBlock)


@pytest.mark.parametrize("kind", list(SMALL))
def test_inference_as_accurate_as_the_reference(kind, count_fused):
    ref = _reference(kind).eval()
    exact_model = as_float64(ref)
    model = convnext.optimize(copy.deepcopy(ref))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        exact = exact_model(x.double())
        expected = ref(x)
        assert_as_accurate(model(x), expected, exact, "no_grad")
        assert_as_accurate(convnext.freeze(ref)(x), expected, exact, "frozen")
    with torch.inference_mode():
        assert_as_accurate(model(x), expected, exact, "inference_mode")
    # eval mode with autograd recording: the differentiable branch runs, to the same accuracy
    assert_as_accurate(model(x), expected, exact, "grad enabled")
    assert count_fused and all(count_fused) == capabilities().linear_kernels(torch.float32)


@pytest.mark.parametrize("kind", ["hierarchical", "isotropic", "backbone"])
@pytest.mark.parametrize("drop_path", [0.0, 0.5])
def test_training_gradients_as_accurate_as_the_reference(kind, drop_path, monkeypatch):
    ref = _reference(kind, drop_path_rate=drop_path).train()
    exact_model = as_float64(ref)
    model = convnext.optimize(copy.deepcopy(ref))
    mlp_calls = []
    real = fast.mlp._PointwiseMLP.apply
    monkeypatch.setattr(fast.mlp._PointwiseMLP, "apply", lambda *a: mlp_calls.append(1) or real(*a))
    x = torch.randn(4, 3, 64, 64)
    results = []
    for m, inp in ((ref, x), (model, x), (exact_model, x.double())):
        torch.manual_seed(3)  # the same drop-path draws
        y = m(inp)
        weighted_sum(y).backward()
        results.append((outputs(y), grads(m)))
    (y_ref, g_ref), (y_fast, g_fast), (y_exact, g_exact) = results
    assert_as_accurate(y_fast, y_ref, y_exact, "outputs")
    names = [n for n, _ in ref.named_parameters()]
    for name, a, b, c in zip(names, g_fast, g_ref, g_exact, strict=True):
        assert_as_accurate(a, b, c, f"gradient of {name}")
    assert bool(mlp_calls) == capabilities().linear_kernels(torch.float32)


@pytest.mark.parametrize("kind", list(V2))
def test_v2_inference_as_accurate_as_the_reference(kind, monkeypatch):
    ref = _reference(kind).eval()
    exact_model = as_float64(ref)
    model = convnext.optimize(copy.deepcopy(ref))
    assert all(isinstance(b, fast_block.FastBlockV2) for s in model.stages for b in s)
    fused = []

    class Spy:  # oneDNN's fused Linear, counted by its post-op ("gelu"), with its other overloads left as they are
        def __init__(self, real):
            self.real, self.binary = real, real.binary

        def __call__(self, *args):
            fused.append(args[3])
            return self.real(*args)

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", Spy(torch.ops.mkldnn._linear_pointwise))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        exact = exact_model(x.double())
        expected = ref(x)
        assert_as_accurate(model(x), expected, exact, "no_grad")
        assert_as_accurate(convnext.freeze(ref)(x), expected, exact, "frozen")
    with torch.inference_mode():
        assert_as_accurate(model(x), expected, exact, "inference_mode")
    assert_as_accurate(model(x), expected, exact, "grad enabled")
    # the fused Linear+GELU ran in every block wherever the probe found it working
    assert (fused.count("gelu") >= 2 * 5) == capabilities().linear_kernels(torch.float32)


@pytest.mark.parametrize("kind", list(V2))
@pytest.mark.parametrize("drop_path", [0.0, 0.5])
def test_v2_training_gradients_as_accurate_as_the_reference(kind, drop_path, monkeypatch):
    from convnext.fast import dwconv

    ref = _reference(kind, drop_path_rate=drop_path).train()
    exact_model = as_float64(ref)
    model = convnext.optimize(copy.deepcopy(ref))
    calls = {"mlp": 0, "dw": 0}
    real_mlp, real_dw = fast_block._GRNMLP.apply, dwconv._DepthwiseConv.apply
    monkeypatch.setattr(fast_block._GRNMLP, "apply", lambda *a: calls.__setitem__("mlp", calls["mlp"] + 1)
                        or real_mlp(*a))
    monkeypatch.setattr(dwconv._DepthwiseConv, "apply", lambda *a: calls.__setitem__("dw", calls["dw"] + 1)
                        or real_dw(*a))
    x = torch.randn(4, 3, 64, 64)
    results = []
    for m, inp in ((ref, x), (model, x), (exact_model, x.double())):
        torch.manual_seed(3)  # the same drop-path draws
        y = m(inp)
        weighted_sum(y).backward()
        results.append((outputs(y), grads(m)))
    (y_ref, g_ref), (y_fast, g_fast), (y_exact, g_exact) = results
    assert_as_accurate(y_fast, y_ref, y_exact, "outputs")
    names = [n for n, _ in ref.named_parameters()]
    for name, a, b, c in zip(names, g_fast, g_ref, g_exact, strict=True):
        assert_as_accurate(a, b, c, f"gradient of {name}")
    assert (calls["mlp"] == 5) == capabilities().linear_kernels(torch.float32)
    assert (calls["dw"] == 5) == dwconv.kernel_status().startswith("compiled")


def test_v2_bf16_autocast_as_accurate_as_the_reference_under_bf16():
    # inference and training under bf16 autocast: GRN's statistics in fp32, the rest as the reference's autocast
    ref = _reference("v2")
    x = _real_batch()
    fast_model = convnext.optimize(copy.deepcopy(ref))
    with torch.inference_mode():
        exact = as_float64(ref.eval())(x.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref_bf16, got = ref(x).float(), fast_model.eval()(x).float()
    assert normwise_error(ref_bf16, exact) > 1e-3  # bf16 really ran
    assert torch.isfinite(got).all()
    assert_as_accurate(got, ref_bf16, exact, "v2 bf16 autocast inference", factor=3.0)
    runs = {"ref": copy.deepcopy(ref), "fast": convnext.optimize(copy.deepcopy(ref)), "exact": as_float64(ref)}
    x = x[:4]
    for name, m in runs.items():
        m.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name != "exact"):
            y = m(x.double() if name == "exact" else x)
        weighted_sum(y).backward()
    got, ref_grads = (torch.cat([g.flatten() for g in grads(runs[n])]) for n in ("fast", "ref"))
    exact = torch.cat([g.flatten() for g in grads(runs["exact"])])
    assert normwise_error(ref_grads, exact) > 1e-3
    assert_as_accurate(got, ref_grads, exact, "v2 bf16 gradients", factor=3.0)


def test_training_uses_the_compiled_depthwise_gradient(monkeypatch):
    from convnext.fast import dwconv

    calls = []
    real = dwconv._DepthwiseConv.backward
    monkeypatch.setattr(dwconv._DepthwiseConv, "backward", staticmethod(lambda ctx, g: calls.append(1) or real(ctx, g)))
    for k, expected in ((7, dwconv.kernel_status().startswith("compiled")), (3, False)):  # oneDNN's 3x3 is fast
        calls.clear()
        m = convnext.create_model("convnext_fmnist", num_classes=10, in_chans=1, kernel_size=k)
        m(torch.randn(2, 1, 28, 28)).sum().backward()
        assert bool(calls) == expected and (not calls or len(calls) == sum(m.depths))


def test_frozen_model_is_a_snapshot_for_inference_only():
    ref = _reference("hierarchical").eval()
    frozen = convnext.freeze(ref)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = frozen(x)
        for p in ref.parameters():
            p.mul_(2)  # the frozen copy shares nothing with the model
        assert torch.equal(frozen(x), before)
    assert not any(p.requires_grad for p in frozen.parameters())
    with pytest.raises(RuntimeError, match="inference only"):
        frozen(x.requires_grad_())


def test_eval_after_any_optimizer_step_sees_the_new_weights():
    # no weight cache: an optimizer step (fused AdamW writes without bumping version counters) shows at once
    model = convnext.optimize(_reference("hierarchical"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model.eval()(x)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    model.train()(x).square().mean().backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        got = model(x)
        with fast.reference(model):
            expected = model(x)
        exact = as_float64(model)(x.double())
    assert normwise_error(before, exact) > 0.01  # the step changed the logits
    assert_as_accurate(got, expected, exact, "after a fused AdamW step")


def test_packed_inference_at_a_row_count_it_was_not_packed_for(count_fused):
    # 3 x 40 x 37 = 4440 pixels, a row count other than the one the packed weights were told to expect
    ref = _perturb(Block(16)).eval()
    x = torch.randn(3, 16, 40, 37).contiguous(memory_format=torch.channels_last)
    assert x.shape[0] * x.shape[2] * x.shape[3] not in (fast_block.PACK_ROWS_HINT, 2 * fast_block.PACK_ROWS_HINT)
    model = convnext.optimize(copy.deepcopy(ref))
    with torch.inference_mode():
        exact, expected = as_float64(ref)(x.double()), ref(x)
        assert_as_accurate(model(x), expected, exact, "optimized")
        assert_as_accurate(fast_block.FrozenBlock(ref, torch.float32)(x), expected, exact, "frozen")
    assert all(count_fused) == capabilities().linear_kernels(torch.float32)


def _real_batch(size: int = 64) -> torch.Tensor:
    skimage_data = pytest.importorskip("skimage.data")
    tf = eval_transform(size)
    names = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")
    return torch.stack([tf(Image.fromarray(getattr(skimage_data, n)())) for n in names])


@pytest.mark.parametrize("kind", ["hierarchical", "isotropic"])
def test_bf16_inference_as_accurate_as_the_reference_in_bf16(kind):
    """Under bf16 autocast, with bf16 weights, and frozen in bf16: no further from the exact logits than the
    reference itself under bf16 autocast, and the same top-1 wherever that is not a near-tie."""
    ref = _reference(kind).eval()
    model = convnext.optimize(copy.deepcopy(ref))
    x = _real_batch()
    with torch.inference_mode():
        exact = as_float64(ref)(x.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref_bf16 = ref(x).float()
            autocast = model(x).float()
            frozen_autocast = convnext.freeze(ref, torch.bfloat16)(x).float()
        weights = copy.deepcopy(model).to(torch.bfloat16)(x.bfloat16()).float()
        frozen = convnext.freeze(ref, torch.bfloat16)(x.bfloat16()).float()
    assert normwise_error(ref_bf16, exact) > 1e-3  # bf16 really ran
    top2 = exact.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.1 * exact.std()  # a near-tie may flip legitimately
    assert clear.sum() >= 3
    for what, got in (("autocast", autocast), ("bf16 weights", weights), ("frozen bf16", frozen),
                      ("frozen bf16 under autocast", frozen_autocast)):
        assert torch.isfinite(got).all(), what
        assert_as_accurate(got, ref_bf16, exact, what, factor=3.0)
        assert torch.equal(got.argmax(1)[clear], exact.argmax(1)[clear]), what


@pytest.mark.parametrize("kind", ["hierarchical", "isotropic"])
def test_bf16_autocast_training_as_accurate_as_the_reference_under_bf16(kind):
    # `run.amp=bf16` on CPU: fp32 master weights and gradients, no further from the exact gradients than the
    # reference under the same autocast
    ref = _reference(kind)
    runs = {"ref": copy.deepcopy(ref), "fast": convnext.optimize(copy.deepcopy(ref)), "exact": as_float64(ref)}
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for name, m in runs.items():
        m.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name != "exact"):
            y = m(x.double() if name == "exact" else x)
        weighted_sum(y).backward()
        if name != "exact":
            assert all(p.grad.dtype == torch.float32 for p in m.parameters())
    got, ref_err = (torch.cat([g.flatten() for g in grads(runs[n])]) for n in ("fast", "ref"))
    exact = torch.cat([g.flatten() for g in grads(runs["exact"])])
    assert normwise_error(ref_err, exact) > 1e-3  # bf16 really ran
    assert_as_accurate(got, ref_err, exact, "bf16 gradients", factor=3.0)


def test_compiled_training_and_inference_as_accurate_as_the_reference():
    # `run.compile`: Inductor compiles the optimized model (its kernels step aside for Inductor's own fusion)
    ref = _reference("hierarchical").train()
    optimized = convnext.optimize(copy.deepcopy(ref))
    model = fast.compile(optimized)
    exact_model = as_float64(ref)
    x = torch.randn(2, 3, 64, 64)
    results = []
    for m, params, inp in ((ref, ref, x), (model, optimized, x), (exact_model, exact_model, x.double())):
        y = m(inp)
        weighted_sum(y).backward()
        results.append((y, grads(params)))
    (y_ref, g_ref), (y_fast, g_fast), (y_exact, g_exact) = results
    assert torch.isfinite(y_fast).all() and all(torch.isfinite(g).all() for g in g_fast)
    assert_as_accurate(y_fast, y_ref, y_exact, "compiled training logits")
    for a, b, c in zip(g_fast, g_ref, g_exact, strict=True):
        assert_as_accurate(a, b, c, "compiled gradient")
    for m in (ref, model, exact_model):
        m.eval()
    with torch.no_grad():
        y = model(x)
        assert torch.isfinite(y).all()
        assert_as_accurate(y, ref(x), exact_model(x.double()), "compiled inference")


def test_describe_says_which_kernels_run():
    caps = capabilities()
    train = fast.describe("train")
    assert train.startswith(f"cpu {caps.isa} fp32 train:") and "depthwise weight gradient" in train
    assert ("oneDNN MLP" in train) == caps.linear_kernels(torch.float32)
    bf16 = fast.describe("inference", dtype=torch.bfloat16)
    assert ("oneDNN fused" in bf16) == caps.linear_kernels(torch.bfloat16)
    assert "reference ops" in fast.describe("inference", device="cuda")


_AVX2_SCRIPT = r"""
import torch, convnext
from convnext.fast import capabilities, describe
caps = capabilities()
assert caps.isa == "AVX2" and not caps.native_bf16, caps
model = convnext.create_model("convnext_atto", depths=(1, 1, 1, 1), dims=(16, 32, 48, 64), num_classes=10)
x = torch.randn(2, 3, 64, 64)
with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
    a = model.eval()(x)
b = convnext.freeze(model, torch.bfloat16)(x.bfloat16())
model.train()
with torch.autocast("cpu", dtype=torch.bfloat16):
    loss = model(x).float().logsumexp(1).mean()
loss.backward()
assert all(torch.isfinite(t).all() for t in (a, b, loss)), "non-finite"
v2 = convnext.create_model("convnextv2_atto", depths=(1, 1, 1, 1), dims=(16, 32, 48, 64), num_classes=10)
with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
    c = v2.eval()(x)
v2.train()
with torch.autocast("cpu", dtype=torch.bfloat16):
    loss = v2(x).float().logsumexp(1).mean()
loss.backward()
assert all(torch.isfinite(t).all() for t in (c, loss)), "non-finite (V2)"
print(describe("inference", dtype=torch.bfloat16))
"""


def test_bf16_runs_on_a_cpu_capped_at_avx2():
    """Issue 15: oneDNN has no bf16 Linear on an AVX2-only CPU; bf16 inference and training must still run."""
    # cli_env: the subprocess imports this checkout's sources, not whichever convnext is installed
    env = {**cli_env(), "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    out = subprocess.run([sys.executable, "-c", _AVX2_SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "bf16 inference: ATen's Linear layers" in out.stdout and "emulated" in out.stdout


_COMPILE_SCRIPT = r"""
import torch, convnext
from convnext import fast
torch.manual_seed(0)
model = convnext.create_model("convnext_atto", depths=(1, 1, 1, 1), dims=(16, 32, 48, 64), num_classes=10).eval()
x = torch.randn(2, 3, 64, 64)
with torch.no_grad():
    y, expected = fast.compile(model)(x), model(x)
assert torch.isfinite(y).all(), "compiled logits are not finite"
assert torch.allclose(y, expected, atol=1e-4), (y - expected).abs().max()
"""


def test_compiled_models_share_no_inductor_cache_across_instruction_sets(tmp_path):
    """The root cause of issue 15's NaN: torch's Inductor cache is not keyed on ATEN_CPU_CAPABILITY, so a process
    capped at AVX2 reused an AVX-512 process's compiled graph and returned NaN (the reverse corrupted the heap).
    `fast.compile` keeps one cache folder per ISA: two processes, one cache, both right."""
    for cap in ({}, {"ATEN_CPU_CAPABILITY": "avx2"}, {}):
        env = {**cli_env(), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path), **cap}
        out = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], capture_output=True, text=True, env=env,
                             timeout=600)
        assert out.returncode == 0, (cap, out.stderr[-1500:])
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("isa-")) == [
        "isa-avx2", f"isa-{torch.backends.cpu.get_cpu_capability().lower()}"] or \
        torch.backends.cpu.get_cpu_capability() == "AVX2"


def test_freezing_a_v2_model_runs_its_blocks_fast():
    ref = convnext.create_model("convnextv2_atto", depths=(1, 1, 1, 1), dims=(16, 32, 48, 64), num_classes=10,
                                optimize=False).eval()
    frozen = convnext.freeze(ref)
    assert all(type(b) is fast.FastBlockV2 for s in frozen.stages for b in s)
    assert all(type(b) is not fast.FastBlockV2 for s in ref.stages for b in s)  # the model itself is untouched
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert_as_accurate(frozen(x), ref(x), as_float64(ref)(x.double()), "frozen V2")


def test_the_probe_runs_right_whatever_context_first_asks():
    # the first call may come from inside autocast (a bf16 training step): a fresh process, probed there
    fresh = subprocess.run([sys.executable, "-c", "import torch\nfrom convnext.fast import capabilities\n"
                            "with torch.autocast('cpu', dtype=torch.bfloat16), torch.enable_grad():\n"
                            "    c = capabilities()\nprint(sorted(str(d) for d in c.onednn_linear))"],
                           capture_output=True, text=True, env=cli_env(), timeout=120)
    assert fresh.returncode == 0, fresh.stderr[-1500:]
    assert fresh.stdout.strip() == str(sorted(str(d) for d in capabilities().onednn_linear))
