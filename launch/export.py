"""A trained net as ONNX (or a torch.export program).

    python launch/export.py --help   (settings: conf/export.yaml)
"""

import hydra
from omegaconf import DictConfig

import alexnet_mp.config  # noqa: F401 - registers the schema conf/ names
from alexnet_mp.job.cli import run_entry_point, run_hydra
from alexnet_mp.use.export import export_model


@hydra.main(config_path="../conf", config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_entry_point(lambda: export_model(cfg), cfg)


if __name__ == "__main__":
    run_hydra(main)
