"""One SGD step (sec. 5, ``train_step``), and what a caller adds to each step of the loop
(``StepHooks``): nothing by default, so the loop runs the plain step and calls nothing else."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
import torch.nn.functional as F
from omegaconf import DictConfig

from alexnet_mp.train.state import RunState

__all__ = ["KillAtStep", "StepHooks", "train_step"]


def train_step(state: RunState, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One SGD step on a batch already on the device; returns the (detached) loss on the device.

    Nothing here waits for the device: the loss is added to ``state.loss_sum``, and a
    non-finite loss is found when it is read (:meth:`RunState.flush_loss`). Under ``scheme=hybrid``
    the loss is the global batch's on every process (the sums over processes divide it back).
    """
    if state.hybrid:  # scheme=hybrid: its passes, backward and update(s) (alexnet_mp.parallel.hybrid)
        state.optimizer.zero_grad(set_to_none=True)
        state.schedule.begin_step(state.position.step + 1)
        with state.autocast():
            loss = state.model.train_step(images, labels, fc_update=state.fc_update, fc_step=state.optimizer.step,
                                          step=state.optimizer.step)
    else:
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


class KillAtStep:
    """``debug.kill_at_step``: SIGKILL this process right after that step (and its checkpoint),
    a crash without warning for the tests of resumption."""

    def __init__(self, step: int):
        self.step = step

    def __call__(self, state: RunState) -> None:
        if state.position.step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "KillAtStep | None":
        """The crash ``cfg.debug`` asks of this rank (``kill_rank``: -1 every rank); none after
        a torchrun restart, so the restarted job can finish. Call after the process group is joined."""
        step, rank = int(cfg.debug.kill_at_step), int(cfg.debug.kill_rank)
        me = dist.get_rank() if dist.is_initialized() else 0
        if not step or rank not in (-1, me) or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
            return None
        return cls(step)


@dataclass(frozen=True)
class StepHooks:
    """What the training loop runs at each step besides its own work.

    ``step`` takes the place of :func:`train_step` (the device check wraps it to watch for
    host syncs); each of ``after_step`` is called with the run state after the step and its
    checkpoint (:class:`KillAtStep`). The defaults add nothing.
    """

    step: Callable[[RunState, torch.Tensor, torch.Tensor], torch.Tensor] = train_step
    after_step: tuple[Callable[[RunState], None], ...] = ()

    def with_config(self, cfg: DictConfig) -> "StepHooks":
        """These hooks, and the crash ``debug.kill_at_step`` asks of this rank, if any."""
        kill = KillAtStep.from_config(cfg)
        return self if kill is None else replace(self, after_step=(*self.after_step, kill))
