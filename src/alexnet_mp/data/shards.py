"""One shard of a prepare, in a worker process: read, resize, store (Krizhevsky et al. 2012, sec. 2).

A shard is a run of consecutive images of one split. The worker passes each through
:func:`alexnet_mp.data.images.read_image` (sec. 2: shorter side to S, central S x S
kept; the very function ``data=imagefolder`` uses), writes it with :class:`RawWriter`
(a memory-mapped uint8 ``.npy``) or :class:`JpegWriter` (re-encoded JPEGs and their
offsets), sums the training images' statistics (:class:`~alexnet_mp.data.dataset_stats.StatsSums`)
and writes the shard's record last: a shard is done only once its record exists. Every
file is written under an :mod:`alexnet_mp.io` temporary; a worker stopped mid-shard
removes its temporaries, and the shard without a record is redone by the next run.
"""

from __future__ import annotations

import errno
import io
import os
import signal
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.format import open_memmap
from torch import Tensor

from alexnet_mp.data.images import read_image
from alexnet_mp.data.prepared import FORMAT_VERSION, data_names, record_name
from alexnet_mp.data.dataset_stats import StatsSums
from alexnet_mp.io import (DiskFull, atomic_save, atomic_write, disk_full_error, fsync_dir, publish, remove,
                           remove_temporaries, temporary_name)

__all__ = ["JpegWriter", "RawWriter", "Shard", "init_worker", "npy_bytes", "prepare_shard"]


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` as the bytes of a ``.npy`` file (no pickles)."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


class RawWriter:
    """uint8 [n, 3, S, S] into a ``.npy`` made with ``open_memmap``, under a temporary name."""

    def __init__(self, folder: Path, index: int, n: int, size: int):
        self.path = folder / data_names("raw", index)[0]
        self.size, self.rows, self.k = size, n, 0
        self.temporaries: list[Path] = []
        self.array = self._open(temporary_name(self.path), n)

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
            remove(tmp)
            raise
        return array

    def add(self, img: Tensor) -> None:
        self.array[self.k] = img.numpy()
        self.k += 1

    def commit(self) -> list[str]:
        if self.k < self.rows:  # unreadable files: copy the rows written into a file of the right length
            full = self.array
            self.array = self._open(temporary_name(self.path, "-2"), self.k)
            self.array[:] = full[:self.k]
            del full
            remove(self.temporaries[0])
        self.array.flush()
        self.array = None  # closes the map
        publish(self.temporaries[-1], self.path)
        self.temporaries = []
        return [self.path.name]

    def discard(self) -> None:
        self.array = None
        remove(*self.temporaries)


class JpegWriter:
    """JPEG files concatenated into one ``.bin`` (streamed to a temporary) plus int64 offsets."""

    def __init__(self, folder: Path, index: int, quality: int):
        bin_name, offsets_name = data_names("jpeg", index)
        self.path, self.offsets_path = folder / bin_name, folder / offsets_name
        self.quality, self.offsets = quality, [0]
        self.temporaries = [temporary_name(self.path)]
        self.file = open(self.temporaries[0], "wb")

    def add(self, img: Tensor) -> None:
        with warnings.catch_warnings():  # deprecated in favour of TorchCodec, like images.decode
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import encode_jpeg

            encoded = encode_jpeg(img, quality=self.quality).numpy().tobytes()
        self.file.write(encoded)
        self.offsets.append(self.offsets[-1] + len(encoded))

    def commit(self) -> list[str]:
        self.file.close()
        publish(self.temporaries[0], self.path)
        self.temporaries = []
        atomic_write(self.offsets_path, npy_bytes(np.asarray(self.offsets, dtype=np.int64)))
        return [self.path.name, self.offsets_path.name]

    def discard(self) -> None:
        try:
            self.file.close()
        except OSError:
            pass
        remove(*self.temporaries)


@dataclass
class Shard:
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


def shard_disk_full(err: OSError, path: Path) -> DiskFull | None:
    """:func:`alexnet_mp.io.disk_full_error` for a shard's file, saying what the next run keeps."""
    full = disk_full_error(err, path)
    return None if full is None else DiskFull(f"{full}, which continues from the completed shards")


def _write_images(task: Shard, folder: Path, stats: StatsSums | None) -> tuple[list[str], list[int], list, list]:
    """The shard's images into its data files: (their names, labels, skipped files, reasons)."""
    writer = None
    labels, skipped, reasons = [], [], []
    try:
        writer = (RawWriter(folder, task.index, len(task.files), task.image_size) if task.format == "raw"
                  else JpegWriter(folder, task.index, task.jpeg_quality))
        for rel, label in task.files:
            img, reason = read_image(Path(task.source) / rel, task.image_size)
            if img is None:
                skipped.append(rel)
                reasons.append(reason)
                continue
            writer.add(img)
            labels.append(label)
            if stats is not None:
                stats.add(img)
        return writer.commit(), labels, skipped, reasons
    except OSError as err:
        if writer is not None:
            writer.discard()
        raise shard_disk_full(err, getattr(writer, "path", folder / data_names(task.format, task.index)[0])) or err
    except BaseException:
        if writer is not None:
            writer.discard()
        raise


def prepare_shard(task: Shard) -> dict:
    """Read, preprocess and store one shard; its record, written last, marks it done."""
    folder = Path(task.out) / task.split
    stats = StatsSums(task.image_size) if task.with_stats else None
    names, labels, skipped, reasons = _write_images(task, folder, stats)
    fsync_dir(folder)
    record = {"format_version": FORMAT_VERSION, "split": task.split, "index": task.index, "files": len(task.files),
              "count": len(labels), "data": names, "labels": torch.tensor(labels, dtype=torch.int64),
              "skipped": skipped, "skipped_reasons": reasons,
              "bytes": sum((folder / n).stat().st_size for n in names),
              "stats": stats.state() if stats is not None else None}
    atomic_save(record, folder / record_name(task.index))
    return {"split": task.split, "index": task.index, "files": len(task.files), "count": len(labels),
            "skipped": list(zip(skipped, reasons))}


def _on_terminate(signum: int, frame: Any) -> None:
    """A worker stopped mid-shard (another shard failed, Ctrl-C, debug stop): remove its
    temporaries and leave at once; the shard has no record, so the next run redoes it."""
    remove_temporaries()
    os._exit(128 + signum)


def init_worker(parent: int) -> None:
    """Set up a prepare worker process whose parent has process id ``parent``."""
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
