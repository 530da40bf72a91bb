"""The prepare: the paper's preprocessing of a whole image folder, once, on every core (Krizhevsky et al. 2012, sec. 2).

Sec. 2: every image is rescaled so that its shorter side is 256 and the central
256 x 256 patch is kept; the per-pixel mean image of the training set is subtracted
and, for fancy PCA (sec. 4.1), the RGB covariance over the training set is needed.
``launch/prepare.py`` does that work once and training reads the result with
``data=prepared`` (:mod:`alexnet_mp.data.prepared` owns the format and the reader):

    python launch/prepare.py data.root=/data/ilsvrc2012 out=/data/ilsvrc2012-256 [format=jpeg]
    torchrun --nproc_per_node=2 launch/train.py data=prepared data.root=/data/ilsvrc2012-256

Each image goes through :func:`alexnet_mp.data.images.read_image` (the same function
``data=imagefolder`` uses, so both give the same pixels), in the order and with the
labels of :class:`~alexnet_mp.data.images.ImageFolderImages`. Unreadable files are
skipped, named and counted. Two storage formats:

- ``raw`` (default): uint8 [n, 3, S, S] ``.npy`` shards, memory-mapped by the reader;
  no decoding at training time (196 KiB per 256 px image).
- ``jpeg``: the S px images re-encoded as JPEG (``jpeg_quality``, default 90), about
  ten times smaller for ImageNet-size photographs, decoded by the loader workers.

The mean image and the RGB covariance eigen-decomposition are computed in the same
pass over the WHOLE training set (not a sample), with the arithmetic of
:func:`alexnet_mp.data.dataset_stats.compute_stats`: each shard's worker sums in float64, the
main process combines the sums. For ``jpeg`` they are computed from the pixels before
encoding, i.e. from what ``data=imagefolder`` would give.

The work unit is a shard of consecutive images (:mod:`alexnet_mp.data.shards`); one
worker process per core (fork where the platform has it) does a shard at a time, and
the main process reports progress as shards finish. Crash safety: every file is
written through :mod:`alexnet_mp.io` (a temporary in its folder, fsynced, renamed). A
prepare killed at any moment leaves complete shards (those with a record) and perhaps
stray temporaries (workers stopped on purpose remove theirs; on Linux they are stopped
when the main process dies); running the same command again removes the temporaries,
keeps the complete shards and does the rest. A full disk is a one-line error, and the
next run continues likewise. Two prepares into the same folder at the same time are
not guarded against.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from alexnet_mp.data.images import ImageFolderImages, check_same_classes
from alexnet_mp.data.loader import cores, worker_context
from alexnet_mp.data.prepared import (FORMAT_VERSION, FORMATS, KIND, LABELS_NPY, MANIFEST_JSON, PREPARE_JSON,
                                      SPLITS, STATS_PT, data_names, read_json, record_name)
from alexnet_mp.data.shards import Shard, init_worker, npy_bytes, prepare_shard
from alexnet_mp.data.dataset_stats import stats_from_sums
from alexnet_mp.errors import UserError
from alexnet_mp.io import atomic_save, atomic_write, human_bytes, is_temporary
from alexnet_mp.progress import Progress

__all__ = ["bytes_on_disk", "prepare", "prepare_dataset"]

log = logging.getLogger("alexnet_mp")

_MIN_SHARD, _MAX_SHARD = 256, 8192  # shard_size=auto: about four shards per worker per split, within these
_PROGRESS_SECONDS = 30.0  # a plain progress line this often when stdout is a log, not a terminal


# ----------------------------------------------------------------------------- settings

def _integer(value: Any, key: str, low: int, high: int | None = None, auto: bool = False) -> int | str:
    if auto and value == "auto":
        return "auto"
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)
    if not ok:
        rng = f"an integer from {low} to {high}" if high is not None else (
            "a positive integer" if low == 1 else f"an integer >= {low}")
        raise UserError(f"{key} must be {'auto or ' if auto else ''}{rng}, not {value!r}")
    return value



def _auto_shard_size(n: int, workers: int) -> int:
    """About four shards per worker (an even finish), each of 256 to 8192 images."""
    return min(_MAX_SHARD, max(_MIN_SHARD, math.ceil(n / (4 * workers))))


def _source_fingerprint(source: Path, datasets: dict[str, ImageFolderImages]) -> dict:
    splits = {}
    for split, ds in datasets.items():
        rel = [p.relative_to(source).as_posix() for p in (ds.samples[0][0], ds.samples[-1][0])]
        splits[split] = {"files": len(ds.samples), "first": rel[0], "last": rel[1]}
    return {"root": str(source), "classes": list(datasets["train"].classes), "splits": splits}


def _differences(there: Any, here: Any, key: str = "") -> list[str]:
    """``key.path value there, value now`` for each leaf where two nested dicts differ
    (a missing key reads as None)."""
    nested = (isinstance(there, dict) or isinstance(here, dict)) and all(
        v is None or isinstance(v, dict) for v in (there, here))
    if nested:
        a, b = there or {}, here or {}
        return [line for k in sorted(set(a) | set(b), key=str)
                for line in _differences(a.get(k), b.get(k), f"{key}{k}.")]
    if there == here:
        return []
    show = lambda v: (repr(v) if len(repr(v)) <= 40 else repr(v)[:37] + "...")  # noqa: E731
    return [f"{key[:-1]} {show(there)} there, {show(here)} now"]


def _write_json(path: Path, obj: dict) -> None:
    atomic_write(path, json.dumps(obj, indent=1) + "\n")


def bytes_on_disk(folder: Path) -> int:
    """The bytes of every file under ``folder``."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


# ----------------------------------------------------------------------------- the prepare

def prepare(cfg: DictConfig) -> dict:
    """``launch/prepare.py``: :func:`prepare_dataset` with the settings of ``conf/prepare.yaml``."""
    d = cfg.data
    if str(d.get("name", "")) != "imagefolder":
        raise UserError(f"prepare reads an image folder (data=imagefolder, the default), not data={d.get('name')}")
    if OmegaConf.is_missing(d, "root") or d.root in (None, ""):
        raise UserError("prepare needs data.root=PATH: a folder with train/ and val/ of class folders")
    if OmegaConf.is_missing(cfg, "out") or cfg.out in (None, ""):
        raise UserError("prepare needs out=PATH: a new or empty folder for the prepared dataset")
    debug = cfg.get("debug") or {}
    return prepare_dataset(str(d.root), str(cfg.out), image_size=d.image_size, format=cfg.format,
                           jpeg_quality=cfg.jpeg_quality, workers=cfg.workers, shard_size=cfg.shard_size,
                           progress=cfg.progress, stop_after_shards=debug.get("stop_after_shards", 0))


def _check_settings(image_size: Any, format: Any, jpeg_quality: Any, workers: Any, shard_size: Any,
                    progress: Any, stop_after_shards: Any) -> tuple:
    """The keyword arguments of :func:`prepare_dataset`, checked; one-line errors naming the key."""
    image_size = _integer(image_size, "data.image_size", 1)
    if format not in FORMATS:
        raise UserError(f"format must be raw or jpeg, not {format!r}")
    checked = (image_size, format, _integer(jpeg_quality, "jpeg_quality", 1, 100),
               _integer(workers, "workers", 1, auto=True), _integer(shard_size, "shard_size", 1, auto=True))
    stop_after_shards = _integer(stop_after_shards, "debug.stop_after_shards", 0)
    if not isinstance(progress, bool):
        raise UserError(f"progress must be true or false, not {progress!r}")
    return (*checked, progress, stop_after_shards)


def _open_source(source: Path, out: Path, image_size: int) -> dict[str, ImageFolderImages]:
    """Both splits of the image folder ``source``, checked to share classes and not to hold ``out``."""
    datasets = {split: ImageFolderImages(source, split, image_size) for split in SPLITS}
    check_same_classes(datasets["train"], datasets["val"])
    for split in SPLITS:
        if out.resolve() == source / split or (source / split) in out.resolve().parents:
            raise UserError(f"out={out} lies inside {source / split}, where it would become a class folder; "
                            f"choose a folder outside data.root's train/ and val/")
    return datasets


def _plan(source: Path, datasets: dict[str, ImageFolderImages], settings: dict, shard_size: int | str,
          workers: int) -> dict:
    """What ``prepare.json`` records: the settings (with each split's shard size) and the source."""
    sizes = {s: _auto_shard_size(len(ds), workers) if shard_size == "auto" else shard_size
             for s, ds in datasets.items()}
    return {"kind": "alexnet_mp prepare", "format_version": FORMAT_VERSION,
            "settings": {**settings, "shard_size": sizes}, "source": _source_fingerprint(source, datasets)}


def _remove_strays(out: Path) -> None:
    for folder in (out, *(out / s for s in SPLITS)):
        folder.mkdir(exist_ok=True)
        for stray in folder.iterdir():
            if is_temporary(stray) and stray.is_file():
                stray.unlink()  # an earlier run's unfinished file


def _tasks(out: Path, source: Path, datasets: dict[str, ImageFolderImages], plan: dict,
           jpeg_quality: int) -> dict[str, list[Shard]]:
    s = plan["settings"]
    tasks: dict[str, list[Shard]] = {}
    for split, ds in datasets.items():
        size = s["shard_size"][split]
        files = [(p.relative_to(source).as_posix(), label) for p, label in ds.samples]
        chunks = [files[i:i + size] for i in range(0, len(files), size)]
        tasks[split] = [Shard(str(out), split, k, str(source), chunk, s["image_size"], s["format"], jpeg_quality,
                              split == "train") for k, chunk in enumerate(chunks)]
    return tasks


def prepare_dataset(source: str | Path, out: str | Path, *, image_size: int = 256, format: str = "raw",
                    jpeg_quality: int = 90, workers: int | str = "auto", shard_size: int | str = "auto",
                    progress: bool = True, stop_after_shards: int = 0) -> dict:
    """Prepare ``source`` (``train/`` and ``val/`` of class folders) into ``out``; the manifest.

    Resumes an interrupted prepare of the same settings and source; returns at once
    when ``out`` is already complete. ``stop_after_shards`` (tests) raises
    ``SystemExit(3)`` once that many shards were completed in this run, like a crash.
    """
    start = time.perf_counter()
    image_size, format, jpeg_quality, workers, shard_size, progress, stop_after_shards = _check_settings(
        image_size, format, jpeg_quality, workers, shard_size, progress, stop_after_shards)
    source = Path(source).expanduser().resolve()
    out = Path(out).expanduser().absolute()
    datasets = _open_source(source, out, image_size)
    n_workers = cores() if workers == "auto" else workers
    settings = {"image_size": image_size, "format": format, "jpeg_quality": jpeg_quality if format == "jpeg" else None}
    claimed = _claim(out, _plan(source, datasets, settings, shard_size, n_workers), auto_shards=shard_size == "auto")
    if claimed == "complete":
        manifest = read_json(out / MANIFEST_JSON, "the prepared dataset's manifest")
        log.info("%s is already prepared (%s, %dpx, %s); nothing to do", out, format, image_size,
                 ", ".join(f"{s} {manifest['splits'][s]['count']} images" for s in SPLITS))
        return manifest
    plan = claimed  # with the shard sizes of an earlier run of this prepare, if any
    _remove_strays(out)
    tasks = _tasks(out, source, datasets, plan, jpeg_quality)
    done = {split: sum(len(t.files) for t in tasks[split] if _shard_done(out, t)) for split in SPLITS}
    todo = [t for split in SPLITS for t in tasks[split] if not _shard_done(out, t)]
    n_shards = sum(len(v) for v in tasks.values())
    n_workers = max(1, min(n_workers, len(todo)))
    log.info("prepare %s -> %s: %s, %dpx, format %s%s; %d shards of %s images, %d worker processes",
             source, out, ", ".join(f"{s} {len(ds)} files" for s, ds in datasets.items()), image_size, format,
             f" (quality {jpeg_quality})" if format == "jpeg" else "", n_shards,
             "/".join(str(plan["settings"]["shard_size"][s]) for s in SPLITS), n_workers)
    if len(todo) < n_shards:
        log.info("continuing an interrupted prepare: %d of %d shards already done", n_shards - len(todo), n_shards)
    _run_shards(todo, {s: len(ds) for s, ds in datasets.items()}, done, n_workers, progress, stop_after_shards)
    manifest = _finish(out, plan, tasks)
    _log_finished(out, manifest, time.perf_counter() - start)
    return manifest


def _log_finished(out: Path, manifest: dict, seconds: float) -> None:
    n_images = sum(manifest["splits"][s]["files"] for s in SPLITS)
    log.info("prepared %s: %s; %s on disk; %.1f s (%.0f images/s)", out,
             ", ".join(f"{s} {manifest['splits'][s]['count']} images ({manifest['splits'][s]['skipped_count']} "
                       f"skipped)" for s in SPLITS),
             human_bytes(bytes_on_disk(out)), seconds, n_images / seconds if seconds > 0 else 0.0)


def _claim(out: Path, plan: dict, auto_shards: bool) -> dict | str:
    """Make ``out`` this prepare's folder: "complete" if it already holds this very dataset,
    else the plan to follow (an earlier run's shard sizes kept when ``shard_size=auto``)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"out={out} exists and is not a folder")
    manifest_path, prepare_path = out / MANIFEST_JSON, out / PREPARE_JSON
    earlier = None
    if manifest_path.is_file():
        earlier = read_json(manifest_path, "the manifest of a prepared dataset")
    elif prepare_path.is_file():
        earlier = read_json(prepare_path, "the settings of a prepare")
    if earlier is None:
        if out.is_dir() and any(out.iterdir()):
            raise UserError(f"{out} is not empty and is not a prepared dataset; choose an empty or new folder")
        out.mkdir(parents=True, exist_ok=True)
        _write_json(prepare_path, plan)
        return plan
    there = {k: earlier.get(k) for k in ("format_version", "settings", "source")}
    if auto_shards and isinstance(there["settings"], dict) and "shard_size" in there["settings"]:
        # shard_size=auto depends on the machine's core count: keep the earlier run's shards.
        plan = {**plan, "settings": {**plan["settings"], "shard_size": there["settings"]["shard_size"]}}
    here = {k: plan[k] for k in ("format_version", "settings", "source")}
    diffs = _differences(there, here)
    if diffs:
        raise UserError(f"{out} holds a prepare of other settings or source ({'; '.join(diffs[:4])}"
                        f"{'; ...' if len(diffs) > 4 else ''}); choose another out= or delete {out}")
    return "complete" if manifest_path.is_file() else plan




def _shard_done(out: Path, task: Shard) -> bool:
    folder = out / task.split
    return (folder / record_name(task.index)).is_file() and all(
        (folder / n).is_file() for n in data_names(task.format, task.index))


def _run_shards(todo: list[Shard], totals: dict[str, int], done: dict[str, int], workers: int,
                progress: bool, stop_after: int) -> None:
    """Every shard of ``todo`` on ``workers`` processes (in this one when ``workers`` is 1),
    the progress of each split in turn, as shards finish."""
    pending = {s: sum(1 for t in todo if t.split == s) for s in SPLITS}
    bars: dict[str, Progress] = {}
    finished = 0

    def open_bar(split: str) -> None:
        bars[split] = Progress(total=totals[split], desc=f"prepare {split}", unit="image", enabled=progress,
                               initial=done[split], every_seconds=_PROGRESS_SECONDS)

    def completed(result: dict) -> None:
        nonlocal finished
        split = result["split"]
        for path, reason in result["skipped"]:
            log.warning("skipped unreadable image %s: %s", path, reason)
        pending[split] -= 1
        if split in bars:
            bars[split].update(result["files"])
        else:
            done[split] += result["files"]  # the other split's bar starts from here
        if split == "train" and pending["train"] == 0 and "train" in bars:
            bars.pop("train").close()
            open_bar("val")
        finished += 1
        if stop_after and finished >= stop_after:
            log.warning("debug.stop_after_shards=%d: stopping as if killed", stop_after)
            raise SystemExit(3)

    open_bar("train" if pending["train"] else "val")
    try:
        if workers == 1 or not todo:
            for task in todo:
                completed(prepare_shard(task))
            return
        _run_in_pool(todo, workers, completed)
    finally:
        for bar in bars.values():
            bar.close()


def _run_in_pool(todo: list[Shard], workers: int, completed: Callable[[dict], None]) -> None:
    # ProcessPoolExecutor rather than multiprocessing.Pool: a worker killed outright (the
    # kernel's OOM killer, SIGBUS) breaks the executor with an error, where a Pool waits forever.
    context = multiprocessing.get_context(worker_context())
    if context.get_start_method() == "fork":
        # Import the decoders and the resize once here, not in each forked worker (docs/data.md).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import torchvision.io  # noqa: F401
            import torchvision.transforms.v2.functional  # noqa: F401
    before = set(multiprocessing.active_children())
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=init_worker,
                                   initargs=(os.getpid(),))
    ok = False
    try:
        futures = {executor.submit(prepare_shard, task) for task in todo}
        while futures:
            finished, futures = wait(futures, return_when=FIRST_COMPLETED)
            for future in finished:
                try:
                    result = future.result()
                except BrokenProcessPool:
                    raise UserError("a worker process of the prepare died (killed, or out of memory?); completed "
                                    "shards are kept: re-run the same command to continue") from None
                completed(result)
        ok = True
    finally:
        if ok:
            executor.shutdown(wait=True)
        else:  # an error, a debug stop or Ctrl-C: stop the other workers now, mid-shard
            executor.shutdown(wait=False, cancel_futures=True)
            for child in set(multiprocessing.active_children()) - before:
                child.terminate()
            for child in set(multiprocessing.active_children()) - before:
                child.join(timeout=10)


def _load_record(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # cannot happen after an atomic write, unless the disk is damaged
        path.unlink(missing_ok=True)
        raise UserError(f"unreadable shard record {path} ({type(err).__name__}); it was removed: re-run the same "
                        f"command to redo that shard") from None


def _finish(out: Path, plan: dict, tasks: dict[str, list[Shard]]) -> dict:
    """All shards done: labels, statistics, then the manifest, which marks completion."""
    splits, stats_parts = {}, []
    for split in SPLITS:
        shards, labels, skipped = [], [], []
        for task in tasks[split]:
            record = _load_record(out / split / record_name(task.index))
            shards.append({"index": task.index, "files": list(record["data"]), "count": int(record["count"]),
                           "bytes": int(record["bytes"])})
            labels.append(record["labels"].numpy())
            skipped += list(record["skipped"])
            if record["stats"] is not None:
                stats_parts.append(record["stats"])
        all_labels = np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64)
        atomic_write(out / split / LABELS_NPY, npy_bytes(all_labels))
        splits[split] = {"count": int(all_labels.size), "files": sum(len(t.files) for t in tasks[split]),
                         "labels": LABELS_NPY, "shards": shards, "skipped_count": len(skipped), "skipped": skipped}
    stats = stats_from_sums(stats_parts)
    if stats is None:
        raise UserError("no readable training images to compute dataset statistics from")
    s = plan["settings"]
    atomic_save({"format_version": FORMAT_VERSION, "image_size": s["image_size"], "count": splits["train"]["count"],
                 "mean_image": stats.mean_image, "eigvals": stats.eigvals, "eigvecs": stats.eigvecs}, out / STATS_PT)
    manifest = {"kind": KIND, "format_version": FORMAT_VERSION, "image_size": s["image_size"],
                "format": s["format"], "jpeg_quality": s["jpeg_quality"], "classes": plan["source"]["classes"],
                "splits": splits, "stats": STATS_PT, "source_root": plan["source"]["root"],
                "created": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
                "settings": plan["settings"], "source": plan["source"]}
    _write_json(out / MANIFEST_JSON, manifest)
    return manifest

