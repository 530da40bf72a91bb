"""Re-run the paper's comparisons with seeds and write results/reproduce.{json,md,png}.

    python launch/reproduce.py [data=imagefolder data.root=PATH data.image_size=77] [seeds=[0,1,2]] [epochs=4]
"""

from omegaconf import DictConfig

import alexnet_mp.config  # noqa: F401 - registers the schema conf/ names
from alexnet_mp.job.cli import Job, run_hydra
from alexnet_mp.paper.reproduce import reproduce


def main(cfg: DictConfig, job: Job) -> None:
    job.run(lambda: reproduce(cfg), cfg)


if __name__ == "__main__":
    run_hydra(main, config_name="reproduce")
