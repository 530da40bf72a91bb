"""A prepared dataset: the paper's preprocessing done once, ahead of training (Krizhevsky et al. 2012, sec. 2).

Sec. 2: every image is rescaled so that its shorter side is 256 and the central
256 x 256 patch is kept; the per-pixel mean image of the training set is subtracted
and, for fancy PCA (sec. 4.1), the RGB covariance over the training set is needed.
Reading ImageNet's JPEGs of every size and resizing them again in every epoch costs
more CPU than two towers can be fed with; the paper stored the 256 px images instead.
``launch/prepare.py`` does that work once, on every core, and training reads the
result with ``data=prepared`` (:class:`PreparedImages`):

    python launch/prepare.py data.root=/data/ilsvrc2012 out=/data/ilsvrc2012-256 [format=jpeg]
    torchrun --nproc_per_node=2 launch/train.py data=prepared data.root=/data/ilsvrc2012-256

Each image goes through :func:`alexnet_mp.data.load_image` (the same function
``data=imagefolder`` uses, so both give the same pixels), in the order and with the
labels of :class:`alexnet_mp.data.ImageFolderImages`. Unreadable files are skipped,
named and counted. Two storage formats:

- ``raw`` (default): uint8 [n, 3, S, S] ``.npy`` shards, memory-mapped by the reader;
  no decoding at training time (196 KiB per 256 px image).
- ``jpeg``: the S px images re-encoded as JPEG (``jpeg_quality``, default 90), about
  ten times smaller for ImageNet-size photographs, decoded by the loader workers.

The mean image and the RGB covariance eigen-decomposition are computed in the same
pass over the WHOLE training set (not a sample), exactly as
:func:`alexnet_mp.data.compute_stats` would over every training image: each shard's
worker sums in float64, the main process combines the sums. For ``jpeg`` they are
computed from the pixels before encoding, i.e. from what ``data=imagefolder`` would
give, not from the slightly different decoded JPEGs.

On disk (``S``: image size, ``NNNNN``: shard index)::

    OUT/prepare.json                 settings and source fingerprint, written first
    OUT/<split>/images-NNNNN.npy     raw: uint8 [n, 3, S, S]
    OUT/<split>/jpeg-NNNNN.bin       jpeg: the shard's JPEG files, concatenated
    OUT/<split>/jpeg-NNNNN.offsets.npy   jpeg: int64 [n + 1] byte offsets into the .bin
    OUT/<split>/shard-NNNNN.pt       the shard's record (labels, skipped files, partial
                                     statistics), written last: the shard's "done" marker
    OUT/<split>/labels.npy           int64 labels of the whole split, in order
    OUT/stats.pt                     mean image and RGB eigen-decomposition (weights_only)
    OUT/manifest.json                written LAST: the dataset is complete only with it

The work unit is a shard of consecutive images; one worker process per core (fork where
the platform has it) does a shard at a time, and the main process reports progress as
shards finish. Crash safety: every file is written under a temporary name in its
folder, flushed, fsynced and renamed. A prepare killed at any moment leaves complete
shards (those with a record) and perhaps stray temporaries (workers stopped on purpose
remove theirs; on Linux they are stopped when the main process dies); running the same
command again removes the temporaries, keeps the complete shards and does the rest.
A full disk is a one-line error, and the next run continues likewise. Two prepares
into the same folder at the same time are not guarded against.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import math
import multiprocessing
import os
import signal
import sys
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from numpy.lib.format import open_memmap
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.utils.data import Dataset

from alexnet_mp.checkpoint import atomic_write_text, fsync_dir as _fsync_dir
from alexnet_mp.data import DatasetStats, ImageFolderImages, _decode, check_same_classes, load_image
from alexnet_mp.errors import UserError
from alexnet_mp.progress import Progress

__all__ = ["FORMAT_VERSION", "PreparedImages", "open_prepared", "prepare", "prepare_dataset", "read_manifest"]

log = logging.getLogger("alexnet_mp")

FORMAT_VERSION = 1
SPLITS = ("train", "val")
FORMATS = ("raw", "jpeg")
PREPARE_JSON, MANIFEST_JSON, STATS_PT, LABELS_NPY = "prepare.json", "manifest.json", "stats.pt", "labels.npy"
_KIND = "alexnet_mp prepared dataset"
_MIN_SHARD, _MAX_SHARD = 256, 8192  # shard_size=auto: about four shards per worker per split, within these
_PROGRESS_SECONDS = 30.0  # a plain progress line this often when stdout is a log, not a terminal
_DISK_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}


# ----------------------------------------------------------------------------- small helpers

def _tmp_name(path: Path, tag: str = "") -> Path:
    """A temporary name beside ``path``: hidden, with the process id, removed by the next run.
    Registered in ``_ACTIVE`` until it is renamed or removed."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{tag}")
    _ACTIVE.add(tmp)
    return tmp


_ACTIVE: set[Path] = set()  # this process's temporaries, removed if it is terminated


def _done_with(*paths: Path) -> None:
    for p in paths:
        _ACTIVE.discard(p)


def _remove(*paths: Path) -> None:
    for p in paths:
        p.unlink(missing_ok=True)
        _ACTIVE.discard(p)


def _is_temporary(path: Path) -> bool:
    return path.name.startswith(".") and ".tmp-" in path.name


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _disk_full(err: OSError, path: Path) -> UserError | None:
    """The one-line error for a full disk or quota while writing ``path``, else None."""
    if err.errno not in _DISK_FULL:
        return None
    return UserError(f"{_DISK_FULL[err.errno]} while writing {path}: the partial file was removed and nothing "
                     f"more is marked complete; free some space and re-run the same command, which continues "
                     f"from the completed shards")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """``data`` to a temporary file beside ``path``, fsynced, then renamed over it."""
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        _remove(tmp)
        raise _disk_full(err, path) or err
    except BaseException:
        _remove(tmp)
        raise
    _done_with(tmp)
    _fsync_dir(path.parent)


def _torch_bytes(obj: Any) -> bytes:
    # Serialised in memory first: torch.save into a file turns a write error into a
    # RuntimeError from its C++ writer, while a plain write keeps the OSError and its errno.
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _write_json(path: Path, obj: dict) -> None:
    """JSON through :func:`alexnet_mp.checkpoint.atomic_write_text`, a full disk as a one-line error."""
    try:
        atomic_write_text(path, json.dumps(obj, indent=1) + "\n")
    except OSError as err:
        path.with_name(f".{path.name}.tmp-{os.getpid()}").unlink(missing_ok=True)  # atomic_write_text's name
        raise _disk_full(err, path) or err


def _read_json(path: Path, what: str) -> dict:
    try:
        obj = json.loads(path.read_text())
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
        return obj
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path} ({what}): {type(err).__name__}: {str(err).splitlines()[0]}") from None


def _human_bytes(n: int) -> str:
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _bytes_on_disk(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _shard_stem(index: int) -> str:
    return f"{index:05d}"


def _data_names(fmt: str, index: int) -> list[str]:
    stem = _shard_stem(index)
    return [f"images-{stem}.npy"] if fmt == "raw" else [f"jpeg-{stem}.bin", f"jpeg-{stem}.offsets.npy"]


def _record_name(index: int) -> str:
    return f"shard-{_shard_stem(index)}.pt"


# ----------------------------------------------------------------------------- one shard (in a worker)

class _PartialStats:
    """Float64 sums over one shard's readable training images: the per-image terms of
    :func:`alexnet_mp.data.compute_stats`, in the same arithmetic."""

    def __init__(self, size: int):
        self.total = torch.zeros(3, size, size, dtype=torch.float64)
        self.s1 = torch.zeros(3, dtype=torch.float64)
        self.s2 = torch.zeros(3, 3, dtype=torch.float64)
        self.count = self.npix = 0

    def add(self, img: Tensor) -> None:
        img = img.to(torch.float64)
        self.total.add_(img)
        x = img.reshape(3, -1) / 255  # RGB values in [0, 1], as compute_stats
        self.s1 += x.sum(1)
        self.s2 += x @ x.T
        self.count, self.npix = self.count + 1, self.npix + x.shape[1]

    def state(self) -> dict:
        return {"sum": self.total, "count": self.count, "s1": self.s1, "s2": self.s2, "npix": self.npix}


class _RawWriter:
    """uint8 [n, 3, S, S] into a ``.npy`` made with ``open_memmap``, under a temporary name."""

    def __init__(self, folder: Path, index: int, n: int, size: int):
        self.path = folder / _data_names("raw", index)[0]
        self.size, self.rows, self.k = size, n, 0
        self.temporaries: list[Path] = []
        self.array = self._open(_tmp_name(self.path), n)

    def _open(self, tmp: Path, n: int) -> np.ndarray:
        self.temporaries.append(tmp)
        try:
            array = open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, 3, self.size, self.size))
            # Reserve the blocks now: writing into a memory map on a full disk kills the
            # process with SIGBUS instead of raising ENOSPC.
            if hasattr(os, "posix_fallocate") and array.nbytes:
                fd = os.open(tmp, os.O_RDWR)
                try:
                    os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
                except OSError as err:
                    if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                        raise
                finally:
                    os.close(fd)
        except BaseException:
            _remove(tmp)
            raise
        return array

    def add(self, img: Tensor) -> None:
        self.array[self.k] = img.numpy()
        self.k += 1

    def commit(self) -> list[str]:
        if self.k < self.rows:  # unreadable files: copy the rows written into a file of the right length
            full = self.array
            self.array = self._open(_tmp_name(self.path, "-2"), self.k)
            self.array[:] = full[:self.k]
            del full
            _remove(self.temporaries[0])
        self.array.flush()
        self.array = None  # closes the map
        tmp = self.temporaries[-1]
        _fsync_file(tmp)
        os.replace(tmp, self.path)
        _done_with(tmp)
        self.temporaries = []
        return [self.path.name]

    def discard(self) -> None:
        self.array = None
        _remove(*self.temporaries)


class _JpegWriter:
    """JPEG files concatenated into one ``.bin`` plus int64 offsets, under temporary names."""

    def __init__(self, folder: Path, index: int, quality: int):
        bin_name, offsets_name = _data_names("jpeg", index)
        self.path, self.offsets_path = folder / bin_name, folder / offsets_name
        self.quality, self.offsets = quality, [0]
        self.temporaries = [_tmp_name(self.path), _tmp_name(self.offsets_path)]
        self.file = open(self.temporaries[0], "wb")

    def add(self, img: Tensor) -> None:
        with warnings.catch_warnings():  # deprecated in favour of TorchCodec, like data._decode
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import encode_jpeg

            encoded = encode_jpeg(img, quality=self.quality).numpy().tobytes()
        self.file.write(encoded)
        self.offsets.append(self.offsets[-1] + len(encoded))

    def commit(self) -> list[str]:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        with open(self.temporaries[1], "wb") as f:
            np.save(f, np.asarray(self.offsets, dtype=np.int64), allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(self.temporaries[0], self.path)
        os.replace(self.temporaries[1], self.offsets_path)
        _done_with(*self.temporaries)
        self.temporaries = []
        return [self.path.name, self.offsets_path.name]

    def discard(self) -> None:
        try:
            self.file.close()
        except OSError:
            pass
        _remove(*self.temporaries)


@dataclass
class _Shard:
    """One work unit: consecutive images of one split, with everything a worker needs."""

    out: str
    split: str
    index: int
    source: str
    files: list[tuple[str, int]]  # (path relative to the source root, label)
    image_size: int
    format: str
    jpeg_quality: int
    with_stats: bool


def _load(path: Path, size: int) -> tuple[Tensor | None, str]:
    """:func:`load_image`, its warning for an unreadable file kept as the reason (the main
    process logs it once, in order, instead of every worker writing to stderr)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        img = load_image(path, size)
    if img is not None:
        return img, ""
    reasons = [str(w.message) for w in caught if "unreadable" in str(w.message)]
    reason = reasons[-1] if reasons else "unreadable"
    return None, reason.split(": ", 1)[-1] if reason.startswith("skipping unreadable image") else reason


def _prepare_shard(task: _Shard) -> dict:
    """Read, preprocess and store one shard; its record, written last, marks it done."""
    folder = Path(task.out) / task.split
    source = Path(task.source)
    writer = None
    labels, skipped, reasons = [], [], []
    stats = _PartialStats(task.image_size) if task.with_stats else None
    try:
        writer = (_RawWriter(folder, task.index, len(task.files), task.image_size) if task.format == "raw"
                  else _JpegWriter(folder, task.index, task.jpeg_quality))
        for rel, label in task.files:
            img, reason = _load(source / rel, task.image_size)
            if img is None:
                skipped.append(rel)
                reasons.append(reason)
                continue
            writer.add(img)
            labels.append(label)
            if stats is not None:
                stats.add(img)
        names = writer.commit()
    except OSError as err:
        if writer is not None:
            writer.discard()
        raise _disk_full(err, getattr(writer, "path", folder / _data_names(task.format, task.index)[0])) or err
    except BaseException:
        if writer is not None:
            writer.discard()
        raise
    _fsync_dir(folder)
    record = {"format_version": FORMAT_VERSION, "split": task.split, "index": task.index, "files": len(task.files),
              "count": len(labels), "data": names, "labels": torch.tensor(labels, dtype=torch.int64),
              "skipped": skipped, "skipped_reasons": reasons,
              "bytes": sum((folder / n).stat().st_size for n in names),
              "stats": stats.state() if stats is not None else None}
    _atomic_write_bytes(folder / _record_name(task.index), _torch_bytes(record))
    return {"split": task.split, "index": task.index, "files": len(task.files), "count": len(labels),
            "skipped": list(zip(skipped, reasons))}


def _on_terminate(signum: int, frame: Any) -> None:
    """A worker stopped mid-shard (another shard failed, Ctrl-C, debug stop): remove its
    temporaries and leave at once; the shard has no record, so the next run redoes it."""
    for tmp in list(_ACTIVE):
        try:
            tmp.unlink()
        except OSError:
            pass
    os._exit(128 + signum)


def _init_worker(parent: int) -> None:
    torch.set_num_threads(1)  # one process per core already
    signal.signal(signal.SIGTERM, _on_terminate)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the main process stops the workers
    # A prepare killed outright (SIGKILL, OOM) must not leave workers behind that go on
    # writing shards while the next run starts: on Linux they get SIGTERM when it dies.
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)


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


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _auto_shard_size(n: int, workers: int) -> int:
    """About four shards per worker (an even finish), each of 256 to 8192 images."""
    return min(_MAX_SHARD, max(_MIN_SHARD, math.ceil(n / (4 * workers))))


def _source_fingerprint(source: Path, datasets: dict[str, ImageFolderImages]) -> dict:
    splits = {}
    for split, ds in datasets.items():
        rel = [p.relative_to(source).as_posix() for p in (ds.samples[0][0], ds.samples[-1][0])]
        splits[split] = {"files": len(ds.samples), "first": rel[0], "last": rel[1]}
    return {"root": str(source), "classes": list(datasets["train"].classes), "splits": splits}


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        flat: dict[str, Any] = {}
        for k, v in obj.items():
            flat.update(_flatten(v, f"{prefix}{k}."))
        return flat
    return {prefix[:-1]: obj}


def _differences(there: dict, here: dict) -> list[str]:
    a, b = _flatten(there), _flatten(here)
    show = lambda v: (repr(v) if len(repr(v)) <= 40 else repr(v)[:37] + "...")  # noqa: E731
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            out.append(f"{key} {show(a.get(key))} there, {show(b.get(key))} now")
    return out


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


def prepare_dataset(source: str | Path, out: str | Path, *, image_size: int = 256, format: str = "raw",
                    jpeg_quality: int = 90, workers: int | str = "auto", shard_size: int | str = "auto",
                    progress: bool = True, stop_after_shards: int = 0) -> dict:
    """Prepare ``source`` (``train/`` and ``val/`` of class folders) into ``out``; the manifest.

    Resumes an interrupted prepare of the same settings and source; returns at once
    when ``out`` is already complete. ``stop_after_shards`` (tests) raises
    ``SystemExit(3)`` once that many shards were completed in this run, like a crash.
    """
    start = time.perf_counter()
    image_size = _integer(image_size, "data.image_size", 1)
    if format not in FORMATS:
        raise UserError(f"format must be raw or jpeg, not {format!r}")
    jpeg_quality = _integer(jpeg_quality, "jpeg_quality", 1, 100)
    workers = _integer(workers, "workers", 1, auto=True)
    shard_size = _integer(shard_size, "shard_size", 1, auto=True)
    stop_after_shards = _integer(stop_after_shards, "debug.stop_after_shards", 0)
    if not isinstance(progress, bool):
        raise UserError(f"progress must be true or false, not {progress!r}")

    source = Path(source).expanduser().resolve()
    out = Path(out).expanduser().absolute()
    datasets = {split: ImageFolderImages(source, split, image_size) for split in SPLITS}
    check_same_classes(datasets["train"], datasets["val"])
    for split in SPLITS:
        if out.resolve() == source / split or (source / split) in out.resolve().parents:
            raise UserError(f"out={out} lies inside {source / split}, where it would become a class folder; "
                            f"choose a folder outside data.root's train/ and val/")
    n_workers = _cores() if workers == "auto" else workers
    plan = {"kind": "alexnet_mp prepare", "format_version": FORMAT_VERSION,
            "settings": {"image_size": image_size, "format": format,
                         "jpeg_quality": jpeg_quality if format == "jpeg" else None,
                         "shard_size": {s: _auto_shard_size(len(ds), n_workers) if shard_size == "auto"
                                        else shard_size for s, ds in datasets.items()}},
            "source": _source_fingerprint(source, datasets)}

    claimed = _claim(out, plan, auto_shards=shard_size == "auto")
    if claimed == "complete":
        manifest = _read_json(out / MANIFEST_JSON, "the prepared dataset's manifest")
        log.info("%s is already prepared (%s, %dpx, %s); nothing to do", out, format, image_size,
                 ", ".join(f"{s} {manifest['splits'][s]['count']} images" for s in SPLITS))
        return manifest
    plan = claimed  # with the shard sizes of an earlier run of this prepare, if any

    for folder in (out, *(out / s for s in SPLITS)):
        folder.mkdir(exist_ok=True)
        for stray in folder.iterdir():
            if _is_temporary(stray) and stray.is_file():
                stray.unlink()  # an earlier run's unfinished file

    tasks: dict[str, list[_Shard]] = {}
    done: dict[str, int] = {}
    for split, ds in datasets.items():
        size = plan["settings"]["shard_size"][split]
        files = [(p.relative_to(source).as_posix(), label) for p, label in ds.samples]
        chunks = [files[i:i + size] for i in range(0, len(files), size)]
        tasks[split] = [_Shard(str(out), split, k, str(source), chunk, image_size, format, jpeg_quality,
                               split == "train") for k, chunk in enumerate(chunks)]
        done[split] = sum(len(t.files) for t in tasks[split] if _shard_done(out, t))
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
    seconds = time.perf_counter() - start
    n_images = sum(manifest["splits"][s]["files"] for s in SPLITS)
    log.info("prepared %s: %s; %s on disk; %.1f s (%.0f images/s)", out,
             ", ".join(f"{s} {manifest['splits'][s]['count']} images ({manifest['splits'][s]['skipped_count']} "
                       f"skipped)" for s in SPLITS),
             _human_bytes(_bytes_on_disk(out)), seconds, n_images / seconds if seconds > 0 else 0.0)
    return manifest


def _claim(out: Path, plan: dict, auto_shards: bool) -> dict | str:
    """Make ``out`` this prepare's folder: "complete" if it already holds this very dataset,
    else the plan to follow (an earlier run's shard sizes kept when ``shard_size=auto``)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"out={out} exists and is not a folder")
    manifest_path, prepare_path = out / MANIFEST_JSON, out / PREPARE_JSON
    earlier = None
    if manifest_path.is_file():
        earlier = _read_json(manifest_path, "the manifest of a prepared dataset")
    elif prepare_path.is_file():
        earlier = _read_json(prepare_path, "the settings of a prepare")
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


def _shard_done(out: Path, task: _Shard) -> bool:
    folder = out / task.split
    return (folder / _record_name(task.index)).is_file() and all(
        (folder / n).is_file() for n in _data_names(task.format, task.index))


def _run_shards(todo: list[_Shard], totals: dict[str, int], done: dict[str, int], workers: int,
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
                completed(_prepare_shard(task))
            return
        _run_in_pool(todo, workers, completed)
    finally:
        for bar in bars.values():
            bar.close()


def _run_in_pool(todo: list[_Shard], workers: int, completed: Callable[[dict], None]) -> None:
    # ProcessPoolExecutor rather than multiprocessing.Pool: a worker killed outright (the
    # kernel's OOM killer, SIGBUS) breaks the executor with an error, where a Pool waits forever.
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    if context.get_start_method() == "fork":
        # Import the decoders and the resize once here, not in every forked worker (2 s each).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import torchvision.io  # noqa: F401
            import torchvision.transforms.v2.functional  # noqa: F401
    before = set(multiprocessing.active_children())
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                                   initargs=(os.getpid(),))
    ok = False
    try:
        futures = {executor.submit(_prepare_shard, task) for task in todo}
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


def _combine_stats(parts: list[dict]) -> DatasetStats:
    """The training-set statistics from the shards' float64 sums."""
    parts = [p for p in parts if p["count"] > 0]
    if not parts:
        raise UserError("no readable training images to compute dataset statistics from")
    total = torch.stack([p["sum"] for p in parts]).sum(0)
    s1 = torch.stack([p["s1"] for p in parts]).sum(0)
    s2 = torch.stack([p["s2"] for p in parts]).sum(0)
    count, npix = sum(p["count"] for p in parts), sum(p["npix"] for p in parts)
    # From here on the formula of alexnet_mp.data.compute_stats, line for line (the tests
    # hold the two equal): covariance of RGB in [0, 1], eigenvalues descending and >= 0.
    mu = s1 / npix
    eigvals, eigvecs = torch.linalg.eigh(s2 / npix - torch.outer(mu, mu))
    order = eigvals.argsort(descending=True)
    return DatasetStats((total / count).float(), eigvals[order].clamp_min(0).float(),
                        eigvecs[:, order].float().contiguous())


def _load_record(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # cannot happen after an atomic write, unless the disk is damaged
        path.unlink(missing_ok=True)
        raise UserError(f"unreadable shard record {path} ({type(err).__name__}); it was removed: re-run the same "
                        f"command to redo that shard") from None


def _finish(out: Path, plan: dict, tasks: dict[str, list[_Shard]]) -> dict:
    """All shards done: labels, statistics, then the manifest, which marks completion."""
    splits, stats_parts = {}, []
    for split in SPLITS:
        shards, labels, skipped = [], [], []
        for task in tasks[split]:
            record = _load_record(out / split / _record_name(task.index))
            shards.append({"index": task.index, "files": list(record["data"]), "count": int(record["count"]),
                           "bytes": int(record["bytes"])})
            labels.append(record["labels"].numpy())
            skipped += list(record["skipped"])
            if record["stats"] is not None:
                stats_parts.append(record["stats"])
        all_labels = np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64)
        _atomic_write_bytes(out / split / LABELS_NPY, _npy_bytes(all_labels))
        splits[split] = {"count": int(all_labels.size), "files": sum(len(t.files) for t in tasks[split]),
                         "labels": LABELS_NPY, "shards": shards, "skipped_count": len(skipped), "skipped": skipped}
    stats = _combine_stats(stats_parts)
    s = plan["settings"]
    _atomic_write_bytes(out / STATS_PT, _torch_bytes({
        "format_version": FORMAT_VERSION, "image_size": s["image_size"], "count": splits["train"]["count"],
        "mean_image": stats.mean_image, "eigvals": stats.eigvals, "eigvecs": stats.eigvecs}))
    manifest = {"kind": _KIND, "format_version": FORMAT_VERSION, "image_size": s["image_size"],
                "format": s["format"], "jpeg_quality": s["jpeg_quality"], "classes": plan["source"]["classes"],
                "splits": splits, "stats": STATS_PT, "source_root": plan["source"]["root"],
                "created": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
                "settings": plan["settings"], "source": plan["source"]}
    _write_json(out / MANIFEST_JSON, manifest)
    return manifest


# ----------------------------------------------------------------------------- the reader

def _looks_like_image_tree(root: Path) -> bool:
    train = root / "train"
    return train.is_dir() and any(d.is_dir() and not d.name.startswith(".") for d in train.iterdir())


def read_manifest(root: Path) -> dict:
    """The manifest of the prepared dataset at ``root``; one-line errors for anything else."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"prepared dataset {root} does not exist")
    if not root.is_dir():
        raise UserError(f"prepared dataset {root} is not a folder")
    path = root / MANIFEST_JSON
    if not path.is_file():
        if (root / PREPARE_JSON).is_file():
            raise UserError(f"{root} is an incomplete prepared dataset (interrupted prepare?): re-run "
                            f"launch/prepare.py with the same settings to finish it{_same_command(root)}")
        if _looks_like_image_tree(root):
            raise UserError(f"{root} is a raw image folder, not a prepared dataset: run `python launch/prepare.py "
                            f"data.root={root} out=PREPARED` first, then use data=prepared data.root=PREPARED "
                            f"(or read it as it is with data=imagefolder)")
        raise UserError(f"{root} is not a prepared dataset (no {MANIFEST_JSON}); make one with "
                        f"`python launch/prepare.py data.root=IMAGES out={root}`")
    manifest = _read_json(path, "the manifest of a prepared dataset")
    if manifest.get("kind") != _KIND or manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path} is not a version-{FORMAT_VERSION} manifest of an alexnet_mp prepared dataset "
                        f"(kind {manifest.get('kind')!r}, version {manifest.get('format_version')!r}); "
                        f"prepare it again with this version of launch/prepare.py")
    return manifest


def _same_command(root: Path) -> str:
    try:
        plan = json.loads((root / PREPARE_JSON).read_text())
        s = plan["settings"]
        extra = f" format=jpeg jpeg_quality={s['jpeg_quality']}" if s["format"] == "jpeg" else ""
        return (f" (python launch/prepare.py data.root={plan['source']['root']} out={root} "
                f"data.image_size={s['image_size']}{extra})")
    except (OSError, ValueError, KeyError, TypeError):
        return ""


class PreparedImages(Dataset):
    """One split of a dataset made by :func:`prepare_dataset`: ``(uint8 [3, S, S], label)`` items.

    ``read_batch`` reads a whole batch at once (one fancy index per shard for raw shards;
    a JPEG decode per image for jpeg ones). Shards are memory-mapped lazily, in each
    process on its first read, and the maps are never pickled, so DataLoader workers,
    forked or spawned, open their own.
    """

    def __init__(self, root: str | Path, split: str, image_size: int | None = None):
        self.root, self.split = Path(root).expanduser(), split
        manifest = read_manifest(self.root)
        if split not in manifest["splits"]:
            raise UserError(f"prepared dataset {self.root} has no split {split!r} (it has "
                            f"{', '.join(manifest['splits'])})")
        self.image_size = int(manifest["image_size"])
        if image_size is not None and int(image_size) != self.image_size:
            raise UserError(f"prepared dataset {self.root} holds {self.image_size}px images but data.image_size="
                            f"{int(image_size)}; set data.image_size={self.image_size}, or prepare again with "
                            f"data.image_size={int(image_size)} into another out=")
        self.format = manifest["format"]
        self.classes = list(manifest["classes"])
        self.num_classes = len(self.classes)
        info = manifest["splits"][split]
        self.skipped: list[str] = list(info["skipped"])
        self.created = manifest["created"]
        self._shards = [list(s["files"]) for s in info["shards"]]
        counts = [int(s["count"]) for s in info["shards"]]
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        folder = self.root / split
        for names in self._shards + [[info["labels"]]]:
            for name in names:
                if not (folder / name).is_file():
                    raise UserError(f"prepared dataset {self.root} is missing {split}/{name}; "
                                    f"prepare it again (launch/prepare.py) into a new out=")
        self._labels = np.load(folder / info["labels"], allow_pickle=False)
        if self._labels.shape != (int(self._starts[-1]),):
            raise UserError(f"{folder / info['labels']} holds {self._labels.shape[0]} labels, the manifest "
                            f"{int(self._starts[-1])} images; prepare it again into a new out=")
        self._maps: dict[int, Any] = {}
        self._pid = os.getpid()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_maps"] = {}  # memory maps stay in the process that opened them
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

    def fingerprint(self) -> str:
        return (f"prepared|{self.format}|{self.split}|{self.num_classes}|{len(self)}|{self.image_size}|"
                f"{self.created}")

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        images, labels = self.read_batch([index])
        return images[0], int(labels[0])

    def _shard(self, k: int) -> Any:
        if self._pid != os.getpid():  # forked after opening: open our own
            self._maps, self._pid = {}, os.getpid()
        opened = self._maps.get(k)
        if opened is None:
            folder = self.root / self.split
            names = self._shards[k]
            try:
                if self.format == "raw":
                    opened = np.load(folder / names[0], mmap_mode="r")
                    expect = (int(self._starts[k + 1] - self._starts[k]), 3, self.image_size, self.image_size)
                    if opened.shape != expect or opened.dtype != np.uint8:
                        raise ValueError(f"shape {opened.shape} {opened.dtype}, expected {expect} uint8")
                else:
                    offsets = np.load(folder / names[1], allow_pickle=False)
                    opened = (np.memmap(folder / names[0], dtype=np.uint8, mode="r"), offsets)
            except (OSError, ValueError) as err:
                raise UserError(f"cannot read shard {folder / names[0]} of prepared dataset {self.root}: "
                                f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
            self._maps[k] = opened
        return opened

    def read_batch(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        """(uint8 images [n, 3, S, S], int64 labels [n]) of ``indices``, in that order."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n, size = idx.size, self.image_size
        if n and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"indices out of range for {len(self)} images")
        out = np.empty((n, 3, size, size), dtype=np.uint8)
        shard = np.searchsorted(self._starts, idx, side="right") - 1
        local = idx - self._starts[shard]
        order = np.lexsort((local, shard))  # by shard, then position in it: sequential reads
        groups = np.split(order, np.flatnonzero(np.diff(shard[order])) + 1) if n else []
        for group in groups:
            k, rows = int(shard[group[0]]), local[group]
            if self.format == "raw":
                out[group] = self._shard(k)[rows]
            else:
                blob, offsets = self._shard(k)
                for pos, row in zip(group, rows):
                    img = _decode(blob[offsets[row]:offsets[row + 1]].tobytes())
                    if img.shape != (3, size, size):
                        raise UserError(f"image {row} of shard {self._shards[k][0]} of {self.root} decodes to "
                                        f"{tuple(img.shape)}, not (3, {size}, {size})")
                    out[pos] = img.numpy()
        return torch.from_numpy(out), torch.from_numpy(self._labels[idx].astype(np.int64, copy=False))

    def stats(self) -> DatasetStats:
        """Mean image and RGB eigen-decomposition over the whole training set (``stats.pt``)."""
        path = self.root / STATS_PT
        if not path.is_file():
            raise UserError(f"prepared dataset {self.root} has no {STATS_PT}; prepare it again into a new out=")
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            stats = DatasetStats(blob["mean_image"], blob["eigvals"], blob["eigvecs"])
        except Exception as err:
            raise UserError(f"cannot read {path}: {type(err).__name__}: {str(err).splitlines()[0]}") from None
        if tuple(stats.mean_image.shape) != (3, self.image_size, self.image_size):
            raise UserError(f"{path} holds a mean image of shape {tuple(stats.mean_image.shape)}, not "
                            f"(3, {self.image_size}, {self.image_size}); prepare it again into a new out=")
        return stats


def open_prepared(root: str | Path, image_size: int | None) -> tuple[PreparedImages, PreparedImages]:
    """Both splits of the prepared dataset at ``root``, checked to have the same classes."""
    train = PreparedImages(root, "train", image_size)
    val = PreparedImages(root, "val", image_size)
    check_same_classes(train, val)
    return train, val
