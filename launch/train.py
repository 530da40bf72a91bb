"""Train AlexNet. One tower per process under torchrun; the whole net under plain python.

    torchrun --nproc_per_node=2 launch/train.py [hydra overrides]
    python launch/train.py model=half
"""

import sys

import hydra
from omegaconf import DictConfig

import alexnet_mp.config  # noqa: F401 - registers the schema conf/ names
from alexnet_mp.job.cli import check_run_dir_override, hydra_run_dir, run_entry_point, run_hydra
from alexnet_mp.train import train


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_entry_point(lambda: train(cfg, hydra_run_dir()), cfg, run_dir=hydra_run_dir())


if __name__ == "__main__":
    check_run_dir_override(sys.argv[1:])
    run_hydra(main)
