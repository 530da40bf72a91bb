"""The sweep's plan (sec. 3.2-3.4, 4.1, 4.2, 7): the configurations compared with the full
net (each an ablation preset of ``conf/ablation/``), the paper's stated difference for
each, and which (configuration, seed) runs a sweep makes, in what order."""

from __future__ import annotations

from omegaconf import OmegaConf

from alexnet_mp.errors import UserError
from alexnet_mp.job.cli import checkout

__all__ = ["REPO", "CONFIGS", "PAPER_DELTAS", "preset_keys", "plan_runs"]

# The checkout the sweep was started from: its conf/ablation presets and launch/ scripts are the ones run.
REPO = checkout()

# name -> (overrides for launch/train.py, what the paper says of it). "full" is the reference.
CONFIGS = {
    "full": [],
    "half": ["+ablation=half"],
    "no_lrn": ["+ablation=no_lrn"],
    "pool_2x2": ["+ablation=pool_2x2"],
    "no_pca": ["+ablation=no_pca"],
    "no_dropout": ["+ablation=no_dropout"],
    "no_conv4": ["+ablation=no_conv4"],
}
# The paper's error of each configuration minus the full net's, as fractions (None: no number).
PAPER_DELTAS = {
    "half": {"top1_err": 0.017, "top5_err": 0.012, "source": "sec. 3.2: two GPUs 1.7 and 1.2 points better"},
    "no_lrn": {"top1_err": 0.014, "top5_err": 0.012, "source": "sec. 3.3: LRN 1.4 and 1.2 points"},
    "pool_2x2": {"top1_err": 0.004, "top5_err": 0.003, "source": "sec. 3.4: overlap 0.4 and 0.3 points"},
    "no_pca": {"top1_err": 0.01, "top5_err": None, "source": "sec. 4.1: over 1 point of top-1"},
    "no_dropout": {"top1_err": None, "top5_err": None, "source": "sec. 4.2: substantial overfitting, no number"},
    "no_conv4": {"top1_err": 0.02, "top5_err": None, "source": "sec. 7: about 2 points of top-1"},
}


def preset_keys(config: str) -> set[str]:
    """The dotted keys an ablation preset sets (its overrides must win over the data's)."""
    keys: set[str] = set()
    for override in CONFIGS[config]:
        path = REPO / "conf" / "ablation" / f"{override.split('=', 1)[1]}.yaml"
        blob = OmegaConf.to_container(OmegaConf.load(path))
        blob.pop("defaults", None)

        def walk(d: dict, prefix: str = "") -> None:
            for k, v in d.items():
                walk(v, f"{prefix}{k}.") if isinstance(v, dict) else keys.add(f"{prefix}{k}")
        walk(blob)
    return keys


def plan_runs(configs: list[str], seeds: list[int], ablation_seeds: int) -> list[tuple[str, int]]:
    """(configuration, seed) pairs, seed-major so that every finished seed gives pairs early:
    the full and half nets on every seed, the ablations on the first ``ablation_seeds``."""
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise UserError(f"unknown configuration(s) {unknown}: choose from {list(CONFIGS)}")
    if "full" not in configs:
        raise UserError("configs must include full: every difference is taken against it")
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"seeds must list distinct seeds, got {seeds}")
    return [(c, s) for i, s in enumerate(seeds) for c in configs if c in ("full", "half") or i < ablation_seeds]
