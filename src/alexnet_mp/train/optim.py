"""The paper's optimiser and learning-rate schedule (Krizhevsky et al. 2012, sec. 5)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from alexnet_mp.errors import UserError

__all__ = ["PaperSGD", "PlateauSchedule", "build_optimizer", "optimizer_for", "param_groups", "scale_rates"]


class PaperSGD(torch.optim.Optimizer):
    """The update exactly as printed in sec. 5:

        v <- momentum * v - weight_decay * lr * w - lr * grad
        w <- w + v

    torch.optim.SGD keeps ``b <- momentum * b + grad + wd * w`` and steps ``w <- w - lr * b``;
    the two agree at a constant learning rate and differ only just after a drop, where
    this rule keeps the velocity already scaled by the old rate.
    """

    def __init__(self, params: Iterable[nn.Parameter], lr: float, momentum: float = 0.9, weight_decay: float = 5e-4):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "velocity" not in state:
                    state["velocity"] = torch.zeros_like(p)
                v = state["velocity"]
                v.mul_(momentum).add_(p, alpha=-wd * lr).add_(p.grad, alpha=-lr)
                p.add_(v)
        return loss


def param_groups(model: nn.Module, *, weight_decay: float, bias_decay: bool = True,
                 bias_lr_mult: float = 1.0) -> list[dict]:
    """The weights, then the biases, as optimizer groups. Sources differ on biases: the paper
    states one weight decay and one learning rate for every parameter (our default), while
    Caffe's bvlc_alexnet gives biases no decay (``bias_decay=False``) and twice the rate
    (``bias_lr_mult=2``). The schedule multiplies each group's rate by its ``lr_mult``."""
    if bias_lr_mult <= 0:
        raise UserError(f"optim.bias_lr_mult must be positive, got {bias_lr_mult}")
    if bias_decay and bias_lr_mult == 1.0:  # one group, as checkpoints before these options have
        return [{"params": list(model.parameters()), "weight_decay": weight_decay, "lr_mult": 1.0}]
    weights = [p for n, p in model.named_parameters() if not n.endswith("bias")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    return [{"params": weights, "weight_decay": weight_decay, "lr_mult": 1.0},
            {"params": biases, "weight_decay": weight_decay if bias_decay else 0.0, "lr_mult": float(bias_lr_mult)}]


def build_optimizer(params: Iterable[nn.Parameter], *, lr: float, momentum: float, weight_decay: float,
                    rule: str) -> torch.optim.Optimizer:
    if rule == "pytorch":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if rule == "paper":
        return PaperSGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise UserError(f"unknown optim.rule {rule!r}: choose 'pytorch' or 'paper'")


def optimizer_for(model: nn.Module, optim_cfg) -> torch.optim.Optimizer:
    """The optimizer an ``optim`` config (:class:`alexnet_mp.config.train.OptimConfig`, a mapping) asks for."""
    weight_decay = float(optim_cfg["weight_decay"])
    groups = param_groups(model, weight_decay=weight_decay, bias_decay=bool(optim_cfg.get("bias_decay", True)),
                          bias_lr_mult=float(optim_cfg.get("bias_lr_mult", 1.0)))
    return build_optimizer(groups, lr=float(optim_cfg["lr"]), momentum=float(optim_cfg["momentum"]),
                           weight_decay=weight_decay, rule=str(optim_cfg["rule"]))


def scale_rates(optimizer: torch.optim.Optimizer, mult: Callable[[nn.Parameter], float]) -> None:
    """Multiply each parameter's rate by ``mult(p)`` (a scheme's rates for its larger batch): every
    group is split by multiplier, each part keeping the group's options with its ``lr_mult`` (and
    ``lr``) scaled. Before any step (no state to move)."""
    groups = []
    for group in optimizer.param_groups:
        by_mult: dict[float, list] = {}
        for p in group["params"]:
            by_mult.setdefault(float(mult(p)), []).append(p)
        for m, params in by_mult.items():
            groups.append({**group, "params": params, "lr": group["lr"] * m,
                           "lr_mult": group.get("lr_mult", 1.0) * m})
    optimizer.param_groups.clear()
    for group in groups:
        optimizer.add_param_group(group)


class PlateauSchedule:
    """Divide the learning rate by 10 when validation error stops improving (sec. 5),
    at most ``max_drops`` times (the paper dropped it 3 times).

    ``warmup_steps`` > 0 ramps the rate up linearly over the first steps. The paper has
    no warm-up; the short CPU runs use one (see docs/training.md, "Deviations").
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, factor: float = 0.1, patience: int = 2,
                 threshold: float = 1e-3, max_drops: int = 3, warmup_steps: int = 0):
        if not 0 < factor < 1:
            raise UserError(f"schedule.factor must be between 0 and 1, got {factor}")
        self.optimizer, self.factor, self.patience = optimizer, factor, patience
        self.threshold, self.max_drops, self.warmup_steps = threshold, max_drops, warmup_steps
        self.base_lr = optimizer.param_groups[0]["lr"] / optimizer.param_groups[0].get("lr_mult", 1.0)
        self.best = float("inf")
        self.bad_epochs = 0
        self.drops = 0
        self.begin_step(1)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def begin_step(self, step: int) -> None:
        """Set the rate for optimizer step ``step`` (counted from 1)."""
        warm = min(1.0, step / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        for group in self.optimizer.param_groups:
            group["lr"] = self.base_lr * group.get("lr_mult", 1.0) * self.factor**self.drops * warm

    def step(self, val_error: float) -> bool:
        """Record an epoch's validation error; return True when the rate was dropped."""
        if val_error < self.best - self.threshold:
            self.best, self.bad_epochs = val_error, 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs <= self.patience or self.drops >= self.max_drops:
            return False
        self.drops += 1
        self.bad_epochs = 0
        for group in self.optimizer.param_groups:
            group["lr"] *= self.factor
        return True

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_epochs": self.bad_epochs, "drops": self.drops, "base_lr": self.base_lr}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_epochs, self.drops = state["best"], state["bad_epochs"], state["drops"]
        self.base_lr = state["base_lr"]
