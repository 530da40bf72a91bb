"""The epoch loop of sec. 5: an epoch of steps with the loss read, logged and checked every
``log_every_steps`` and the run state saved every ``checkpoint.every_steps`` (``train_epoch``),
every remaining epoch each validated and checkpointed (``train_epochs``), and the validation
error, top-1 and top-5 on centre crops (``validate``; sec. 6). The step itself and what a
caller adds to it are :mod:`alexnet_mp.train.step`'s."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

import torch
from omegaconf import DictConfig

from alexnet_mp.data.loader import fetch_failure
from alexnet_mp.parallel import ranks
from alexnet_mp.job.metrics_log import MetricsLog
from alexnet_mp.job.preempt import PreemptionFlag, StopRequested
from alexnet_mp.progress import Progress
from alexnet_mp.net.topk import topk_wrong
from alexnet_mp.train.checkpoint_policy import Checkpoints
from alexnet_mp.train.inputs import Inputs
from alexnet_mp.train.state import Position, RunState
from alexnet_mp.train.step import StepHooks, train_step

__all__ = ["train_epoch", "train_epochs", "validate"]

log = logging.getLogger("alexnet_mp")


@torch.no_grad()
def validate(state: RunState, inputs: Inputs, *, progress: bool = False, stop: PreemptionFlag | None = None) -> dict:
    """Centre-crop top-1 and top-5 error over the whole validation set; each replica
    evaluates its rows of every batch and the counts are summed, so each image counts once.
    ``stop``: a stop signal ends it between batches (the run re-evaluates on resume)."""
    model = state.model
    model.eval()
    wrong = torch.zeros(2, dtype=torch.int64, device=inputs.device)
    seen = skipped = 0
    loader = inputs.val.epoch(0)
    with Progress(len(loader), "validation", unit="batch", enabled=progress, scale=inputs.val.batch_size,
                  scale_unit="images") as bar:
        for batch in _fetched(loader, stop):
            skipped += batch.skipped
            bar.update(1)
            if stop is not None:
                stop.check()
            if not len(batch):
                continue
            images, labels = inputs.val_input(batch)
            wrong += topk_wrong(state.logits(images), labels)
            seen += len(batch)
    model.train()
    counts = ranks.sum_over(torch.cat([wrong, torch.tensor([seen, skipped], device=wrong.device)]),
                          state.replica_group)
    wrong1, wrong5, seen, skipped = counts.tolist()
    return {"val_top1_err": wrong1 / max(seen, 1), "val_top5_err": wrong5 / max(seen, 1), "val_images": seen,
            "val_skipped": skipped}


class _EpochClock:
    """The epoch's training time (``epoch_seconds``, checkpoint saves left out) and, of it, the
    time spent waiting for the loader (``data_seconds``)."""

    def __init__(self, p: Position):
        self.p, self.tick = p, time.perf_counter()

    def next_batch(self, batches: Iterator):
        wait = time.perf_counter()
        batch = next(batches, None)
        self.p.data_seconds += time.perf_counter() - wait
        return batch

    def lap(self) -> None:
        now = time.perf_counter()
        self.p.epoch_seconds += now - self.tick
        self.tick = now

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self.lap()
        yield
        self.tick = time.perf_counter()


def _fetched(loader, stop: PreemptionFlag | None) -> Iterator:
    """``loader``'s batches; a loader worker that died is said as one (``fetch_failure``), and
    one that died of a pending stop's signal is that stop."""
    batches = iter(loader)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (RuntimeError, EOFError, ConnectionError) as err:
            failure = fetch_failure(err)
            if stop is not None:
                stop.stop_instead(failure)
            if failure is err:
                raise
            raise failure from None
        yield batch


def _batches(loader, inputs: Inputs, p: Position, clock: _EpochClock, check: bool,
             stop: PreemptionFlag | None) -> Iterator[tuple]:
    """The epoch's batches as the net's input; an empty batch (every image unreadable) is
    counted and passed over. ``check`` (``debug.check_batches``): the towers' batches are compared."""
    batches = _fetched(loader, stop)
    while (batch := clock.next_batch(batches)) is not None:
        p.skipped += batch.skipped
        if not len(batch):
            p.batch_in_epoch += 1
            continue
        images, labels = inputs.train_input(batch)
        if check and not ranks.all_equal(torch.stack([images.sum(), labels.sum().to(images)]),
                                       group=inputs.tower_group):
            raise RuntimeError("the towers received different batches")
        yield images, labels


def _log_loss(state: RunState, checkpoints: Checkpoints, metrics: MetricsLog, bar: Progress,
              clock: _EpochClock) -> None:
    """Read the loss (checked finite on every rank; the host waits for the device here, so the
    clock is read after it) into the progress bar and the metrics log."""
    loss = checkpoints.check_loss(state)
    clock.lap()
    bar.update(0, loss=f"{loss:.3f}", lr=f"{state.schedule.lr:.2g}")
    metrics.scalar("train/loss", loss, state.position.step)


def _stops_here(p: Position, max_steps: int, stop: PreemptionFlag | None, clock: _EpochClock) -> bool:
    """True when ``debug.max_steps`` is reached; :class:`StopRequested` on every rank together
    when any rank got a stop signal. Either way the epoch's time so far is counted."""
    if max_steps and p.step >= max_steps:
        clock.lap()
        return True
    if stop is not None and stop.requested():
        clock.lap()
        raise StopRequested()
    return False


def train_epoch(state: RunState, inputs: Inputs, checkpoints: Checkpoints, metrics: MetricsLog,
                cfg: DictConfig, *, main: bool, stop: PreemptionFlag | None = None,
                hooks: StepHooks = StepHooks()) -> bool:
    """Train the rest of the current epoch; returns False when ``debug.max_steps`` stopped it.
    ``stop``: every rank asks after each step whether a stop signal came (preempt.py)."""
    p = state.position
    every, log_every, max_steps = int(cfg.checkpoint.every_steps), int(cfg.log_every_steps), int(cfg.debug.max_steps)
    loader = inputs.train.epoch(p.epoch, start_batch=p.batch_in_epoch)
    with Progress(len(inputs.train), f"epoch {p.epoch + 1}/{cfg.epochs}", unit="batch", initial=p.batch_in_epoch,
                  enabled=main and bool(cfg.progress), scale=inputs.train.batch_size, scale_unit="images",
                  every_steps=log_every * 10) as bar:
        clock = _EpochClock(p)
        for images, labels in _batches(loader, inputs, p, clock, bool(cfg.debug.check_batches), stop):
            with hooks.around_step():
                train_step(state, images, labels)
            bar.update(1)
            if p.step % log_every == 0 or p.step == 1:
                _log_loss(state, checkpoints, metrics, bar, clock)
            if every and p.step % every == 0:
                with clock.paused():
                    checkpoints.save(state, "every_steps")
            for hook in hooks.after_step:
                hook(state)
            if _stops_here(p, max_steps, stop, clock):
                return False
        clock.lap()
    checkpoints.check_loss(state)
    return True


def train_epochs(state: RunState, inputs: Inputs, checkpoints: Checkpoints, metrics: MetricsLog, cfg: DictConfig,
                 *, main: bool, stop: PreemptionFlag, hooks: StepHooks = StepHooks()) -> bool:
    """Every remaining epoch, each validated and checkpointed; True when ``debug.max_steps`` stopped it."""
    p = state.position
    with checkpoints.saved_on_stop(state, stop):
        while p.epoch < int(cfg.epochs):
            if not train_epoch(state, inputs, checkpoints, metrics, cfg, main=main, stop=stop, hooks=hooks):
                checkpoints.save(state, "max_steps")  # a clean stop: resume=true with a larger debug.max_steps goes on
                return True
            result = validate(state, inputs, progress=main and bool(cfg.progress), stop=stop)
            row = _epoch_row(state, result)
            dropped = state.schedule.step(result["val_top1_err"])
            metrics.epoch(row)
            if main:
                log.info("epoch %d/%d: train loss %.4f, val top-1 %.2f%%, top-5 %.2f%%, %.0f images/s%s",
                         p.epoch + 1, cfg.epochs, row["train_loss"], 100 * row["val_top1_err"], 100 * row["val_top5_err"],
                         row["images_per_s"], f"; learning rate now {state.schedule.lr:.2g}" if dropped else "")
            p.next_epoch()
            if p.epoch % int(cfg.checkpoint.every_epochs) == 0 or p.epoch == int(cfg.epochs):
                checkpoints.save(state, "epoch")
    return False


def _epoch_row(state: RunState, result: dict) -> dict:
    """The epoch's row of the metrics log: training totals, validation ``result``, speed."""
    p = state.position
    return {"epoch": p.epoch + 1, "train_loss": p.epoch_loss / max(p.epoch_images, 1), **result,
            "train_skipped": int(ranks.sum_over(torch.tensor([p.skipped], device=state.device),
                                               state.replica_group).item()),  # every replica's rows
            "lr": state.schedule.lr,
            "images_per_s": p.epoch_images / max(p.epoch_seconds, 1e-9), "seconds": p.epoch_seconds,
            "data_wait_share": p.data_seconds / max(p.epoch_seconds, 1e-9), "step": p.step}
