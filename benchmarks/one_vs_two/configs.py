"""What bench-1gpu-vs-2gpu compares: its configurations, the paper's claim and the targets.

Shared by the orchestration (``bench_1gpu_vs_2gpu.py``), the timing processes
(``timing.py``) and the report (``report.py``).
"""

from __future__ import annotations

NAME = "bench-1gpu-vs-2gpu"
CONFIGS = ("half-1dev", "half-1dev+neighbour", "full-2dev", "full-1dev")
MODEL_OF = {"half-1dev": "half", "half-1dev+neighbour": "half", "full-2dev": "full", "full-1dev": "full"}
DEVICES_OF = {"half-1dev": 1, "half-1dev+neighbour": 1, "full-2dev": 2, "full-1dev": 1}  # devices timed
# half-1dev+neighbour: the half net timed while an identical half-net process runs on the other
# core, so that it and full-2dev both run with every core busy, as two independent GPUs would.
PROCESSES_OF = {**DEVICES_OF, "half-1dev+neighbour": 2}
TRAINED = ("half-1dev", "full-2dev")  # the error part: the paper's two nets
# Sec. 3.2, footnote 2: error of the two-GPU net minus error of the half net (fractions).
PAPER_DELTAS = {"top1_err": -0.017, "top5_err": -0.012}
# (what, which figure, limit): the targets, checked on the measured figures.
TARGETS = (
    ("full-2dev step <= 0.95 x half-1dev+neighbour step", "full-2dev/half-1dev+neighbour", 0.95),
    ("full-2dev step <= 0.53 x full-1dev step", "full-2dev/full-1dev", 0.53),
    # Exposed: bounded from above (timing.exposed_waits and the gloo threads' CPU time).
    ("exposed communication <= 1.5% of the full-2dev step", "exposed_comm_share", 0.015),
)
SUMMARY_KEYS = ("val_top1_err", "val_top5_err", "images_per_s", "seconds", "final_model")
EVAL_KEYS = ("center", "ten_crop", "images")


def scale_configurations(devices: int) -> dict[str, dict]:
    """``devices=N``: the half net as N data-parallel replicas against the full net as N/2
    replicas of the tower pair, on N devices (each a process)."""
    return {f"half-{devices}dev": {"model": "half", "towers": 1, "replicas": devices},
            f"full-{devices}dev": {"model": "full", "towers": 2, "replicas": devices // 2}}
