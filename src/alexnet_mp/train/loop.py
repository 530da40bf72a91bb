"""The step and the epoch loop of sec. 5: one SGD step (``train_step``), an epoch of them
with the loss read, logged and checked every ``log_every_steps`` (``train_epoch``), every
remaining epoch each evaluated and checkpointed (``train_epochs``), and the validation
error, top-1 and top-5 on centre crops (``evaluate``, ``topk_*``; sec. 6)."""

from __future__ import annotations

import logging
import os
import signal
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from omegaconf import DictConfig

from alexnet_mp import comm
from alexnet_mp.preempt import PreemptionFlag, StopRequested
from alexnet_mp.progress import Progress
from alexnet_mp.report import MetricsLog
from alexnet_mp.train.checkpoints import Checkpoints
from alexnet_mp.train.inputs import Inputs
from alexnet_mp.train.state import RunState

__all__ = ["train_step", "train_epoch", "train_epochs", "evaluate", "topk_errors", "topk_wrong"]

log = logging.getLogger("alexnet_mp")


def topk_wrong(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Top-1 and top-5 mistakes in a batch as a tensor [2] on the logits' device (no host
    wait); top-k is capped at the class count."""
    k = min(5, logits.shape[1])
    hit = logits.topk(k, dim=1).indices == labels[:, None]
    return torch.stack([(~hit[:, 0]).sum(), (~hit.any(1)).sum()])


def topk_errors(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """Number of top-1 and top-5 mistakes in a batch (top-k capped at the class count)."""
    w1, w5 = topk_wrong(logits, labels).tolist()
    return int(w1), int(w5)


@torch.no_grad()
def evaluate(state: RunState, inputs: Inputs, *, progress: bool = False, stop: PreemptionFlag | None = None) -> dict:
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
        for batch in loader:
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
    counts = comm.sum_over(torch.cat([wrong, torch.tensor([seen, skipped], device=wrong.device)]),
                           state.replica_group)
    wrong1, wrong5, seen, skipped = counts.tolist()
    return {"val_top1_err": wrong1 / max(seen, 1), "val_top5_err": wrong5 / max(seen, 1), "val_images": seen,
            "val_skipped": skipped}


def train_step(state: RunState, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One SGD step on a batch already on the device; returns the (detached) loss on the device.

    Nothing here waits for the device: the loss is added to ``state.loss_sum``, and a
    non-finite loss is found when it is read (:meth:`RunState.flush_loss`).
    """
    loss = F.cross_entropy(state.logits(images), labels)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    state.schedule.begin_step(state.position.step + 1)
    state.optimizer.step()
    loss = loss.detach()
    state.loss_sum += loss.double() * len(labels)
    state.loss_images += len(labels)
    state.position.step += 1
    state.position.batch_in_epoch += 1
    state.position.epoch_images += len(labels) * state.replicas  # the global batch
    return loss


def train_epoch(state: RunState, inputs: Inputs, checkpoints: Checkpoints, metrics: MetricsLog,
                cfg: DictConfig, *, main: bool, stop: PreemptionFlag | None = None) -> bool:
    """Train the rest of the current epoch; returns False when ``debug.max_steps`` stopped it.
    ``stop``: every rank asks after each step whether a stop signal came (preempt.py)."""
    p = state.position
    every, log_every = int(cfg.checkpoint.every_steps), int(cfg.log_every_steps)
    max_steps, kill_at = int(cfg.debug.max_steps), int(cfg.debug.kill_at_step)
    kill_rank = int(cfg.debug.kill_rank)
    check_batches = bool(cfg.debug.check_batches)
    loader = inputs.train.epoch(p.epoch, start_batch=p.batch_in_epoch)
    with Progress(len(inputs.train), f"epoch {p.epoch + 1}/{cfg.epochs}", unit="batch", initial=p.batch_in_epoch,
                  enabled=main and bool(cfg.progress), scale=inputs.train.batch_size, scale_unit="images",
                  every_steps=log_every * 10) as bar:
        tick = time.perf_counter()
        batches = iter(loader)
        while True:
            wait = time.perf_counter()
            batch = next(batches, None)  # the time the step waits for the loader
            p.data_seconds += time.perf_counter() - wait
            if batch is None:
                break
            p.skipped += batch.skipped
            if not len(batch):
                p.batch_in_epoch += 1
                continue
            images, labels = inputs.train_input(batch)
            if check_batches and not comm.all_equal(torch.stack([images.sum(), labels.sum().to(images)]),
                                                    group=inputs.tower_group):
                raise RuntimeError("the towers received different batches")
            train_step(state, images, labels)
            bar.update(1)
            if p.step % log_every == 0 or p.step == 1:
                loss = checkpoints.check_loss(state)
                now = time.perf_counter()
                p.epoch_seconds += now - tick
                tick = now
                bar.update(0, loss=f"{loss:.3f}", lr=f"{state.schedule.lr:.2g}")
                metrics.scalar("train/loss", loss, p.step)
            if every and p.step % every == 0:
                p.epoch_seconds += time.perf_counter() - tick
                checkpoints.save(state, "every_steps")
                tick = time.perf_counter()
            if kill_at == p.step and kill_rank in (-1, dist.get_rank() if dist.is_initialized() else 0) \
                    and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":  # not again after a restart
                os.kill(os.getpid(), signal.SIGKILL)  # a crash without warning, for the tests
            if max_steps and p.step >= max_steps:
                p.epoch_seconds += time.perf_counter() - tick
                return False
            if stop is not None and stop.requested():
                p.epoch_seconds += time.perf_counter() - tick
                raise StopRequested()
        p.epoch_seconds += time.perf_counter() - tick
    checkpoints.check_loss(state)
    return True


def train_epochs(state: RunState, inputs: Inputs, checkpoints: Checkpoints, metrics: MetricsLog, cfg: DictConfig,
                 *, main: bool, stop: PreemptionFlag) -> bool:
    """Every remaining epoch, each evaluated and checkpointed; True when ``debug.max_steps`` stopped it."""
    p = state.position
    with checkpoints.saved_on_stop(state, stop):
        while p.epoch < int(cfg.epochs):
            if not train_epoch(state, inputs, checkpoints, metrics, cfg, main=main, stop=stop):
                checkpoints.save(state, "max_steps")  # a clean stop: resume=true with a larger debug.max_steps goes on
                return True
            result = evaluate(state, inputs, progress=main and bool(cfg.progress), stop=stop)
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
            "train_skipped": int(comm.sum_over(torch.tensor([p.skipped], device=state.device),
                                                state.replica_group).item()),  # every replica's rows
            "lr": state.schedule.lr,
            "images_per_s": p.epoch_images / max(p.epoch_seconds, 1e-9), "seconds": p.epoch_seconds,
            "data_wait_share": p.data_seconds / max(p.epoch_seconds, 1e-9), "step": p.step}
