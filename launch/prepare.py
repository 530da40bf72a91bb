"""Prepare an image folder once: the paper's preprocessing (sec. 2) into memory-mappable shards.

    python launch/prepare.py data.root=/data/ilsvrc2012 out=/data/ilsvrc2012-256 [format=jpeg] [data.image_size=256]
    torchrun --nproc_per_node=2 launch/train.py data=prepared data.root=/data/ilsvrc2012-256
"""

from omegaconf import DictConfig

import alexnet_mp.config  # noqa: F401 - registers the schema conf/ names
from alexnet_mp.job.cli import Job, run_hydra
from alexnet_mp.data.prepare import prepare


def main(cfg: DictConfig, job: Job) -> None:
    job.run(lambda: prepare(cfg), cfg)


if __name__ == "__main__":
    run_hydra(main, config_name="prepare")
