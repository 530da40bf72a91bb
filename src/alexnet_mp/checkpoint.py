"""Checkpoints that survive a crash at any moment.

Each tower writes its own shard into ``checkpoints/step-NNNNNNNN/``; only when every
shard is on disk does rank 0 atomically point ``checkpoints/latest`` at that folder.
A run killed while saving therefore resumes from the previous complete checkpoint.
Every file is written to a temporary name and renamed, and loaded with
``weights_only=True``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from alexnet_mp.comm import barrier
from alexnet_mp.errors import UserError
from alexnet_mp.io import atomic_save, atomic_write, fsync_dir
from alexnet_mp.model import ARCH_DEFAULTS

__all__ = ["atomic_save", "atomic_write_text", "CheckpointStore", "fsync_dir", "load_file"]


def atomic_write_text(path: Path, text: str) -> None:
    """Kept for callers of the old name: :func:`alexnet_mp.io.atomic_write`."""
    atomic_write(path, text)


def load_file(path: Path) -> dict:
    """Load a file this project wrote, with ``weights_only=True``; one-line errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file
        raise UserError(f"cannot read checkpoint {path}: {type(err).__name__}: {str(err).splitlines()[0]}") from None


class CheckpointStore:
    """The checkpoints of one run directory, shared by every rank."""

    def __init__(self, run_dir: Path, tower: int, *, writer: bool = True, main: bool = True, keep: int = 2):
        """``tower``: the shard this process loads. ``writer``: it writes that shard (replica 0
        of each tower). ``main``: it publishes the checkpoint (one process of the run)."""
        self.root = Path(run_dir) / "checkpoints"
        self.tower, self.writer, self.main, self.keep = tower, writer, main, max(1, keep)

    def latest(self) -> Path | None:
        pointer = self.root / "latest"
        if not pointer.is_file():
            return None
        folder = self.root / pointer.read_text().strip()
        return folder if (folder / "meta.json").is_file() else None

    def save(self, name: str, shard: dict, meta: dict) -> Path:
        """Collective: each tower's writer writes its shard, then the main process publishes it.

        ``name`` must sort after every earlier checkpoint's and name a new position: a
        published checkpoint is never written into again.
        """
        folder = self.root / name
        if folder == self.latest():
            raise RuntimeError(f"refusing to overwrite the published checkpoint {folder}")
        folder.mkdir(parents=True, exist_ok=True)
        if self.writer:  # one shard per tower, not per process: every replica holds the same weights
            atomic_save(shard, folder / f"tower{self.tower}.pt")
        barrier()
        if self.main:
            atomic_write_text(folder / "meta.json", json.dumps(meta, indent=1))
            atomic_write_text(self.root / "latest", folder.name)
            self._prune(keep_also=folder)
        barrier()
        return folder

    def _prune(self, keep_also: Path) -> None:
        folders = sorted(p for p in self.root.glob("step-*") if p.is_dir())
        for old in folders[: -self.keep]:
            if old != keep_also:
                shutil.rmtree(old, ignore_errors=True)

    def load(self, folder: Path, expect: dict) -> tuple[dict, dict]:
        """This rank's shard and the checkpoint's metadata, after checking it fits this run."""
        meta = json.loads((folder / "meta.json").read_text())
        written_for = meta.get("model", {})
        # Checkpoints from before the ablation switches lack their keys: they had the paper's values.
        # (This lets their model files be evaluated; resuming also compares the whole saved config.)
        written_for = {**{k: v for k, v in ARCH_DEFAULTS.items() if k in expect}, **written_for}
        if written_for != expect:
            diffs = ", ".join(f"{k}={written_for.get(k)!r} here {expect.get(k)!r}" for k in sorted(set(written_for) | set(expect))
                              if written_for.get(k) != expect.get(k))
            raise UserError(f"checkpoint {folder} was written for another configuration ({diffs})")
        return load_file(folder / f"tower{self.tower}.pt"), meta
