"""Top-k classes of photographs from a trained net.

    python launch/predict.py --help   (settings: conf/predict.yaml)
"""

from omegaconf import DictConfig

import alexnet_mp.config  # noqa: F401 - registers the schema conf/ names
from alexnet_mp.job.cli import Job, run_hydra
from alexnet_mp.use.predict import predict


def main(cfg: DictConfig, job: Job) -> None:
    job.run(lambda: predict(cfg), cfg)


if __name__ == "__main__":
    run_hydra(main, config_name="predict")
