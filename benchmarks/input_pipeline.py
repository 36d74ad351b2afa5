"""The input pipeline alone, beside the model's training step: how many loader workers keep a device busy.

Real photos (scikit-image's) are cut into --images JPEGs at ImageNet-like sizes (short side 300-500 px, quality
90) and stored three ways: an ImageFolder, WebDataset shards written by `convnext shard`'s writer, and a Hugging
Face dataset (save_to_disk). Then, on one CPU core per worker (torch threads = 1, as in a DataLoader worker):

- decode: PIL against torchvision.io.decode_jpeg (libjpeg-turbo both), to a tensor and to the PIL image that
  timm's transforms take;
- read: the encoded bytes alone, from files, from shards by index (one pread at a random offset per image, as
  training reads them) and sequentially (webdataset's streaming reader), and from the HF dataset;
- pipeline: read + decode + the recipe's train transform (in1k_tiny at 224: RandomResizedCrop, flip, RandAugment
  rand-m9-mstd0.5-inc1, random erasing), through a DataLoader with 1..k workers and batch 32, as training runs it;
- the model: ConvNeXt-T's training step (fwd + bwd + AdamW, fp32 and bf16 autocast) on this CPU's threads, the
  rate the input pipeline must keep up with; --model-img-s adds another device's measured rate (e.g. a GPU's).

    PYTHONPATH=src python benchmarks/input_pipeline.py --images 400 --workers 1 2

Appends one record to benchmarks/input_pipeline.jsonl and writes benchmarks/input_pipeline.md from it.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
RECORD, SUMMARY = HERE / "input_pipeline.jsonl", HERE / "input_pipeline.md"
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina", "immunohistochemistry",
          "stereo_motorcycle")


def make_images(root: Path, n: int, seed: int = 0) -> dict:
    """`n` JPEGs in root/train/<photo>/, random crops of the photos resized to a short side of 300-500 px."""
    from skimage import data

    rng = np.random.default_rng(seed)
    photos = {name: getattr(data, name)() for name in PHOTOS}
    photos["stereo_motorcycle"] = photos["stereo_motorcycle"][0]  # (left, right, disparity)
    sizes, nbytes = [], 0
    for i in range(n):
        name = PHOTOS[i % len(PHOTOS)]
        photo = photos[name]
        h, w = photo.shape[:2]
        s = rng.uniform(0.5, 1.0)
        ch, cw = int(h * s), int(w * s * rng.uniform(0.75, 1.33))
        cw = min(cw, w)
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        short = rng.integers(300, 501)
        scale = short / min(ch, cw)
        img = Image.fromarray(photo[y:y + ch, x:x + cw]).resize((round(cw * scale), round(ch * scale)), Image.BICUBIC)
        folder = root / "train" / name
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / f"{i:05d}.jpg", quality=90)
        sizes.append(img.size)
        nbytes += (folder / f"{i:05d}.jpg").stat().st_size
    return {"images": n, "mean_size": [round(float(np.mean([s[0] for s in sizes]))),
                                       round(float(np.mean([s[1] for s in sizes])))],
            "mean_kb": round(nbytes / n / 1e3, 1)}


def rate(fn, items, repeats: int = 3) -> float:
    """Items per second of `fn` over `items`, the best of `repeats` passes (the least disturbed)."""
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        for it in items:
            fn(it)
        best = min(best, time.perf_counter() - t)
    return len(items) / best


def decode_rates(paths: list[Path]) -> dict:
    from torchvision.io import ImageReadMode, decode_jpeg

    blobs = [p.read_bytes() for p in paths]
    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]

    def pil(b):
        with Image.open(io.BytesIO(b)) as im:
            return im.convert("RGB")

    def tv_pil(t):
        return Image.fromarray(decode_jpeg(t, mode=ImageReadMode.RGB).permute(1, 2, 0).numpy())

    same = all((np.asarray(pil(b)) == np.asarray(tv_pil(t))).all() for b, t in zip(blobs[:20], tensors, strict=False))
    return {
        "pil_to_pil": rate(pil, blobs),
        "torchvision_to_tensor": rate(lambda t: decode_jpeg(t, mode=ImageReadMode.RGB), tensors),
        "torchvision_to_pil": rate(tv_pil, tensors),
        "pixels_identical": bool(same),
    }


def read_rates(folder_paths: list[Path], shard_ds, shard_urls: list[str], hf_ds) -> dict:
    import webdataset as wds

    order = np.random.default_rng(0).permutation(len(shard_ds)).tolist()

    def sequential(_):
        for _sample in wds.WebDataset(shard_urls, shardshuffle=False, empty_check=False):
            pass

    n = len(shard_ds)
    return {
        "folder_files": rate(lambda p: p.read_bytes(), folder_paths),
        "shards_by_index_random": rate(shard_ds.read, order),
        "shards_sequential_webdataset": n * rate(sequential, [0]),
        "hf_rows_random": rate(lambda i: hf_ds.ds[i][hf_ds.image_col]["bytes"], order),
    }


def loader_rate(dataset, workers: int, batch: int = 32, sampler=None) -> float:
    """Images per second through a DataLoader, not counting the first batch (worker start-up)."""
    from convnext.data.datasets import collate_skipping

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers,
                                         collate_fn=collate_skipping, persistent_workers=False)
    it = iter(loader)
    next(it)
    t, count = time.perf_counter(), 0
    for x, _, _ in it:
        count += len(x)
    return count / (time.perf_counter() - t)


class Sequential(torch.utils.data.IterableDataset):
    """webdataset's streaming reader with the same decode, transform and per-sample seeding as our data sets."""

    def __init__(self, urls: list[str], transform) -> None:
        self.urls, self.transform = urls, transform

    def __iter__(self):
        import webdataset as wds

        from convnext.data.datasets import decode_image

        for i, s in enumerate(wds.WebDataset(self.urls, shardshuffle=False, empty_check=False)):
            torch.manual_seed(i)
            random.seed(i)
            np.random.seed(i)
            yield self.transform(decode_image(s["jpg"])), int(s["cls"]), None


def pipeline_rates(folder, shard_ds, shard_urls, hf_ds, workers: list[int], passes: int) -> dict:
    """Images/s through DataLoaders with each worker count; the sources take turns within each pass, so a change
    in the machine's load hits them alike, and the best pass of each is kept."""
    from torchvision.io import ImageReadMode, decode_jpeg

    from convnext.data import shards
    from convnext.data.datasets import SeededDataset
    from convnext.distributed import ResumableSampler

    def tv_decode(b):  # torchvision's JPEG decoder (pixels identical to PIL's, see decode rates)
        t = torch.frombuffer(bytearray(b), dtype=torch.uint8)
        return Image.fromarray(decode_jpeg(t, mode=ImageReadMode.RGB).permute(1, 2, 0).numpy())

    def mapped(ds, k):
        return loader_rate(SeededDataset(ds), k, sampler=ResumableSampler(len(ds), 32, seed=0))

    def with_tv_decode(k):
        original, shards.decode_image = shards.decode_image, tv_decode  # workers fork with it
        try:
            return mapped(shard_ds, k)
        finally:
            shards.decode_image = original

    sources = {
        "folder": lambda k: mapped(folder, k),
        "shards_by_index": lambda k: mapped(shard_ds, k),
        "shards_sequential_webdataset": lambda k: loader_rate(Sequential(shard_urls, shard_ds.transform), k),
        "hf": lambda k: mapped(hf_ds, k),
        "shards_by_index_torchvision_decode": with_tv_decode,
    }
    out = {}
    for k in workers:
        best = dict.fromkeys(sources, 0.0)
        for _ in range(passes):
            for name, fn in sources.items():
                best[name] = max(best[name], fn(k))
        out[str(k)] = best
    return out


def model_rates(batch: int) -> dict:
    from convnext.benchmark import run

    report = run(["ours:convnext_tiny"], ["train"], ["fp32", "bf16"], batch_size=batch, warmup=1, reps=3,
                 channels_last=True, peak_size=1024, log=lambda s: None)
    return {r["precision"]: r["img_per_s"] for r in report["results"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="DataLoader worker counts to run")
    p.add_argument("--passes", type=int, default=2, help="passes per pipeline measurement (the best is kept)")
    p.add_argument("--batch", type=int, default=32, help="model training batch")
    p.add_argument("--model-img-s", type=float, action="append", default=[], metavar="IMG_S",
                   help="another device's training rate to size workers for (e.g. a GPU's, from convnext benchmark)")
    p.add_argument("--no-model", action="store_true", help="skip the model's training step")
    args = p.parse_args()

    import datasets

    from convnext.benchmark import cpu_name, env_load
    from convnext.data.datasets import CheckedImageFolder
    from convnext.data.hf import HFImageDataset
    from convnext.data.shards import ShardDataset, resolve_shards, shard_index, write_shards
    from convnext.data.transforms import train_transform
    from convnext.train.config import load_config

    datasets.disable_progress_bars()
    torch.set_num_threads(1)  # what one loader worker has
    load0, t0 = env_load(), time.time()
    record: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
                    "command": "python benchmarks/input_pipeline.py " + " ".join(sys.argv[1:]),
                    "torch": torch.__version__, "load_avg_1m_start": load0}
    for pkg in ("torchvision", "timm", "PIL", "webdataset", "datasets"):
        record[pkg] = __import__(pkg).__version__
    cfg = load_config("in1k_tiny", ["data.root=unused"]).data
    transform = train_transform(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        record["data"] = make_images(tmp / "folder", args.images)
        t = time.perf_counter()
        write_shards(tmp / "folder", tmp / "shards", splits=("train",), max_size=2 * 10**6, workers=1,
                     log=lambda s: None)
        record["data"]["write_shards_img_s"] = args.images / (time.perf_counter() - t)
        urls = [str(u) for u in resolve_shards("train", tmp / "shards")]
        t = time.perf_counter()
        for u in urls:
            shard_index(u, rebuild=True)
        record["data"].update(shards=len(urls), index_samples_per_s=args.images / (time.perf_counter() - t))
        folder = CheckedImageFolder(tmp / "folder" / "train", transform)
        rows = {"image": [{"bytes": Path(pth).read_bytes(), "path": None} for pth, _ in folder.samples],
                "label": [t for _, t in folder.samples]}
        feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=folder.classes)})
        datasets.Dataset.from_dict(rows, features=feats).save_to_disk(str(tmp / "hf"))
        shard_ds = ShardDataset(urls, transform)
        hf_ds = HFImageDataset(datasets.load_from_disk(str(tmp / "hf")), transform)
        paths = [Path(pth) for pth, _ in folder.samples]
        record["decode_img_s"] = decode_rates(paths)
        record["read_img_s"] = read_rates(paths, shard_ds, urls, hf_ds)
        record["pipeline_img_s_by_workers"] = pipeline_rates(folder, shard_ds, urls, hf_ds, args.workers,
                                                             args.passes)
    torch.set_num_threads(os.cpu_count() or 1)
    if not args.no_model:
        record["model_train_img_s"] = {f"convnext_tiny {k} (this CPU, {os.cpu_count()} threads)": v
                                       for k, v in model_rates(args.batch).items()}
    for i, r in enumerate(args.model_img_s):
        record.setdefault("model_train_img_s", {})[f"given #{i + 1}"] = r
    record["load_avg_1m_end"], record["wall_s"] = env_load(), round(time.time() - t0, 1)
    with open(RECORD, "a") as f:
        f.write(json.dumps(record) + "\n")
    text = summary(record) + history([json.loads(line) for line in RECORD.read_text().splitlines() if line])
    SUMMARY.write_text(text)
    print(text)
    return 0


def summary(r: dict) -> str:
    one = r["pipeline_img_s_by_workers"][min(r["pipeline_img_s_by_workers"], key=int)]
    lines = [
        "# Input pipeline: decode + the recipe's train transform, per loader worker", "",
        f"Command: `PYTHONPATH=src {r['command']}` (appends to benchmarks/input_pipeline.jsonl; this file shows the "
        "latest record).", "",
        f"- CPU: {r['cpu']} ({r['cpu_count']} cores), load average {r['load_avg_1m_start']:.2f} at start, "
        f"{r['load_avg_1m_end']:.2f} at end; {r['date']}, {r['wall_s']:.0f} s",
        f"- torch {r['torch']}, torchvision {r['torchvision']}, timm {r['timm']}, Pillow {r['PIL']}, webdataset "
        f"{r['webdataset']}, datasets {r['datasets']}",
        f"- data: {r['data']['images']} JPEGs cut from scikit-image photos, mean {r['data']['mean_size'][0]}x"
        f"{r['data']['mean_size'][1]} px, {r['data']['mean_kb']} KB (ImageNet: about 400x350, 110 KB); "
        f"{r['data']['shards']} shards; written at {r['data']['write_shards_img_s']:.0f} img/s (read, check, "
        f"write, verify; 1 process), indexed at {r['data']['index_samples_per_s']:.0f} samples/s",
        "- transform: in1k_tiny's at 224 (RandomResizedCrop, flip, RandAugment rand-m9-mstd0.5-inc1, random "
        "erasing 0.25), seeded per sample; DataLoader batch 32, best of the passes, first batch not counted", "",
        "## Decode (one core)", "", "| decoder | img/s |", "|---|---|",
    ]
    d = r["decode_img_s"]
    lines += [f"| PIL (open + convert RGB) | {d['pil_to_pil']:.0f} |",
              f"| torchvision.io.decode_jpeg -> tensor | {d['torchvision_to_tensor']:.0f} |",
              f"| torchvision.io.decode_jpeg -> PIL (what timm's transforms take) | {d['torchvision_to_pil']:.0f} |",
              "", f"Pixels identical between the two: {d['pixels_identical']}.", "",
              "## Reading the encoded bytes alone (one core)", "", "| source | img/s |", "|---|---|"]
    lines += [f"| {k.replace('_', ' ')} | {v:.0f} |" for k, v in r["read_img_s"].items()]
    lines += ["", "## Decode + train transform through a DataLoader", ""]
    ws = sorted(r["pipeline_img_s_by_workers"], key=int)
    lines += ["| source | " + " | ".join(f"{w} worker(s) img/s" for w in ws) + " |", "|---|" + "---|" * len(ws)]
    for name in one:
        lines.append(f"| {name.replace('_', ' ')} | "
                     + " | ".join(f"{r['pipeline_img_s_by_workers'][w][name]:.0f}" for w in ws) + " |")
    pw = r["pipeline_img_s_by_workers"]

    def ratio(a: str, b: str) -> str:
        return ", ".join(f"{pw[w][a] / pw[w][b]:.2f}x ({w} worker(s))" for w in ws)

    tv, seq = "shards_by_index_torchvision_decode", "shards_sequential_webdataset"
    lines += ["", f"- torchvision decode / PIL decode, shards by index: {ratio(tv, 'shards_by_index')}",
              f"- shards by index / webdataset's sequential reader: {ratio('shards_by_index', seq)}",
              f"- shards by index / folder: {ratio('shards_by_index', 'folder')}"]
    per_worker = one["shards_by_index"] / int(min(ws, key=int))
    if r.get("model_train_img_s"):
        lines += ["", "## Workers needed to keep up with the model's training step", "",
                  f"At {per_worker:.0f} img/s per worker (shards by index, 1 worker, above):", "",
                  "| model training rate | img/s | workers needed |", "|---|---|---|"]
        lines += [f"| {k} | {v:.1f} | {max(1, math.ceil(v / per_worker))} |" for k, v in r["model_train_img_s"].items()]
        lines += ["", "Workers scale with cores only while there are idle cores: a GPU training at N img/s needs "
                  "N / (img/s per worker) cores beside the one feeding the GPU."]
    return "\n".join(lines) + "\n"


def history(records: list[dict]) -> str:
    """Every record's headline numbers, so that a run on a loaded machine is read beside the quieter ones."""
    lines = ["", "## All records (benchmarks/input_pipeline.jsonl)", "",
             "| date | CPU | load 1 min start / end | shards by index, img/s with 1 / 2 / ... workers | "
             "folder, 1 worker | ConvNeXt-T train fp32 img/s |", "|---|---|---|---|---|---|"]
    for r in records:
        pw = r["pipeline_img_s_by_workers"]
        ws = sorted(pw, key=int)
        model = next((f"{v:.1f}" for k, v in r.get("model_train_img_s", {}).items() if "fp32" in k), "-")
        by_workers = " / ".join(f"{pw[w]['shards_by_index']:.0f}" for w in ws)
        lines.append(f"| {r['date']} | {r['cpu']} ({r['cpu_count']}) | {r['load_avg_1m_start']:.2f} / "
                     f"{r['load_avg_1m_end']:.2f} | {by_workers} | {pw[ws[0]]['folder']:.0f} | {model} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
