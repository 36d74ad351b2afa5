"""Data at scale: WebDataset shards written by `convnext shard` from real photos read back as the same samples an
ImageFolder gives; every sample once per epoch over 2 ranks x 2 workers; exact mid-epoch resume of the sample
stream; a SIGKILLed and resumed run and a 2-process torchrun run on shards equal to the ImageFolder run; Hugging
Face datasets (save_to_disk and parquet); unreadable images reported; clear errors for bad patterns and paths."""

import gzip
import io
import json
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import cli_env
from convnext.checkpoints.io import load_checkpoint
from convnext.data.datasets import CheckedImageFolder, DataError, SeededDataset, build_datasets, collate_skipping
from convnext.data.shards import ShardDataset, resolve_shards, write_shards
from convnext.distributed import ResumableSampler
from convnext.train import load_config, train
from convnext.train.state import CheckpointManager

pytest.importorskip("webdataset")
N_TRAIN, N_VAL = 17, 5  # per class: 51 training images, 3 of them left over by a global batch of 16


def _photo_folder(root):
    """An ImageFolder of real photos: 3 classes, each random crops of one scikit-image photo, 40x40, JPEG and PNG."""
    from skimage import data

    rng = np.random.default_rng(0)
    for split, count in (("train", N_TRAIN), ("val", N_VAL)):
        for name, photo in (("cat", data.chelsea()), ("coffee", data.coffee()), ("rocket", data.rocket())):
            (root / split / name).mkdir(parents=True)
            h, w = photo.shape[:2]
            for i in range(count):
                s = rng.uniform(0.4, 1.0)
                ch, cw = int(h * s), int(w * s)
                y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
                img = Image.fromarray(photo[y:y + ch, x:x + cw]).resize((40, 40), Image.BICUBIC)
                img.save(root / split / name / f"{i:02d}.{'jpg' if i % 2 else 'png'}", quality=90)
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return _photo_folder(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def shards(photos, tmp_path_factory):
    """The photos as shards of at most 10 samples in the folder's order (so index i is the folder's image i)."""
    out = tmp_path_factory.mktemp("shards")
    write_shards(photos, out, max_count=10, shuffle=False, log=lambda s: None)
    return out


def _data_cfg(*extra):
    return load_config("in1k_tiny", ["data.input_size=32", "data.num_workers=0", *extra]).data


def test_writer_keeps_the_standard_layout_and_the_folders_samples(photos, shards, tmp_path):
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["splits"]["train"]["shards"] == {f"train-00000{i}.tar": n for i, n in enumerate([10] * 5 + [1])}
    assert json.loads((shards / "classes.json").read_text()) == ["cat", "coffee", "rocket"]
    with tarfile.open(shards / "train-000000.tar") as tf:
        assert tf.getnames()[:6] == ["00000000.cls", "00000000.json", "00000000.png",
                                     "00000001.cls", "00000001.jpg", "00000001.json"]
        assert json.loads(tf.extractfile("00000001.json").read()) == {"path": "train/cat/01.jpg", "class": "cat"}
    # Same images, same per-sample seeds: the shards give exactly the tensors the folder gives, augmented or not.
    folder, sharded = build_datasets(_data_cfg(f"data.root={photos}")), build_datasets(
        _data_cfg(f"data.root={shards}", "data.dataset=wds"))
    assert sharded[2:] == folder[2:] == (3, 3) and sharded[0].classes == folder[0].classes
    a, b = SeededDataset(folder[0]), SeededDataset(sharded[0])
    for i in range(0, 3 * N_TRAIN, 5):
        xa, ya, _ = a[(i, 1000 + i)]
        xb, yb, _ = b[(i, 1000 + i)]
        assert ya == yb and torch.equal(xa, xb), i
    assert torch.equal(folder[1][7][0], sharded[1][7][0])
    # `convnext shard --index` (re)indexes existing shards in place.
    from convnext.cli import build_parser, shard

    (shards / "val-000001.tar.idx.json").unlink()
    argv = ["shard", "--index", str(shards / "val-{000000..000001}.tar")]
    assert shard.main(build_parser(argv).parse_args(argv)) == 0
    assert json.loads((shards / "val-000001.tar.idx.json").read_text())["labels"] == [2] * 5
    # The default shuffled order holds the same samples, mixed across shards (what streaming readers need).
    write_shards(photos, tmp_path, splits=("train",), max_count=10, workers=2, log=lambda s: None)
    mixed = ShardDataset(resolve_shards("train", tmp_path))
    assert sorted(mixed.targets.tolist()) == sorted(sharded[0].targets.tolist())
    assert len(set(mixed.targets[:10].tolist())) == 3


# Records every item a shard or HF data set serves, as "<split> <rank> <key>" lines of a file: loader workers are
# other processes, so they append to a file (one short O_APPEND write per line keeps concurrent lines whole).
_TRACER = """
import os
from convnext.data import hf, shards


def traced(cls, key):
    serve = cls.__getitem__

    def getitem(self, index):
        item = serve(self, index)
        with open(os.environ["TRACE_FILE"], "a") as f:
            f.write(f"{self.name} {os.environ.get('RANK', '0')} {key(self, index)}\\n")
        return item

    cls.__getitem__ = getitem


traced(shards.ShardDataset, lambda ds, i: ds.keys[i])
traced(hf.HFImageDataset, lambda ds, i: i)
"""


def _trace_samples(monkeypatch, path):
    """Record what the data sets serve in this process and its loader workers (see _TRACER), once per test."""
    monkeypatch.setenv("TRACE_FILE", str(path))
    from convnext.data import hf, shards

    if getattr(shards.ShardDataset.__getitem__, "__name__", "") == "getitem":
        return  # already traced in this test: the file alone changes
    for cls in (shards.ShardDataset, hf.HFImageDataset):
        monkeypatch.setattr(cls, "__getitem__", cls.__getitem__)  # restored after the test
    exec(_TRACER, {})


def _keys_by_rank(ds, epoch, tmp_path, monkeypatch, world=2, batch=8, workers=2):
    trace = tmp_path / f"trace-{epoch}"
    _trace_samples(monkeypatch, trace)
    for rank in range(world):
        monkeypatch.setenv("RANK", str(rank))
        sampler = ResumableSampler(len(ds), batch, seed=3, rank=rank, world_size=world)
        sampler.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(SeededDataset(ds), batch_size=batch, sampler=sampler,
                                             num_workers=workers, collate_fn=collate_skipping)
        assert sum(len(y) for _, y, _ in loader) == len(sampler)
    lines = [line.split() for line in trace.read_text().splitlines()]
    return {r: [k for _, rank, k in lines if rank == str(r)] for r in range(world)}


def test_every_sample_once_per_epoch_over_2_ranks_x_2_workers(shards, tmp_path, monkeypatch):
    from torchvision.transforms import PILToTensor

    ds = ShardDataset(resolve_shards("train-{000000..000005}.tar", shards), PILToTensor())
    left_over = []
    for epoch in (0, 1):
        seen = _keys_by_rank(ds, epoch, tmp_path, monkeypatch)
        both = seen[0] + seen[1]
        assert len(seen[0]) == len(seen[1]) == 24 and len(set(both)) == 48  # 3 global batches of 16, no repeat
        # exactly the samples a single process takes this epoch (its permutation, less the 3 left over)
        single = ResumableSampler(len(ds), 16, seed=3)
        single.set_epoch(epoch)
        assert set(both) == {ds.keys[i] for i, _ in single}
        left_over.append(set(ds.keys) - set(both))
    assert len(left_over[0]) == 3 and left_over[0] != left_over[1]  # dropped ones differ from epoch to epoch


def test_mid_epoch_resume_continues_the_same_stream(shards):
    ds = build_datasets(_data_cfg(f"data.root={shards}", "data.dataset=wds"))[0]

    def batches(rank, start):
        sampler = ResumableSampler(len(ds), 8, seed=5, rank=rank, world_size=2)
        sampler.set_epoch(1, start)
        keys = [ds.keys[i] for i, _ in sampler]
        loader = torch.utils.data.DataLoader(SeededDataset(ds), batch_size=8, sampler=sampler, num_workers=2,
                                             collate_fn=collate_skipping)
        return keys, [x for x, _, _ in loader]

    for rank in (0, 1):
        keys, images = batches(rank, 0)
        keys_resumed, images_resumed = batches(rank, 2)  # resumed before global batch 2 of epoch 1
        assert keys_resumed == keys[16:] and len(images_resumed) == 1
        assert torch.equal(images_resumed[0], images[2])  # same samples, same augmentation


TINY = ["data.input_size=32", "model.name=convnext_atto", "model.kwargs.dims=[8,16,32,64]",
        "model.kwargs.depths=[1,1,1,1]", "model.kwargs.patch_size=2", "optim.batch_size=16", "optim.accum_steps=1",
        "optim.epochs=2", "optim.warmup_epochs=1", "optim.lr=0.5", "run.progress=false", "run.tensorboard=false",
        "run.plots=false", "run.threads=1", "data.num_workers=0", "run.deterministic=true", "run.ckpt_every_steps=1",
        # mixup and drop path draw per-rank randomness by design; RandAugment and erasing are per-sample seeded
        "data.mixup=0.0", "data.cutmix=0.0", "model.drop_path_rate=0.0", "run.ema=false",
        "run.amp=none"]  # fp32 on every CPU: bf16 (amp=auto where the CPU has it) rounds ranks' sums far apart


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weights(run_dir):
    return load_checkpoint(CheckpointManager(run_dir).latest())["model"]


def test_killed_and_torchrun_runs_on_shards_equal_the_imagefolder_run(photos, shards, tmp_path):
    # The reference: one process on the folder, 2 epochs x 3 steps.
    ref = train(load_config("in1k_tiny", [*TINY, f"data.root={photos}", f"run.out_dir={tmp_path}", "run.name=ref"]))
    wds = ["data.dataset=wds", f"data.root={shards}"]
    # The same run on the shards, SIGKILLed after global step 4 (epoch 1, step 1 of 3), then resumed: a step
    # callback pauses the run right after step 4's checkpoint, so that the kill lands at a known place.
    env = {**cli_env(), "OMP_NUM_THREADS": "1"}
    overrides = [*TINY, *wds, f"run.out_dir={tmp_path}", "run.name=killed"]
    script = f"""
import signal
from convnext.train import load_config, train

def pause_at_4(state):
    if state.global_step == 4:
        (state.run_dir / "paused-at-4").touch()
        signal.pause()

train(load_config("in1k_tiny", {overrides!r}), callbacks=[pause_at_4])
"""
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    marker, deadline = tmp_path / "killed" / "paused-at-4", time.time() + 120
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "the training process never reached step 4"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = train(load_config("in1k_tiny", [*TINY, *wds, f"run.out_dir={tmp_path}", "run.name=killed",
                                              "run.resume=auto"]))
    a, b = _weights(tmp_path / "ref"), _weights(tmp_path / "killed")
    assert resumed.steps == ref.steps == 6
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs: the resumed shard run saw another sample stream"
    assert resumed.final_top1 == ref.final_top1

    # 2 processes x 8 images x 2 loader workers on the shards, recording every sample served.
    trace = tmp_path / "trace"
    launcher = tmp_path / "traced_convnext.py"
    launcher.write_text(_TRACER + "\nimport sys\nfrom convnext.cli import main\nsys.exit(main())\n")
    env = {**cli_env(), "OMP_NUM_THREADS": "1", "TRACE_FILE": str(trace)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(launcher), "train", "--recipe",
           "in1k_tiny", "--out", str(tmp_path), "--name", "ddp",
           *[f"--set={s}" for s in [*TINY, *wds, "optim.batch_size=8", "data.num_workers=2"]]]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=200)
    assert r.returncode == 0, r.stderr[-3000:]
    c = _weights(tmp_path / "ddp")
    worst = max((a[k] - c[k]).abs().max().item() for k in a)
    assert worst < 1e-5, worst  # the same global batches; only float summation order differs
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert abs(summary["final_top1"] - ref.final_top1) <= 100 / 15 + 1e-6  # at most one of the 15 val images
    served = [line.split() for line in trace.read_text().splitlines()]
    train_keys = [(rank, key) for split, rank, key in served if split == "train"]
    assert len(train_keys) == 2 * 48
    for epoch in (0, 1):  # DDP steps in lockstep, so epoch 0's samples are all served before epoch 1's
        part = train_keys[48 * epoch: 48 * (epoch + 1)]
        assert len({k for _, k in part}) == 48, "a sample was served twice in one epoch"
        assert sum(r == "0" for r, _ in part) == sum(r == "1" for r, _ in part) == 24
    val_keys = [key for split, _, key in served if split == "val"]
    assert Counter(val_keys) == {k: 2 for k in val_keys} and len(set(val_keys)) == 15  # 2 evaluations


def test_hf_save_to_disk_and_parquet_give_the_folders_samples(photos, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))

    def split(name):
        folder = CheckedImageFolder(photos / name)
        feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=folder.classes)})
        rows = {"image": [{"bytes": open(p, "rb").read(), "path": None} for p, _ in folder.samples],
                "label": [t for _, t in folder.samples]}
        return datasets.Dataset.from_dict(rows, features=feats)

    dd = datasets.DatasetDict({"train": split("train"), "validation": split("val")})  # the Hub's split names
    dd.save_to_disk(str(tmp_path / "disk"))
    for name, ds in dd.items():
        ds.to_parquet(str(tmp_path / "pq" / "data" / f"{name}-00000-of-00001.parquet"))
    folder = build_datasets(_data_cfg(f"data.root={photos}"))
    for root in ("disk", "pq"):
        train_set, val_set, n, chans = build_datasets(_data_cfg(f"data.root={tmp_path / root}", "data.dataset=hf"))
        assert (n, chans, len(train_set), len(val_set)) == (3, 3, 51, 15)
        assert train_set.classes == ["cat", "coffee", "rocket"]
        a, b = SeededDataset(folder[0]), SeededDataset(train_set)
        for i in (0, 20, 50):
            assert torch.equal(a[(i, 7 + i)][0], b[(i, 7 + i)][0]) and a[(i, 7)][1] == b[(i, 7)][1]
    with pytest.raises(DataError, match="has no split 'test'; it has train, validation"):
        build_datasets(_data_cfg(f"data.root={tmp_path / 'disk'}", "data.dataset=hf", "data.val_split=test"))
    with pytest.raises(DataError, match="holds no Hugging Face dataset"):
        build_datasets(_data_cfg(f"data.root={photos}", "data.dataset=hf"))


def test_unreadable_images_are_reported_and_skipped_when_writing_and_reading(photos, tmp_path, run_cli):
    import shutil

    import webdataset as wds

    src = tmp_path / "src"
    shutil.copytree(photos, src)
    (src / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff truncated")
    r = run_cli("shard", src, tmp_path / "out", "--shard-size", "30KB", "--workers", "1")
    assert r.returncode == 0, r.stderr
    assert "skipped unreadable image train/cat/broken.jpg" in r.stdout and "1 unreadable image(s) skipped" in r.stdout
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["skipped"] == ["train/cat/broken.jpg"]
    assert manifest["splits"]["train"]["samples"] == 51 and len(manifest["splits"]["train"]["shards"]) > 1
    # Someone else's shard with a corrupt image: reported by shard and key, or a DataError with bad_images=stop.
    with wds.TarWriter(str(tmp_path / "other-000000.tar"), encoder=False) as w:
        w.write({"__key__": "good", "jpg": (src / "train" / "cat" / "01.jpg").read_bytes(), "cls": b"0"})
        w.write({"__key__": "bad", "jpg": b"\xff\xd8\xff truncated", "cls": b"1"})
    ds = ShardDataset(resolve_shards("other-*.tar", tmp_path))
    assert ds[0][0].size == (40, 40) and ds.classes == ["0", "1"]
    assert ds[1] == (None, 1, f"{tmp_path}/other-000000.tar:bad.jpg")
    with pytest.raises(DataError, match=r"Cannot read image .*other-000000.tar:bad\.jpg"):
        ShardDataset(resolve_shards("other-000000.tar", tmp_path), bad_images="stop")[1]


def test_fashion_mnist_as_png_shards(tmp_path):
    from convnext.data.datasets import fashion_mnist

    x, y = fashion_mnist(train=False)
    for prefix in ("train", "t10k"):  # a 12-image Fashion-MNIST in the Debian layout, real images
        header = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (12, 28, 28))
        with gzip.open(tmp_path / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(header + x[:12, 0].numpy().tobytes())
        with gzip.open(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(bytes([0, 0, 8, 1]) + (12).to_bytes(4, "big") + y[:12].numpy().astype(np.uint8).tobytes())
    write_shards(tmp_path, tmp_path / "out", shuffle=False, log=lambda s: None)
    ds = ShardDataset(resolve_shards("val", tmp_path / "out"))
    assert ds.classes[0] == "T-shirt/top" and ds.targets.tolist() == y[:12].tolist()
    img = np.asarray(ds[3][0])
    assert img.shape == (28, 28, 3) and (img == x[3, 0].numpy()[:, :, None]).all()  # lossless PNG, as RGB


def test_bad_patterns_and_paths_are_one_line_errors(shards, tmp_path, run_cli):
    cases = [
        ("nosuch", shards, "No shards for split 'nosuch'"),
        ("train-{000000..000009}.tar", shards, "4 of the 10 shards of 'train-{000000..000009}.tar'"),
        ("train-*.tgz", shards, "No shard matches"),
        ("train-000000.tar", tmp_path / "nowhere", "do not exist"),
    ]
    for spec, root, message in cases:
        with pytest.raises(DataError, match=message.replace("{", r"\{").replace("(", r"\(")):
            resolve_shards(spec, root)
    (tmp_path / "x.tar.gz").write_bytes(b"")
    with pytest.raises(DataError, match="is compressed"):
        resolve_shards("x.tar.gz", tmp_path)
    with tarfile.open(tmp_path / "nolabel.tar", "w") as tf:
        info = tarfile.TarInfo("a.jpg")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(DataError, match="Sample 'a' of shard .*nolabel.tar has no .cls label"):
        ShardDataset(resolve_shards("nolabel.tar", tmp_path))
    (tmp_path / "stale").mkdir()
    for name in ("manifest.json", "train-000000.tar", "train-000001.tar"):
        (tmp_path / "stale" / name).write_bytes((shards / name).read_bytes())
    (tmp_path / "stale" / "train-000001.tar").rename(tmp_path / "stale" / "train-000009.tar")
    with pytest.raises(DataError, match="train-000009.tar is not in .*manifest.json"):
        ShardDataset(resolve_shards("train", tmp_path / "stale"))
    r = run_cli("train", "--recipe", "in1k_tiny", "--out", tmp_path, "--set", "data.dataset=wds", "--set",
                f"data.root={tmp_path}/none")
    assert r.returncode != 0 and r.stderr.count("\n") == 1, r.stderr
    assert "No shards for split 'train'" in r.stderr
