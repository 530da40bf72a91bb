"""Centre-crop and ten-crop top-1/top-5 error of a trained net, written as JSON.

    python launch/evaluate.py checkpoint=RUN_DIR/model_final.pt [data=imagefolder data.root=PATH] [output=FILE]
"""

from omegaconf import DictConfig

import alexnet_mp.config  # noqa: F401 - registers the schema conf/ names
from alexnet_mp.job.cli import Job, run_hydra
from alexnet_mp.use.evaluate import evaluate_checkpoint


def main(cfg: DictConfig, job: Job) -> None:
    job.run(lambda: evaluate_checkpoint(cfg, job.launcher), cfg)


if __name__ == "__main__":
    run_hydra(main, config_name="evaluate")
