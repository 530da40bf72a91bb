"""Prepare an image folder once: the paper's preprocessing (sec. 2) into memory-mappable shards.

    python launch/prepare.py data.root=/data/ilsvrc2012 out=/data/ilsvrc2012-256 [format=jpeg] [data.image_size=256]
    torchrun --nproc_per_node=2 launch/train.py data=prepared data.root=/data/ilsvrc2012-256
"""

import hydra
from omegaconf import DictConfig

import alexnet_mp.config  # noqa: F401 - registers the schema conf/ names
from alexnet_mp.job.cli import run_entry_point, run_hydra
from alexnet_mp.data.prepare import prepare


@hydra.main(config_path="../conf", config_name="prepare", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_entry_point(lambda: prepare(cfg), cfg)


if __name__ == "__main__":
    run_hydra(main)
