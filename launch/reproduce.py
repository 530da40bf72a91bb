"""Re-run the paper's comparisons with seeds and write results/reproduce.{json,md,png}.

    python launch/reproduce.py [data=imagefolder data.root=PATH data.image_size=77] [seeds=[0,1,2]] [epochs=4]
"""

import hydra
from omegaconf import DictConfig

import alexnet_mp.config  # noqa: F401 - registers the schema conf/ names
from alexnet_mp.job.cli import run_entry_point, run_hydra
from alexnet_mp.paper.reproduce import reproduce


@hydra.main(config_path="../conf", config_name="reproduce", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_entry_point(lambda: reproduce(cfg), cfg)


if __name__ == "__main__":
    run_hydra(main)
