"""Centre-crop and ten-crop top-1/top-5 error of a trained net, written as JSON.

    python launch/evaluate.py checkpoint=RUN_DIR/model_final.pt [data=imagefolder data.root=PATH] [output=FILE]
"""

import hydra
from omegaconf import DictConfig

from alexnet_mp.cli import run_entry_point
from alexnet_mp.evaluate import evaluate_checkpoint


@hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_entry_point(lambda: evaluate_checkpoint(cfg))


if __name__ == "__main__":
    main()
