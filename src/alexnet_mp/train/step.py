"""One SGD step (sec. 5, ``train_step``), and what a caller adds to each step of the loop
(``StepHooks``): nothing by default, so the loop runs the plain step and calls nothing else."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from alexnet_mp.train.state import RunState

__all__ = ["StepHooks", "train_step"]


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


@dataclass(frozen=True)
class StepHooks:
    """What a caller adds to each step of the training loop; the defaults add nothing.

    ``around_step``: a context each :func:`train_step` runs in (the device check watches it for
    host synchronisation, ``benchmarks/gpu_check/train_watched.py``); ``after_step``: each called
    with the run state after the step and its checkpoint (the tests' crash at a chosen step,
    ``tests/train_killed.py``). ``launch/train.py`` passes none.
    """

    around_step: Callable[[], AbstractContextManager] = nullcontext
    after_step: tuple[Callable[[RunState], None], ...] = ()
