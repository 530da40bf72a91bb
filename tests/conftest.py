import os
import sys
from pathlib import Path

# Triton's interpreter runs the fused LRN's kernels on a machine without a GPU (tests/test_lrn_triton.py).
# It must be chosen before anything imports Triton: Triton reads it once, and under pytest-xdist another
# test module (torch.compile's) may import Triton before that test module is collected.
if not os.path.exists("/dev/nvidia0") and not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("TRITON_INTERPRET", "1")


# The helpers in this folder (distributed.py) must import in spawned processes too.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import alexnet_mp.config  # noqa: E402,F401 - registers the schema that conf/*.yaml names (base_train, ...)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

CONF = Path(__file__).resolve().parents[1] / "conf"


def compose_config(name: str, overrides: list[str]):
    """``conf/<name>.yaml`` composed with ``overrides`` as a launcher composes it, and checked
    against its schema (raises the UserError the launcher would print)."""
    from hydra import compose, initialize_config_dir

    from alexnet_mp import config

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(name, overrides=overrides)
    config.check(cfg)
    return cfg


def config_error(name: str, *overrides: str) -> str:
    """The one line a launcher prints for ``overrides`` of ``conf/<name>.yaml`` (an error in
    Hydra's composition or in the schema's check); fails when there is none."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from alexnet_mp import config
    from alexnet_mp.errors import UserError

    try:
        compose_config(name, list(overrides))
    except UserError as err:
        return str(err)
    except (HydraException, OmegaConfBaseException) as err:
        return config.explain(err)
    raise AssertionError(f"{name} {' '.join(overrides)} composed and passed its checks")
