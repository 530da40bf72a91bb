"""Mean, spread and paired differences over seeds, for the paper's comparisons.

A paired difference compares two configurations trained from the same seeds (the same
initial draw, data order and masks where the nets share them); its 95% interval is
Student's t over the per-seed differences. Written here rather than taken from SciPy,
which the project does not otherwise need: the t quantiles below are the standard
two-sided 95% table values.
"""

from __future__ import annotations

import math
import statistics

__all__ = ["T975", "t975", "spread", "paired_difference"]

# Student's t, 0.975 quantile, for 1..30 degrees of freedom (standard tables).
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    """The two-sided 95% quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {df}")
    if df <= len(T975):
        return T975[df - 1]
    z = 1.959964  # beyond the table: the first two terms of the Cornish-Fisher expansion
    return z + (z**3 + z) / (4 * df)


def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (``None`` with fewer than two values: one seed has no
    spread, never a 0 that reads as a measurement), min and max."""
    if not values:
        raise ValueError("no values")
    return {"n": len(values), "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else None, "min": min(values), "max": max(values)}


def paired_difference(a: dict[int, float], b: dict[int, float]) -> dict:
    """``a - b`` over the seeds both have: mean, standard deviation and the 95% interval.
    ``resolved`` is True when the interval excludes 0, False when it includes it, and
    ``None`` when there are too few pairs (under two) for an interval."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return {"n": 0, "seeds": [], "mean": None, "std": None, "low": None, "high": None, "resolved": None}
    diffs = [a[s] - b[s] for s in seeds]
    out = {"n": len(diffs), "seeds": seeds, **{k: spread(diffs)[k] for k in ("mean", "std")}}
    if len(diffs) < 2:
        out.update(low=None, high=None, resolved=None)
        return out
    half = t975(len(diffs) - 1) * out["std"] / math.sqrt(len(diffs))
    out.update(low=out["mean"] - half, high=out["mean"] + half)
    out["resolved"] = not (out["low"] <= 0.0 <= out["high"])
    return out
