"""Fetch a public dataset (CIFAR-10) and write it as image folders training reads (``make data``).

    python launch/get_data.py out=data/cifar10                    # train/ 50,000, test/ 10,000, val/ = test/
    python launch/get_data.py out=data/cifar10-full val=200 format=jpeg
    torchrun --nproc_per_node=2 launch/train.py data=imagefolder data.root=data/cifar10 data.image_size=77
"""

from omegaconf import DictConfig, OmegaConf

import alexnet_mp.config  # noqa: F401 - registers the schema conf/ names
from alexnet_mp.data.fetch import get_data
from alexnet_mp.job.cli import Job, run_hydra


def main(cfg: DictConfig, job: Job) -> None:
    job.run(lambda: get_data(OmegaConf.to_object(cfg)), cfg)


if __name__ == "__main__":
    run_hydra(main, config_name="get_data")
