"""The paper's Figure 2 drawn from the architecture table, and one training step of the two
towers traced (docs/parallelism.md, "Figure 2 and one step in time").

    python launch/figure2.py output_dir=DIR [+ablation=no_conv4] [image_size=N] [batch_size=B]
"""

from omegaconf import DictConfig

import alexnet_mp.config  # noqa: F401 - registers the schema conf/ names
from alexnet_mp.job.cli import Job, run_hydra
from alexnet_mp.paper.figure2 import make_figure2


def main(cfg: DictConfig, job: Job) -> None:
    job.run(lambda: make_figure2(cfg), cfg)


if __name__ == "__main__":
    run_hydra(main, config_name="figure2")
