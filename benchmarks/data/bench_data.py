"""How fast each data path delivers the paper's training inputs, per CPU core (sec. 2, 4.1).

Rows, all on the same real JPEG photographs at ``image_size`` (256) with ``crop`` (224) crops:

- ``imagefolder, before``: the path before the prepare step (PIL decode and resize of the
  original file, then crop, flip, mean and fancy PCA image by image in float32);
- ``imagefolder``: torchvision's decoder and resize, augmentation per batch;
- ``prepared raw`` / ``prepared jpeg-256``: a dataset made once by ``launch/prepare.py``.

Each row is timed twice: the loader's work alone (what the loader workers do when the
augmentation runs on the training device) and with the augmentation (what they do with
``data.augment=workers``, or what the device does on a CPU-only machine). One process,
one thread, pinned to one core; ``repeats`` passes give median and spread. Then a short
two-process ``full-2dev`` run on the prepared data reports the share of the training
step spent waiting for data (``data_wait_share`` in metrics.jsonl).

    make bench-data
    python benchmarks/data/bench_data.py images=/data/ilsvrc2012 repeats=3

Writes ``bench-data.json`` and ``bench-data.md`` to ``output_dir`` (default outputs/benchmarks;
the published figures: ``output_dir=benchmarks/results``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root on the path, so `benchmarks` imports as a package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from alexnet_mp import config, data
from alexnet_mp.job.cli import Job, run_hydra, train_command
from alexnet_mp.data import BatchAugment, PreparedImages
from alexnet_mp.errors import UserError
from benchmarks.data.per_image import PaperTransform  # the per-image transform: the "before" of this benchmark
from benchmarks.shared.machine import REPO, cpu_name
from benchmarks.shared.output import write_results
from benchmarks.data.schema import register

register()  # the schema conf/ names (``- base_...``), which the product's config package does not hold

NAME = "bench-data"
FEED_TARGET = 30_000  # images/s: about what a pair of current GPUs trains AlexNet at, the rate a loader must feed


# -- the path as it was before the prepare step (kept here to measure against) -------------------

def _pil_shorter_side_centre_crop(path: Path, size: int) -> torch.Tensor:
    """The previous loader's per-file work: PIL decode (DCT draft below half size), resize, crop."""
    with Image.open(path) as im:
        w, h = im.size
        scale = size / min(w, h)
        new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
        if im.format == "JPEG" and scale < 0.5:
            im.draft(im.mode, (2 * new_w, 2 * new_h))
        im = im.convert("RGB")
        if im.size != (new_w, new_h):
            im = im.resize((new_w, new_h), Image.Resampling.BILINEAR)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        rgb = np.array(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


class _Before:
    """Per image: decode and resize the original file, then the float32 transform of one image."""

    def __init__(self, folder: data.ImageFolderImages, transform: PaperTransform):
        self.folder, self.transform = folder, transform

    def batch(self, indices: list[int], epoch: int) -> torch.Tensor:
        # The path before drew its numbers from a torch.Generator per image, a cost it paid per image.
        for i in indices:
            g = torch.Generator().manual_seed(i + 1000 * epoch)
            torch.randint(0, 10, (2,), generator=g), torch.rand(1, generator=g), torch.randn(3, generator=g)
        return torch.stack([self.transform(_pil_shorter_side_centre_crop(self.folder.samples[i][0],
                                                                          self.folder.image_size), i, epoch)
                            for i in indices])


# -- timing --------------------------------------------------------------------------------------

def _rate(run_batch, n: int, batch: int, repeats: int, warmup: int = 1) -> dict:
    """images/s of ``run_batch(indices, epoch)`` over passes of ``n`` images, per repeat."""
    order = list(range(n))
    rates = []
    for r in range(warmup + repeats):
        start = time.perf_counter()
        for k in range(0, n - batch + 1, batch):
            run_batch(order[k:k + batch], r)
        if r >= warmup:
            rates.append((n // batch) * batch / (time.perf_counter() - start))
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates), "all": rates}


def _measure_paths(src: Path, prepared: dict[str, Path], cfg: DictConfig) -> dict:
    size, crop, batch, repeats = int(cfg.image_size), int(cfg.crop), int(cfg.batch), int(cfg.repeats)
    folder = data.ImageFolderImages(src, "train", size)
    stats = PreparedImages(prepared["raw"], "train", size).stats()
    augment = BatchAugment(stats, crop, seed=0, reuse_output=True)  # as the trainer does
    n = min(len(folder), int(cfg.max_images))
    rows = {}

    before = _Before(folder, PaperTransform(stats, crop, train=True))
    rows["imagefolder, before"] = {"with_augmentation": _rate(before.batch, n, batch, repeats),
                                   "note": "PIL decode+resize and the float32 transform, image by image"}
    sources = {"imagefolder": folder, **{f"prepared {fmt}": PreparedImages(path, "train", size)
                                         for fmt, path in prepared.items()}}
    for name, base in sources.items():
        reader = data.BatchReader(base)
        read = lambda idx, epoch, reader=reader: reader[(epoch, idx)]  # noqa: E731

        def read_and_augment(idx, epoch, reader=reader):
            b = reader[(epoch, idx)]
            return augment.train(b.images, b.indices, epoch)

        rows[name] = {"loader_only": _rate(read, n, batch, repeats),
                      "with_augmentation": _rate(read_and_augment, n, batch, repeats)}
        print(f"[{NAME}] {name}: {rows[name]['loader_only']['median']:.0f} images/s per core reading, "
              f"{rows[name]['with_augmentation']['median']:.0f} with augmentation", flush=True)
    rows["prepared jpeg-256"]["note"] = "decoded with torchvision's libjpeg-turbo decoder"
    return {"images": n, "rows": rows}


def _data_wait(prepared: Path, cfg: DictConfig, work: Path) -> dict:
    """A short two-tower run on the prepared data: the share of its steps spent waiting for data."""
    run = work / "train-run"
    cmd = train_command(["data=prepared", f"data.root={prepared}", f"data.image_size={int(cfg.image_size)}",
                         f"batch_size={int(cfg.train_batch)}", "epochs=1", "progress=false", f"hydra.run.dir={run}"],
                        processes=2)
    print(f"[{NAME}] $ {' '.join(cmd)}", flush=True)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        raise UserError(f"the training run failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1]}")
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    return {"configuration": "full-2dev", "batch": int(cfg.train_batch), "data_wait_share": row["data_wait_share"],
            "images_per_s": row["images_per_s"], "seconds": row["seconds"]}


def _prepare(src: Path, out: Path, fmt: str, cfg: DictConfig) -> dict:
    start = time.perf_counter()
    cmd = [sys.executable, str(REPO / "launch" / "prepare.py"), f"data.root={src}", f"out={out}",
           f"data.image_size={int(cfg.image_size)}", f"format={fmt}", "progress=false"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        raise UserError(f"prepare failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1]}")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {"seconds": time.perf_counter() - start, "bytes": size}


def _source_tree(images: Path, work: Path) -> Path:
    """``images`` itself when it has train/ and val/; else both splits from its one split (links)."""
    if (images / "train").is_dir() and (images / "val").is_dir():
        return images
    split = next((images / s for s in ("val", "train") if (images / s).is_dir()), None)
    if split is None:
        raise UserError(f"{images} has no train/ or val/ folder of class folders")
    tree = work / "source"
    for s in ("train", "val"):
        (tree / s).mkdir(parents=True, exist_ok=True)
        for c in sorted(p for p in split.iterdir() if p.is_dir()):
            (tree / s / c.name).symlink_to(c.resolve(), target_is_directory=True)
    return tree


def markdown(r: dict) -> str:
    before = r["paths"]["rows"]["imagefolder, before"]["with_augmentation"]["median"]
    lines = [f"# {NAME}", "",
             f"Images/s per CPU core (one process, one thread, pinned), {r['settings']['image_size']} px stored, "
             f"{r['settings']['crop']} px crops, batch {r['settings']['batch']}, {r['paths']['images']} real JPEG "
             f"photographs from `{r['settings']['images']}`; median (min-max) of {r['settings']['repeats']} passes. "
             f"{r['environment']['cpu']}, torch {r['environment']['torch']}, {r['created']}.", "",
             "| path | loader work only | with augmentation | x before | cores to feed 30k images/s |",
             "|---|---|---|---|---|"]
    for name, row in r["paths"]["rows"].items():
        cell = lambda k: ("-" if k not in row else  # noqa: E731
                          f"{row[k]['median']:.0f} ({row[k]['min']:.0f}-{row[k]['max']:.0f})")
        feed = row.get("loader_only", row["with_augmentation"])["median"]
        lines.append(f"| {name} | {cell('loader_only')} | {cell('with_augmentation')} | "
                     f"{row['with_augmentation']['median'] / before:.1f} | {FEED_TARGET / feed:.1f} |")
    lines += ["", "Cores to feed 30k images/s: with the augmentation on the GPU the loader workers only read "
                  "(and decode), so the loader-only rate counts.", ""]
    for fmt, p in r["prepare"].items():
        lines.append(f"- prepare, {fmt}: {p['seconds']:.1f} s, {p['bytes'] / 2**20:.1f} MiB on disk")
    w = r.get("data_wait")
    if w:
        lines.append(f"- {w['configuration']} on the prepared data (batch {w['batch']}, one epoch): "
                     f"{100 * w['data_wait_share']:.2f}% of the step waiting for data, {w['images_per_s']:.1f} images/s")
    lines += ["", "| target | value | met |", "|---|---|---|"]
    for t in r["targets"]:
        lines.append(f"| {t['target']} | {t['value']:.3g} | {'yes' if t['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def run(cfg: DictConfig) -> dict:
    if OmegaConf.is_missing(cfg, "images"):
        raise UserError("images= is required: a folder of real JPEG photographs (train/ and/or val/ of class folders), "
                        "e.g. images=/data/ilsvrc2012")
    images = Path(str(cfg.images)).expanduser()
    if not images.is_dir():
        raise UserError(f"images={images} is not a folder of real photographs (train/ and/or val/ of class folders)")
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    with tempfile.TemporaryDirectory(prefix="bench-data-", dir=cfg.work_dir) as tmp:
        work = Path(tmp)
        src = _source_tree(images, work)
        prepared, prepare = {}, {}
        for fmt in ("raw", "jpeg"):
            prepared[fmt] = work / f"prepared-{fmt}"
            prepare[fmt] = _prepare(src, prepared[fmt], fmt, cfg)
        if hasattr(os, "sched_setaffinity") and cores:
            os.sched_setaffinity(0, {cores[-1]})  # one core: the figures are per core
        torch.set_num_threads(1)
        paths = _measure_paths(src, {"raw": prepared["raw"], "jpeg-256": prepared["jpeg"]}, cfg)
        if hasattr(os, "sched_setaffinity") and cores:
            os.sched_setaffinity(0, set(cores))
        wait = None if cfg.skip_train else _data_wait(prepared["raw"], cfg, work)
    rows = paths["rows"]
    ratio = rows["prepared raw"]["with_augmentation"]["median"] / rows["imagefolder, before"]["with_augmentation"]["median"]
    targets = [{"target": "prepared raw >= 20x the path before, per core, augmentation included", "value": ratio,
                "met": ratio >= 20}]
    if wait:
        targets.append({"target": "data waiting <= 2% of a full-2dev step", "value": wait["data_wait_share"],
                        "met": wait["data_wait_share"] <= 0.02})
    return {"benchmark": NAME, "created": _dt.datetime.now().isoformat(timespec="seconds"),
            "settings": OmegaConf.to_container(cfg, resolve=True),
            "environment": {"cpu": cpu_name(), "torch": torch.__version__,
                            "cores": len(cores) or os.cpu_count()},
            "prepare": prepare, "paths": paths, "data_wait": wait, "targets": targets}


def main(cfg: DictConfig, job: Job) -> None:  # noqa: ARG001 - its own one-line errors
    try:
        config.check(cfg)  # against conf/bench_data.yaml's schema (schema.py beside this file)
        result = run(cfg)
    except UserError as err:
        print(f"{NAME}: error: {err}", file=sys.stderr, flush=True)
        sys.exit(1)
    write_results(str(cfg.output_dir), NAME, result, markdown(result))
    print(markdown(result), flush=True)

if __name__ == "__main__":
    run_hydra(main, config_name="bench_data", config_path="../../conf")
