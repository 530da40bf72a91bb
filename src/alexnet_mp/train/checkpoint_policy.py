"""Checkpointing policy: what a checkpoint must match to be resumed (``model_signature``,
``check_resumable``), when the run state is saved (``every_steps``, each epoch, a clean
``max_steps`` stop, a stop signal) and that nothing non-finite is ever saved over a good one.
The files themselves are :class:`alexnet_mp.job.checkpoint.CheckpointStore`'s (atomic, per tower,
checksummed)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from alexnet_mp.parallel import ranks
from alexnet_mp.job.checkpoint import CheckpointStore
from alexnet_mp.config.schema import flatten
from alexnet_mp.config.train import RESUME_MAY_CHANGE
from alexnet_mp.errors import UserError
from alexnet_mp.net.arch import arch_options
from alexnet_mp.job.preempt import PreemptionFlag, save_on_stop, worker_deaths_held
from alexnet_mp.train.state import RunState

__all__ = ["Checkpoints", "model_signature", "check_resumable"]


def model_signature(cfg: DictConfig, num_classes: int, crop: int, towers: int) -> dict:
    """What a checkpoint must match to be resumed. Not the replica count: a run resumes on
    any number of replicas of the same towers."""
    return {"name": str(cfg.model.name), "num_classes": num_classes, "input_size": crop,
            **arch_options(cfg.model), "towers": towers}


def check_resumable(saved: dict, now: dict, folder: Path) -> None:
    """What may differ between a run and its resumption is the schema's: the fields marked
    ``resume="may_change"`` (how long the run goes, how it reports, how fast it runs)."""
    before, after = flatten(saved), flatten(now)
    changed = sorted(k for k in set(before) | set(after)
                     if before.get(k) != after.get(k) and not k.startswith(RESUME_MAY_CHANGE))
    if changed:
        listed = ", ".join(f"{k}={before.get(k)!r} here {after.get(k)!r}" for k in changed[:6])
        raise UserError(f"checkpoint {folder} was written with another configuration ({listed}); "
                        f"resume with the same settings or start a new run directory")


class Checkpoints:
    """Saves and restores the run state through :class:`CheckpointStore` (atomic, per tower)."""

    def __init__(self, store: CheckpointStore, signature: dict, cfg: DictConfig):
        self.store, self.signature = store, signature
        self.config = OmegaConf.to_container(cfg, resolve=True)

    def diverged(self, what: str, state: RunState) -> UserError:
        return UserError(f"{what} at epoch {state.position.epoch + 1}, step {state.position.step}; stopped. "
                         f"Last good checkpoint: {self.store.last_good(list(range(self.signature['towers']))) or 'none'} "
                         f"(try a lower optim.lr)")

    def check_loss(self, state: RunState) -> float | None:
        """Read the loss summed on the device since the last read; raise on every rank if it is not finite."""
        loss = state.flush_loss()
        if not ranks.all_ranks(loss is None or math.isfinite(loss)):
            raise self.diverged(f"the loss became {loss}", state)
        return loss

    def save(self, state: RunState, reason: str) -> Path:
        self.check_loss(state)
        finite = all(bool(torch.isfinite(p).all()) for p in state.model.parameters())
        if not ranks.all_ranks(finite):
            raise self.diverged("the weights became non-finite", state)
        p = state.position
        name = f"step-{p.step:08d}-epoch-{p.epoch:04d}-batch-{p.batch_in_epoch:07d}"
        latest = self.store.latest()
        if latest is not None and latest.name == name:
            return latest  # this position is saved already (every_steps fell on the same step)
        with worker_deaths_held():  # a loader worker's death cannot cut the write short (preempt.py)
            return self.store.save(name, state.state_dict(),
                                   {"model": self.signature, "epoch": p.epoch, "batch_in_epoch": p.batch_in_epoch,
                                    "step": p.step, "reason": reason, "config": self.config})

    def resume(self, state: RunState) -> Path | None:
        """Collective: load the newest checkpoint that passes its checks on every rank."""
        latest, skipped = self.store.choose()
        if latest is None:
            if skipped:
                raise UserError(f"no usable checkpoint in {self.store.root} ({'; '.join(skipped)}); "
                                f"start a new run directory or restore a copy")
            return None
        shard, meta = self.store.load(latest, self.signature)
        check_resumable(meta.get("config", {}), self.config, latest)
        state.load_state_dict(shard)
        return latest


    @contextlib.contextmanager
    def saved_on_stop(self, state: RunState, stop: PreemptionFlag) -> Iterator[None]:
        """A stop signal inside: every rank saves the position reached and leaves (cli.py
        prints it, exit 75)."""
        with save_on_stop(stop, lambda: self.save(state, "preempted"), lambda: state.position.step):
            yield
