"""The config keys and final metrics that differ between two runs.

    python launch/compare.py RUN_A RUN_B      (or a=RUN_A b=RUN_B; settings: conf/compare.yaml)
"""

import sys

from omegaconf import DictConfig

import alexnet_mp.config  # noqa: F401 - registers the schema conf/ names
from alexnet_mp.job.cli import Job, run_hydra
from alexnet_mp.use.compare import compare_runs


def main(cfg: DictConfig, job: Job) -> None:
    job.run(lambda: compare_runs(cfg), cfg)


if __name__ == "__main__":
    # Two plain paths as the two runs (Hydra itself takes only key=value overrides).
    plain = [i for i, arg in enumerate(sys.argv[1:], 1) if "=" not in arg and not arg.startswith("-")
             and not sys.argv[i - 1].startswith("-")]  # not the value of an option (--cfg job)
    for name, i in zip("ab", plain[:2]):
        sys.argv[i] = f"{name}={sys.argv[i]}"
    run_hydra(main, config_name="compare")
