"""The training loop: NaN loss stops with the step named and the last good checkpoint intact; SIGKILL
mid-epoch + --resume auto gives bit-identical weights; 2-process gloo DDP equals 1 process."""

import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from conftest import cli_env
from convnext.train import NonFiniteLossError, load_config, train
from convnext.train.engine import PAUSE_ENV
from convnext.train.state import CheckpointManager, load_checkpoint

# A tiny ConvNeXt on 384 Fashion-MNIST images, batch 32: 12 steps per epoch.
TINY = ["model.kwargs.dims=[8,16,32]", "model.kwargs.depths=[1,1,1]", "data.limit_train=384",
        "data.limit_val=128", "optim.batch_size=32", "optim.reference_batch=32", "optim.lr=4e-3",
        "optim.warmup_epochs=0.5", "run.progress=false", "run.tensorboard=false", "run.plots=false",
        "run.threads=1", "data.num_workers=0", "run.deterministic=true"]


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
    from convnext.models.registry import create_model

    cfg = _cfg(tmp_path, "nan", "run.ckpt_every_steps=2", "run.ema=false")
    model = NaNAfter(create_model("convnext_fmnist", in_chans=1, num_classes=10, dims=[8, 16, 32],
                                  depths=[1, 1, 1]), after=5)
    with pytest.raises(NonFiniteLossError, match=r"Loss is nan at global step 5 \(epoch 0, step 5 of 12\)"
                                                 r".*last-00000004\.pt"):
        train(cfg, model=model)
    ckpts = CheckpointManager(tmp_path / "nan").checkpoints()
    assert [p.name for p in ckpts] == ["last-00000002.pt", "last-00000004.pt"]
    ck = load_checkpoint(ckpts[-1])
    assert ck["global_step"] == 4 and (ck["epoch"], ck["step_in_epoch"]) == (0, 4)
    assert all(torch.isfinite(v).all() for v in ck["model"].values())
    assert not list((tmp_path / "nan").glob("*.tmp"))


def test_refuses_to_overwrite_a_run_without_resume(tmp_path):
    cfg = _cfg(tmp_path, "again", "run.max_steps=2", "run.ema=false")
    train(cfg)
    with pytest.raises(FileExistsError, match="--resume auto"):
        train(cfg)


def test_sigkill_mid_epoch_then_resume_is_bit_exact(tmp_path):
    extra = ["optim.epochs=2", "run.ckpt_every_steps=1", "data.mixup=0.8", "data.cutmix=1.0",
             "model.drop_path_rate=0.1", "run.ema_decay=0.9"]  # every RNG the loop draws from is in play
    ref = train(_cfg(tmp_path, "ref", *extra))
    # Kill the same run at global step 17 (epoch 1, step 5 of 12), then resume it.
    args = [f"--set={s}" for s in [*TINY, *extra]]
    env = {**cli_env(), PAUSE_ENV: "17"}
    proc = subprocess.Popen([sys.executable, "-m", "convnext", "train", "--out", str(tmp_path), "--name", "killed",
                             *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    marker = tmp_path / "killed" / "paused-at-17"
    deadline = time.time() + 120
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "the training process never reached step 17"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    latest = CheckpointManager(tmp_path / "killed").latest()
    ck = load_checkpoint(latest)
    assert (ck["epoch"], ck["step_in_epoch"], ck["global_step"]) == (1, 5, 17)

    resumed = train(_cfg(tmp_path, "killed", *extra, "run.resume=auto"))
    assert resumed.steps == ref.steps == 24
    a = load_checkpoint(CheckpointManager(tmp_path / "ref").latest())
    b = load_checkpoint(CheckpointManager(tmp_path / "killed").latest())
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs after resume"
    assert a["optimizer"]["state"][0]["exp_avg_sq"].equal(b["optimizer"]["state"][0]["exp_avg_sq"])
    assert resumed.final_top1 == ref.final_top1


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_ddp_equals_one_process_with_the_same_global_batch(tmp_path):
    # Global batch 32 = 2 ranks x 16. No mixup / drop path / EMA: those draw per-rank randomness by design.
    common = ["optim.epochs=1", "run.max_steps=6", "data.mixup=0.0", "data.cutmix=0.0", "run.ema=false",
              "model.drop_path_rate=0.0"]
    one = train(_cfg(tmp_path, "one", *common))
    args = [f"--set={s}" for s in [*TINY, *common, "optim.batch_size=16"]]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "convnext", "train",
           "--out", str(tmp_path), "--name", "two", *args]
    env = {**cli_env(), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=200)
    assert r.returncode == 0, r.stderr[-3000:]
    cfg_two = (tmp_path / "two" / "config.yaml").read_text()
    assert "world_size: 2" in cfg_two and "effective_batch: 32" in cfg_two
    a = load_checkpoint(CheckpointManager(tmp_path / "one").latest())["model"]
    b = load_checkpoint(CheckpointManager(tmp_path / "two").latest())["model"]
    assert one.steps == 6
    # Same data, same augmentation, gradients averaged over ranks: equal up to float summation order.
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, worst
