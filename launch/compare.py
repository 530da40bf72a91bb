"""The config keys and final metrics that differ between two runs.

    python launch/compare.py --help   (settings: conf/compare.yaml)
"""

import hydra
from omegaconf import DictConfig

from alexnet_mp.cli import run_entry_point
from alexnet_mp.compare import compare_runs


@hydra.main(config_path="../conf", config_name="compare", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_entry_point(lambda: compare_runs(cfg))


if __name__ == "__main__":
    main()
