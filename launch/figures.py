"""Draw the paper's Figures 3 and 4 from a trained run.

    python launch/figures.py checkpoint=RUN_DIR [train_images=10000] [output_dir=DIR]
"""

from omegaconf import DictConfig

import alexnet_mp.config  # noqa: F401 - registers the schema conf/ names
from alexnet_mp.job.cli import Job, run_hydra
from alexnet_mp.paper.figures34 import draw_figures


def main(cfg: DictConfig, job: Job) -> None:
    job.run(lambda: draw_figures(cfg), cfg)


if __name__ == "__main__":
    run_hydra(main, config_name="figures")
