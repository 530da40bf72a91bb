"""The paper's Figure 1: ReLU against tanh on CIFAR-10; writes OUTPUT_DIR/figure1.{json,md,png}.

    python launch/figure1.py data.root=data/cifar10-full [net=four_layer] [data.train_size=10000] [output_dir=DIR]
    python launch/figure1.py figure1=gpu data.root=PATH       # the GPU run: every training image, 35 epochs, 5 seeds
A row per net (net=layers80sec, the default, or four_layer) and number of training images; rows already in
OUTPUT_DIR/figure1.json stay. Stopped? Run the same command again: the runs already there are kept.
"""

from omegaconf import DictConfig

import alexnet_mp.config  # noqa: F401 - registers the schema conf/ names
from alexnet_mp.job.cli import Job, run_hydra
from alexnet_mp.paper.figure1 import figure1


def main(cfg: DictConfig, job: Job) -> None:
    job.run(lambda: figure1(cfg), cfg)


if __name__ == "__main__":
    run_hydra(main, config_name="figure1")
