"""Where a result came from: the code, the libraries, the devices and the configuration.

Every ``summary.json``, ``model_final.pt``, exported model, benchmark result and sweep
report carries :func:`record`'s dictionary under ``"provenance"``, so two results can be
told apart (``launch/compare.py RUN_A RUN_B``) without the machine that made them:

- ``git``: the commit and whether the tracked files differed from it (``dirty``);
- ``versions``: Python, torch, torchvision, CUDA, cuDNN and NCCL (None where absent);
- ``devices``: the names of the visible GPUs, or the CPU's;
- ``config_sha256``: a hash of the resolved configuration, keys sorted.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["record", "config_hash", "git_state", "last_commit", "versions", "device_names"]

REPO = Path(__file__).resolve().parents[3]


def _git(*args: str) -> str | None:
    """``git args`` in this checkout: its output, or None where git or the checkout is missing."""
    try:  # --no-optional-locks: a status taken beside a running job does not fight it for the index
        out = subprocess.run(["git", "--no-optional-locks", "-C", str(REPO), *args], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def git_state() -> dict[str, Any]:
    """The checkout's commit and dirty flag; None for both outside a git checkout."""
    commit = _git("rev-parse", "HEAD")
    # Untracked files (run outputs, caches) do not change the code that ran: tracked files only.
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def last_commit(path: str | Path) -> dict[str, str] | None:
    """The commit that last changed ``path`` in this checkout and its date (``commit``, ``date``),
    None where the file is untracked or there is no checkout."""
    out = (_git("log", "-1", "--format=%H %cI", "--", str(Path(path).resolve())) or "").split()
    return {"commit": out[0], "date": out[1]} if len(out) == 2 else None


def versions() -> dict[str, Any]:
    import torch
    import torchvision

    cuda = torch.version.cuda
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    nccl = None
    if cuda and torch.distributed.is_available() and torch.distributed.is_nccl_available():
        try:
            v = torch.cuda.nccl.version()
            nccl = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
        except (RuntimeError, AttributeError):  # a build with NCCL compiled in but no library to load
            nccl = None
    return {"python": platform.python_version(), "torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "cuda": None if cuda is None else str(cuda), "cudnn": cudnn, "nccl": nccl}


def device_names() -> list[str]:
    import torch

    if torch.cuda.is_available():
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return [f"cpu: {platform.processor() or platform.machine()}"]


def config_hash(cfg: Any) -> str | None:
    """sha256 of the resolved configuration as sorted JSON (a DictConfig, a dict or None)."""
    if cfg is None:
        return None
    from omegaconf import DictConfig, OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()


def record(cfg: Any = None) -> dict[str, Any]:
    """The provenance of whatever is written now, under the configuration ``cfg``."""
    return {"git": git_state(), "versions": versions(), "devices": device_names(), "config_sha256": config_hash(cfg)}
