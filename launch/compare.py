"""The config keys and final metrics that differ between two runs.

    python launch/compare.py RUN_A RUN_B      (or a=RUN_A b=RUN_B; settings: conf/compare.yaml)
"""

import sys

import hydra
from omegaconf import DictConfig

import alexnet_mp.config  # noqa: F401 - registers the schema conf/ names
from alexnet_mp.job.cli import run_entry_point, run_hydra
from alexnet_mp.use.compare import compare_runs


@hydra.main(config_path="../conf", config_name="compare", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_entry_point(lambda: compare_runs(cfg), cfg)


if __name__ == "__main__":
    # Two plain paths as the two runs (Hydra itself takes only key=value overrides).
    plain = [i for i, arg in enumerate(sys.argv[1:], 1) if "=" not in arg and not arg.startswith("-")
             and not sys.argv[i - 1].startswith("-")]  # not the value of an option (--cfg job)
    for name, i in zip("ab", plain[:2]):
        sys.argv[i] = f"{name}={sys.argv[i]}"
    run_hydra(main)
