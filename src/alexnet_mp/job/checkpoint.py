"""Checkpoints that survive a crash at any moment, and are checked before they are used.

Each tower writes its own shard into ``checkpoints/step-NNNNNNNN/``; the shards' sizes and
sha256 sums are gathered to rank 0, which writes them into ``meta.json`` and only then
atomically points ``checkpoints/latest`` at that folder. A run killed while saving therefore
resumes from the previous complete checkpoint. Every file is written to a temporary name
and renamed (:mod:`alexnet_mp.io`), and loaded with ``weights_only=True``.

On resume every rank checks its shard against ``meta.json`` (size and sha256) before its
contents are used, and all ranks agree with a collective on the newest checkpoint that
passes on every rank: a truncated, corrupt, missing or foreign shard, a ``latest`` naming a
missing folder or a ``meta.json`` that does not match is skipped with one line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import torch

from alexnet_mp.parallel.ranks import all_ranks, barrier, broadcast_object, gather_object
from alexnet_mp.errors import UserError
from alexnet_mp.io import DiskFull, atomic_write, torch_bytes
from alexnet_mp.net.arch import ARCH_DEFAULTS

__all__ = ["CheckpointStore", "load_file", "file_record"]

log = logging.getLogger("alexnet_mp")


def load_file(path: Path) -> dict:
    """Load a file this project wrote, with ``weights_only=True``; one-line errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file
        raise UserError(f"cannot read checkpoint {path}: {type(err).__name__}: {str(err).splitlines()[0]}") from None


def file_record(payload: bytes) -> dict:
    return {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


class CheckpointStore:
    """The checkpoints of one run directory, shared by every rank."""

    def __init__(self, run_dir: Path, tower: int, *, writer: bool = True, main: bool = True, keep: int = 2):
        """``tower``: the shard this process loads. ``writer``: it writes that shard (replica 0
        of each tower). ``main``: it publishes the checkpoint (one process of the run)."""
        self.root = Path(run_dir) / "checkpoints"
        self.tower, self.writer, self.main, self.keep = tower, writer, main, max(1, keep)

    def _pointed(self) -> str | None:
        """The folder name ``latest`` holds; None when there is none or it holds no plain name
        (empty, NUL-filled or not UTF-8: a disk that lost the write)."""
        try:
            name = (self.root / "latest").read_bytes().decode("utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return name if name and "\0" not in name and "/" not in name and name not in (".", "..") else None

    def latest(self) -> Path | None:
        """The folder ``latest`` names, when it has a ``meta.json`` (no contents checked)."""
        name = self._pointed()
        if name is None:
            return None
        folder = self.root / name
        return folder if (folder / "meta.json").is_file() else None

    def has_any(self) -> bool:
        return (self.root / "latest").is_file() or any(self.root.glob("step-*"))

    def save(self, name: str, shard: dict, meta: dict) -> Path:
        """Collective: each tower's writer writes its shard, then the main process publishes it.

        ``name`` must sort after every earlier checkpoint's and name a new position: a
        published checkpoint is never written into again. A full disk on any writer stops
        every rank with that writer's one line, the half-written folder removed.
        """
        folder = self.root / name
        if folder == self.latest():
            raise RuntimeError(f"refusing to overwrite the published checkpoint {folder}")
        folder.mkdir(parents=True, exist_ok=True)
        mine: tuple = (self.tower, None, None)
        if self.writer:  # one shard per tower, not per process: every replica holds the same weights
            payload = torch_bytes(shard)
            try:
                atomic_write(folder / f"tower{self.tower}.pt", payload)
                mine = (self.tower, file_record(payload), None)
            except DiskFull as err:
                mine = (self.tower, None, str(err))
            del payload
        gathered = gather_object(mine)
        failed = [err for _, _, err in gathered if err]
        if failed:
            if self.main:
                shutil.rmtree(folder, ignore_errors=True)
            raise DiskFull(failed[0])
        meta = {**meta, "shards": {f"tower{t}.pt": rec for t, rec, _ in gathered if rec is not None}}
        if self.main:
            try:
                atomic_write(folder / "meta.json", json.dumps(meta, indent=1))
                atomic_write(self.root / "latest", folder.name)
            except DiskFull:
                if self.latest() != folder:  # unpublished: its shards only hold the space
                    shutil.rmtree(folder, ignore_errors=True)
                raise
            self._prune(keep_also=folder)
        barrier()
        return folder

    def _prune(self, keep_also: Path) -> None:
        """Keep the newest ``keep`` complete checkpoints (with ``meta.json``); an unfinished
        one (a save cut short) is never counted as kept. Unfinished folders older than the one
        just published are removed: the run is past them and they cannot be resumed."""
        folders = sorted(p for p in self.root.glob("step-*") if p.is_dir())
        complete = [p for p in folders if (p / "meta.json").is_file()]
        for old in complete[: -self.keep]:
            if old != keep_also:
                shutil.rmtree(old, ignore_errors=True)
        for old in folders:
            if old.name < keep_also.name and old not in complete:
                shutil.rmtree(old, ignore_errors=True)

    def candidates(self) -> list[Path]:
        """Every checkpoint folder, newest first (main process's view, given to every rank)."""
        found = None
        if self.main:
            pointer, name = self.root / "latest", self._pointed()
            if pointer.is_file() and name is None:
                log.warning("checkpoints/latest holds no folder name (empty or garbled): skipped")
            elif name is not None and not (self.root / name).is_dir():
                log.warning("checkpoints/latest names %s, which is not there: skipped", name)
            found = [str(p) for p in sorted(self.root.glob("step-*"), reverse=True) if p.is_dir()]
        return [Path(p) for p in broadcast_object(found)]

    def problem(self, folder: Path, towers: list[int]) -> str | None:
        """Why ``folder`` cannot be used by this rank (its ``towers``' shards), or None."""
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except FileNotFoundError:
            return "no meta.json (a save that did not finish)"
        except (OSError, ValueError) as err:
            return f"meta.json unreadable ({type(err).__name__})"
        records = meta.get("shards")
        for tower in towers:
            shard = folder / f"tower{tower}.pt"
            if not shard.is_file():
                return f"{shard.name} is missing"
            if records is None:
                continue  # written before checksums: the load below is the check
            rec = records.get(shard.name)
            if rec is None:
                return f"meta.json has no record of {shard.name}"
            size = shard.stat().st_size
            if size != rec["bytes"]:
                return f"{shard.name} has {size} bytes, meta.json says {rec['bytes']} (truncated or replaced)"
            if _file_sha256(shard) != rec["sha256"]:
                return f"{shard.name} does not match its sha256 in meta.json (corrupt or from another save)"
        return None

    def last_good(self, towers: list[int]) -> Path | None:
        """The newest checkpoint whose listed shards pass their checks (this process's view)."""
        for folder in sorted((p for p in self.root.glob("step-*") if p.is_dir()), reverse=True):
            if self.problem(folder, towers) is None:
                return folder
        return None

    def choose(self) -> tuple[Path | None, list[str]]:
        """Collective: the newest checkpoint every rank can use, and the lines naming those skipped."""
        skipped = []
        for folder in self.candidates():
            why = self.problem(folder, [self.tower])
            if all_ranks(why is None):
                return folder, skipped
            whys = [w for w in gather_object(why) if w]
            skipped.append(f"{folder.name}: {whys[0]}")
            if self.main:
                log.warning("skipping checkpoint %s: %s", folder, whys[0])
        return None, skipped

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
