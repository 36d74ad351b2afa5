"""The training loop: NaN loss stops with the step named and the last good checkpoint intact; a bf16-autocast
run keeps fp32 weights near the fp32 run's; SIGKILL mid-epoch + --resume auto gives bit-identical weights;
2-process gloo DDP equals 1 process."""

import copy
import json
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from conftest import cli_env
from convnext.checkpoints.io import load_checkpoint
from convnext.data.datasets import DataError
from convnext.train import NonFiniteLossError, load_config, train
from convnext.train.state import CheckpointManager

# A tiny ConvNeXt on 192 Fashion-MNIST images, batch 32: 6 steps per epoch.
TINY = ["model.kwargs.dims=[8,16,32]", "model.kwargs.depths=[1,1,1]", "data.limit_train=192",
        "data.limit_val=128", "optim.batch_size=32", "optim.reference_batch=32", "optim.lr=4e-3",
        "optim.warmup_epochs=0.5", "run.progress=false", "run.tensorboard=false", "run.plots=false",
        "run.threads=1", "data.num_workers=0", "run.deterministic=true",
        "run.amp=none"]  # fp32 on every CPU (amp=auto trains in bf16 where the CPU has it): exact comparisons


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _cfg(tmp_path, name, *extra):
    return load_config("fashion_mnist", [*TINY, f"run.out_dir={tmp_path}", f"run.name={name}", *extra])


class NaNAfter(torch.nn.Module):
    """Wraps a model and returns NaN logits from the `after`-th training forward on."""

    def __init__(self, model, after):
        super().__init__()
        self.model, self.after, self.calls = model, after, 0

    def forward(self, x):
        out = self.model(x)
        if self.training:
            self.calls += 1
            if self.calls > self.after:
                return out * float("nan")
        return out


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    from convnext import create_model

    cfg = _cfg(tmp_path, "nan", "run.ckpt_every_steps=2", "run.ema=false")
    model = NaNAfter(create_model("convnext_fmnist", in_chans=1, num_classes=10, dims=[8, 16, 32],
                                  depths=[1, 1, 1]), after=5)
    with pytest.raises(NonFiniteLossError, match=r"Loss is nan at global step 5 \(epoch 0, step 5 of 6\)"
                                                 r".*last-00000004\.pt"):
        train(cfg, model=model)
    ckpts = CheckpointManager(tmp_path / "nan").checkpoints()
    assert [p.name for p in ckpts] == ["last-00000002.pt", "last-00000004.pt"]
    ck = load_checkpoint(ckpts[-1])
    assert ck["global_step"] == 4 and (ck["epoch"], ck["step_in_epoch"]) == (0, 4)
    assert all(torch.isfinite(v).all() for v in ck["model"].values())
    assert not list((tmp_path / "nan").glob("*.tmp"))


def test_epochs_without_evaluation_still_record_their_time(tmp_path):
    train(_cfg(tmp_path, "sparse", "optim.epochs=3", "run.eval_every=2", "run.ema=false"))
    records = [json.loads(line) for line in (tmp_path / "sparse" / "metrics.jsonl").read_text().splitlines()]
    per_epoch = [r for r in records if r["type"] in ("eval", "epoch")]
    assert [(r["type"], r["epoch"]) for r in per_epoch] == [("epoch", 1.0), ("eval", 2.0), ("eval", 3.0)]
    assert all(r["epoch_time_s"] > 0 and r["img_per_s"] > 0 and "train_loss" in r for r in per_epoch)


def test_refuses_to_overwrite_a_run_without_resume(tmp_path):
    cfg = _cfg(tmp_path, "again", "run.max_steps=2", "run.ema=false")
    train(cfg)
    with pytest.raises(FileExistsError, match="--resume auto"):
        train(cfg)


def test_bf16_autocast_run_on_cpu_keeps_fp32_weights_and_tracks_the_fp32_run(tmp_path):
    # run.amp=bf16 on CPU (fashion_mnist_long ships with it): the run records bf16, steps fp32 master weights and
    # EMA, and after a few steps sits near the same run in fp32 without equalling it.
    from convnext import create_model

    def flat(state: dict) -> torch.Tensor:
        return torch.cat([v.flatten() for v in state.values() if v.is_floating_point()])

    init = create_model("convnext_fmnist", in_chans=1, num_classes=10, dims=[8, 16, 32], depths=[1, 1, 1])
    weights = {"init": flat(init.state_dict())}
    for amp in ("bf16", "none"):
        train(_cfg(tmp_path, amp, f"run.amp={amp}", "run.max_steps=4"), model=copy.deepcopy(init))
        assert f"amp: {'bfloat16' if amp == 'bf16' else 'none'}" in (tmp_path / amp / "config.yaml").read_text()
        ck = load_checkpoint(CheckpointManager(tmp_path / amp).latest())
        assert all(v.dtype == torch.float32 for v in ck["model"].values() if v.is_floating_point())
        assert all(v.dtype == torch.float32 for v in ck["ema"].values() if v.is_floating_point())
        weights[amp] = flat(ck["model"])
    # bf16's departure from the fp32 run, relative to how far the fp32 run moved from the shared init
    apart = ((weights["bf16"] - weights["none"]).norm() / (weights["none"] - weights["init"]).norm()).item()
    assert 0 < apart < 0.3, f"bf16 run {apart:.3f} of the fp32 run's own step away from it"  # measured: 0.09


def test_sigkill_mid_epoch_then_resume_is_bit_exact(tmp_path):
    extra = ["optim.epochs=2", "run.ckpt_every_steps=1", "data.mixup=0.8", "data.cutmix=1.0",
             "model.drop_path_rate=0.1", "run.ema_decay=0.9"]  # every RNG the loop draws from is in play
    ref = train(_cfg(tmp_path, "ref", *extra))
    # Kill the same run at global step 9 (epoch 1, step 3 of 6), then resume it. A step callback pauses the run
    # right after step 9's checkpoint, so that the kill lands at a known place.
    overrides = [*TINY, *extra, f"run.out_dir={tmp_path}", "run.name=killed"]
    script = _PAUSED_RUN.format(overrides=overrides)
    proc = subprocess.Popen([sys.executable, "-c", script], env=cli_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    marker = tmp_path / "killed" / "paused-at-9"
    deadline = time.time() + 120
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "the training process never reached step 9"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    latest = CheckpointManager(tmp_path / "killed").latest()
    ck = load_checkpoint(latest)
    assert (ck["epoch"], ck["step_in_epoch"], ck["global_step"]) == (1, 3, 9)

    resumed = train(_cfg(tmp_path, "killed", *extra, "run.resume=auto"))
    assert resumed.steps == ref.steps == 12
    a = load_checkpoint(CheckpointManager(tmp_path / "ref").latest())
    b = load_checkpoint(CheckpointManager(tmp_path / "killed").latest())
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs after resume"
    assert a["optimizer"]["state"][0]["exp_avg_sq"].equal(b["optimizer"]["state"][0]["exp_avg_sq"])
    assert resumed.final_top1 == ref.final_top1


_PAUSED_RUN = """
import signal
from convnext.train import load_config, train

def pause_at_9(state):
    if state.global_step == 9:
        (state.run_dir / "paused-at-9").touch()
        signal.pause()

train(load_config("fashion_mnist", {overrides!r}), callbacks=[pause_at_9])
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_ddp_and_fsdp_equal_one_process_with_the_same_global_batch(tmp_path):
    # Global batch 32 = 2 ranks x 16. No mixup / drop path / EMA: those draw per-rank randomness by design.
    common = ["optim.epochs=1", "run.max_steps=3", "data.mixup=0.0", "data.cutmix=0.0", "run.ema=false",
              "model.drop_path_rate=0.0"]
    one = train(_cfg(tmp_path, "one", *common))
    a = load_checkpoint(CheckpointManager(tmp_path / "one").latest())["model"]
    assert one.steps == 3
    for strategy in ("ddp", "fsdp"):
        b = _torchrun(tmp_path, strategy, [*TINY, *common, "optim.batch_size=16", f"run.strategy={strategy}"])
        # Same data, same augmentation, gradients averaged over ranks: equal up to float summation order.
        worst = max((a[k] - b[k]).abs().max().item() for k in a)
        assert worst < 1e-5, (strategy, worst)


def _torchrun(tmp_path, name, overrides):
    args = [f"--set={s}" for s in overrides]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "convnext", "train",
           "--out", str(tmp_path), "--name", name, *args]
    env = {**cli_env(), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=200)
    assert r.returncode == 0, r.stderr[-3000:]
    cfg_two = (tmp_path / name / "config.yaml").read_text()
    assert "world_size: 2" in cfg_two and "effective_batch: 32" in cfg_two
    return load_checkpoint(CheckpointManager(tmp_path / name).latest())["model"]


def test_imagenet_style_recipe_on_a_folder_skips_and_counts_an_unreadable_image(tmp_path):
    # The paper's path end to end on a tiny folder: timm RandAugment + random erasing, Mixup/CutMix with the
    # soft-target loss, the paper's eval transform, and an unreadable image that is reported and skipped.
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            for i in range(8):
                img = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
                Image.fromarray(img).save(tmp_path / "data" / split / c / f"{i}.png")
    broken = tmp_path / "data" / "train" / "dog" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff truncated")
    cfg = load_config("in1k_tiny", [
        f"data.root={tmp_path / 'data'}", "data.input_size=32", "data.num_workers=0", "model.name=convnext_atto",
        "model.kwargs.dims=[8,16,32,64]", "model.kwargs.depths=[1,1,1,1]", "model.kwargs.patch_size=2",
        "optim.batch_size=17", "optim.accum_steps=1", "optim.epochs=2", "optim.warmup_epochs=1",
        f"run.out_dir={tmp_path}", "run.name=folder", "run.progress=false", "run.tensorboard=false",
        "run.plots=false", "run.threads=1"])
    result = train(cfg)
    assert result.bad_images == 2  # once per epoch, each time by path in the log
    assert result.steps == 2 and 0.0 <= result.best_top1 <= 100.0
    saved = (tmp_path / "folder" / "config.yaml").read_text()
    assert "lr_scaled: 1.66015625e-05" in saved  # 4e-3 * 17 / 4096
    cfg = load_config("in1k_tiny", [f"data.root={tmp_path / 'data'}", "data.bad_images=stop", *[
        f"{k}={v}" for k, v in (("data.input_size", 32), ("data.num_workers", 0), ("model.name", "convnext_atto"),
                                ("optim.batch_size", 17), ("optim.accum_steps", 1), ("run.out_dir", tmp_path),
                                ("run.name", "stop"),
                                ("run.progress", "false"), ("run.threads", 1))]])
    with pytest.raises(DataError, match=r"Cannot read image .*broken\.jpg"):
        train(cfg)


def test_amp_auto_uses_bf16_only_where_the_cpu_computes_it():
    from convnext.fast import capabilities
    from convnext.train.loop import amp_dtype

    cpu = torch.device("cpu")
    assert amp_dtype("auto", cpu) == (torch.bfloat16 if capabilities().native_bf16 else None)
    assert amp_dtype("none", cpu) is None and amp_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        amp_dtype("fp16", cpu)
