"""A trained net as ONNX (or a torch.export program).

    python launch/export.py --help   (settings: conf/export.yaml)
"""

import hydra
from omegaconf import DictConfig

from alexnet_mp.cli import run_entry_point
from alexnet_mp.export import export_model


@hydra.main(config_path="../conf", config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_entry_point(lambda: export_model(cfg))


if __name__ == "__main__":
    main()
