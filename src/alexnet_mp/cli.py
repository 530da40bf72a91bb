"""What the launchers in ``launch/`` share: logging per rank and one-line errors."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from omegaconf.errors import MissingMandatoryValue

from alexnet_mp.errors import UserError

__all__ = ["run_entry_point", "hydra_run_dir"]


def hydra_run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def _fail(message: str) -> None:
    print(f"alexnet_mp: error: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    # Leave at once, without tearing down the process group: another rank may still be
    # inside a collective, and destroying an NCCL group then can block. torchrun stops the
    # other ranks when this one exits.
    os._exit(1)


def run_entry_point(fn: Callable[[], object]) -> None:
    """Call ``fn``; a :class:`UserError` becomes one line on stderr and exit status 1."""
    rank = int(os.environ.get("RANK", "0"))
    logging.getLogger("alexnet_mp").setLevel(logging.INFO if rank == 0 else logging.WARNING)
    try:
        fn()
    except UserError as err:
        _fail(str(err))
    except MissingMandatoryValue as err:
        key = getattr(err, "full_key", None) or str(err).splitlines()[0]
        _fail(f"no value for {key}: set it on the command line ({key}=...)")
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
