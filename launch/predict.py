"""Top-k classes of photographs from a trained net.

    python launch/predict.py --help   (settings: conf/predict.yaml)
"""

import hydra
from omegaconf import DictConfig

import alexnet_mp.config  # noqa: F401 - registers the schema conf/ names
from alexnet_mp.job.cli import run_entry_point, run_hydra
from alexnet_mp.use.predict import predict


@hydra.main(config_path="../conf", config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_entry_point(lambda: predict(cfg), cfg)


if __name__ == "__main__":
    run_hydra(main)
