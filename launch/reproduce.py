"""Re-run the paper's comparisons with seeds and write reproduce.{json,md,png} to outputs/reproduce
(output_dir=results: over the committed report, as make reproduce-publish does).

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
