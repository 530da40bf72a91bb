"""What Figure 1 reads off its curves: where a curve first reaches 25%, which rate trained
fastest, and the ratio of the two neurons' epochs to 25% over seeds (sec. 3.1: "six times").

A curve is a list of running training errors, epoch 1 first. Its epoch at 25% is read two
ways: the first whole epoch whose error is at most the target, and the point where the line
through consecutive epochs' errors meets the target (linear interpolation; before epoch 1
the error is taken as chance, ``1 - 1/classes``). The interpolated reading is the headline:
a net that reaches it early (ReLU, within a few epochs) would otherwise get a ratio rounded
to whole epochs.
"""

from __future__ import annotations

import math

from alexnet_mp.paper.student_t import spread

__all__ = ["epoch_at_target", "fastest_rate", "ratio_summary"]


def epoch_at_target(errors: list[float], target: float = 0.25, chance: float = 0.9) -> dict:
    """``{"first_epoch": int or None, "interpolated": float or None}``: where ``errors`` first
    reach ``target`` (None for both if they never do)."""
    previous = chance
    for epoch, error in enumerate(errors, start=1):
        if error <= target:
            fraction = (previous - target) / (previous - error) if previous > error else 1.0
            return {"first_epoch": epoch, "interpolated": epoch - 1 + min(1.0, max(0.0, fraction))}
        previous = error
    return {"first_epoch": None, "interpolated": None}


def fastest_rate(search: dict[float, dict]) -> float:
    """The rate whose short run ended with the lowest running training error (``search``:
    rate -> a run of :func:`alexnet_mp.paper.figure1.training.train_curve`); a diverged run, or one
    with no finished epoch, ranks last; a tie goes to the smaller rate."""
    def score(rate: float) -> tuple[float, float]:
        run = search[rate]
        last = run["errors"][-1] if run["errors"] and not run["diverged"] else math.inf
        return last, rate

    if not search:
        raise ValueError("no learning rates were tried")
    return min(search, key=score)


def ratio_summary(slow: dict[int, float | None], fast: dict[int, float | None], epochs: int) -> dict:
    """The ratio of epochs to 25%, ``slow / fast`` per seed both ran (tanh over ReLU), with its
    spread (:func:`alexnet_mp.paper.student_t.spread`). A seed where the slow net never crossed within
    ``epochs`` gives a lower bound, ``epochs / fast``, listed apart and flagged ``at_least``."""
    seeds = sorted(s for s in set(slow) & set(fast) if fast[s] is not None)
    exact = {s: slow[s] / fast[s] for s in seeds if slow[s] is not None}
    bounds = {s: epochs / fast[s] for s in seeds if slow[s] is None}
    out: dict = {"seeds": seeds, "per_seed": exact, "lower_bounds": bounds, "at_least": bool(bounds)}
    values = list(exact.values()) + list(bounds.values())
    out["spread"] = spread(values) if values else None
    return out
