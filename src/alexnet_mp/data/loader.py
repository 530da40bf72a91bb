"""The loader: whole uint8 batches of any epoch, in an order every process agrees on (Krizhevsky et al. 2012, sec. 3.2).

Per-image work is reading (and decoding) the stored uint8 image; the loader hands over
whole uint8 batches, and the augmentation runs per batch on the training device
(:mod:`alexnet_mp.data.augment`). The order of an epoch is a permutation seeded by
(seed, epoch), so both towers' processes (sec. 3.2: the towers work on one batch), any
number of loader workers and a resumed run read the same batches.

    loader = BatchLoader(ds, 128, shuffle=True, seed=0, workers=default_workers(), drop_last=True)
    for batch in loader.epoch(0):
        x = augment.train(batch.images.to(device), batch.indices, batch.epoch)
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from alexnet_mp.data.seeds import TAG_LOADER, TAG_ORDER, generator
from alexnet_mp.errors import UserError

__all__ = ["Batch", "BatchLoader", "BatchReader", "EpochBatches", "cores", "default_workers", "epoch_order",
           "read_images", "worker_context", "worker_death", "fetch_failure"]


@dataclass
class Batch:
    """What the loader hands the training loop: stored uint8 images [n, 3, S, S] (or the
    float crops when ``data.augment=workers`` augmented them already), labels [n],
    the dataset indices [n] the augmentation draws are keyed by, the epoch, and how many
    unreadable images the batch dropped."""

    images: Tensor
    labels: Tensor
    indices: Tensor
    epoch: int
    skipped: int = 0

    def pin_memory(self) -> "Batch":  # DataLoader(pin_memory=True) calls this
        return Batch(self.images.pin_memory(), self.labels.pin_memory(), self.indices, self.epoch, self.skipped)

    def __len__(self) -> int:
        return len(self.labels)


def read_images(base: Any, indices: list[int]) -> tuple[Tensor, Tensor, list[int]]:
    """(uint8 images [n, 3, S, S], labels [n], the indices read) of ``indices``, dropping
    unreadable ones. A dataset with ``read_batch`` (a prepared dataset) reads the whole
    batch at once; others are read image by image."""
    if hasattr(base, "read_batch"):
        images, labels = base.read_batch(indices)
        return images, labels, list(indices)
    items = [(i, base[i]) for i in indices]
    good = [(i, item) for i, item in items if item is not None]
    if not good:
        size = int(getattr(base, "image_size", 0))
        return (torch.empty(0, 3, size, size, dtype=torch.uint8), torch.empty(0, dtype=torch.int64), [])
    images = torch.stack([item[0] for _, item in good])
    return images, torch.tensor([item[1] for _, item in good], dtype=torch.int64), [i for i, _ in good]


class BatchReader(Dataset):
    """Map-style dataset whose keys are whole batches, ``(epoch, [indices])``.

    Per-image work is reading bytes (and decoding, for image folders); everything else
    happens per batch: on the training device by default, or here, in the loader
    workers, when ``transform`` is given (``data.augment=workers``). The epoch travels
    with the key because persistent workers keep their own copy of this object.
    """

    def __init__(self, base: Any, transform=None):
        self.base, self.transform = base, transform
        self.classes = base.classes

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, list[int]]) -> Batch:
        epoch, indices = key
        images, labels, read = read_images(self.base, indices)
        idx = torch.tensor(read, dtype=torch.int64)
        if self.transform is not None and len(read):
            images = self.transform(images, idx, epoch)
        return Batch(images, labels, idx, epoch, len(indices) - len(read))


def epoch_order(n: int, *, shuffle: bool, seed: int, epoch: int) -> Tensor:
    """Sample order of one epoch: a permutation seeded by (seed, epoch), or 0..n-1."""
    if not shuffle:
        return torch.arange(n)
    return torch.randperm(n, generator=generator(TAG_ORDER, seed, epoch))


class EpochBatches(torch.utils.data.Sampler):
    """The batches of one epoch as ``(epoch, [indices])`` keys, from ``start_batch`` on:
    batch k holds ``epoch_order(...)[k * batch_size:(k + 1) * batch_size]``. Set the epoch
    before each pass; the loader iterates it in the main process.

    ``shard=(i, n)``: this replica's rows of every batch, the i-th of n near-equal slices
    (equal when n divides the batch): ``batch_size`` stays the global batch."""

    def __init__(self, n: int, batch_size: int, *, shuffle: bool, seed: int, drop_last: bool,
                 shard: tuple[int, int] = (0, 1)):
        if batch_size < 1:
            raise UserError(f"batch_size must be at least 1, not {batch_size}")
        self.n, self.batch_size, self.shuffle, self.seed, self.drop_last = n, batch_size, shuffle, seed, drop_last
        self.epoch, self.start_batch = 0, 0
        self.shard = shard

    def batches_per_epoch(self) -> int:
        return self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if not 0 <= start_batch <= self.batches_per_epoch():
            raise ValueError(f"start_batch {start_batch} outside 0..{self.batches_per_epoch()}")
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.start_batch

    def __iter__(self):
        order = epoch_order(self.n, shuffle=self.shuffle, seed=self.seed, epoch=self.epoch).tolist()
        b = self.batch_size
        i, n = self.shard
        for k in range(self.start_batch, self.batches_per_epoch()):
            rows = order[k * b:(k + 1) * b]
            yield self.epoch, rows[len(rows) * i // n:len(rows) * (i + 1) // n]


def worker_context() -> str:
    """The start method for worker processes: "fork" where the platform has it, else "spawn"."""
    # Workers only read, decode and (data.augment=workers) augment on the CPU, so forking
    # after CUDA / torch.distributed initialisation is safe (they never touch CUDA or the
    # process group) and avoids re-importing torch per worker. "spawn" where fork does not exist.
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


# The stop signals of alexnet_mp.job.preempt (a scheduler's SIGTERM, Ctrl-C's SIGINT, Slurm's SIGUSR1).
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def _worker_start(worker_id: int) -> None:  # noqa: ARG001
    """Each loader worker ignores the stop signals: the process that owns it acts on them.

    A scheduler signals every process of the job (Slurm's SIGTERM goes to the process group,
    Ctrl-C to the terminal's), workers included. torch's worker handler lets a SIGTERM kill
    the worker, and the DataLoader then raises "worker ... killed by signal" in the main
    process at whatever line it is on, a checkpoint write included. Ignored here, the main
    process stops at its next step boundary and saves; its workers end with it (the loader's
    shutdown, or torch's watchdog, which sees their parent gone within 5 s)."""
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def worker_death(err: BaseException) -> str | None:
    """torch's words when ``err`` says a loader worker died (a signal, the OOM killer), else None."""
    text = str(err).strip()
    if isinstance(err, RuntimeError) and text.startswith("DataLoader worker"):
        return text.splitlines()[0].rstrip(". ")
    return None


def fetch_failure(err: BaseException) -> BaseException:
    """What to report for ``err``, raised while fetching a batch. A worker killed while it hands
    a batch over closes the connection its shared memory comes through (EOFError,
    ConnectionError): that is said as torch says a worker's death (:func:`worker_death`)."""
    if not isinstance(err, (EOFError, ConnectionError)):
        return err
    try:  # torch's own check of its workers (private, but there since torch 1.0): it names the pid
        from torch.utils.data._utils.signal_handling import _error_if_any_worker_fails
    except ImportError:
        _error_if_any_worker_fails = None
    # The dying worker's sockets close a moment before it can be waited for: ask for up to 1 s.
    for _ in range(20 if _error_if_any_worker_fails is not None else 0):
        try:
            _error_if_any_worker_fails()
        except RuntimeError as died:
            return died
        time.sleep(0.05)
    return RuntimeError(f"DataLoader worker died while handing over a batch ({type(err).__name__})")


class BatchLoader:
    """Batches of ``base`` for any epoch, through one DataLoader whose workers live as long
    as the loader (forked once, not every epoch and every evaluation), with prefetching and
    pinned memory for a GPU.

        loader = BatchLoader(ds, 128, shuffle=True, seed=0, workers=4, drop_last=True)
        for batch in loader.epoch(3, start_batch=10): ...
    """

    def __init__(self, base: Any, batch_size: int, *, shuffle: bool, seed: int, workers: int, drop_last: bool,
                 pin_memory: bool = False, transform=None, prefetch: int = 4, shard: tuple[int, int] = (0, 1)):
        self.reader = BatchReader(base, transform)
        self.sampler = EpochBatches(len(base), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                                    shard=shard)
        self.batch_size, self.workers = batch_size, workers
        self.loader = DataLoader(
            self.reader, sampler=self.sampler, batch_size=None, num_workers=workers,
            multiprocessing_context=worker_context() if workers > 0 else None,
            persistent_workers=workers > 0, pin_memory=pin_memory,
            prefetch_factor=prefetch if workers > 0 else None, worker_init_fn=_worker_start if workers > 0 else None,
            # A private generator: starting the workers must not consume the global RNG (dropout).
            generator=generator(TAG_LOADER, seed))

    def epoch(self, epoch: int, start_batch: int = 0) -> DataLoader:
        """The batches of ``epoch`` from ``start_batch`` on; ``len()`` is how many remain."""
        self.sampler.set_epoch(epoch, start_batch)
        return self.loader

    def __len__(self) -> int:
        return self.sampler.batches_per_epoch()


def cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers() -> int:
    """Loader workers per training process: the cores left over after one per process
    on this node (torchrun's LOCAL_WORLD_SIZE), shared out, at most 4."""
    cpus = cores()
    procs = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return min(4, max(0, (cpus - procs) // procs))
