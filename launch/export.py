"""A trained net as ONNX (or a torch.export program).

    python launch/export.py --help   (settings: conf/export.yaml)
"""

from omegaconf import DictConfig

import alexnet_mp.config  # noqa: F401 - registers the schema conf/ names
from alexnet_mp.job.cli import Job, run_hydra
from alexnet_mp.use.export import export_model


def main(cfg: DictConfig, job: Job) -> None:
    job.run(lambda: export_model(cfg), cfg)


if __name__ == "__main__":
    run_hydra(main, config_name="export")
