"""Train AlexNet. One tower per process under torchrun; the whole net under plain python.

    torchrun --nproc_per_node=2 launch/train.py [hydra overrides]
    python launch/train.py model=half
"""

from omegaconf import DictConfig

import alexnet_mp.config  # noqa: F401 - registers the schema conf/ names
from alexnet_mp.job.cli import Job, hydra_run_dir, run_hydra
from alexnet_mp.train import train


def main(cfg: DictConfig, job: Job) -> None:
    job.run(lambda: train(cfg, hydra_run_dir(), launcher=job.launcher), cfg, run_dir=hydra_run_dir())


if __name__ == "__main__":
    run_hydra(main, config_name="config", check_run_dir=True)
