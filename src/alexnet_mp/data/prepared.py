"""Reading a prepared dataset: the paper's preprocessing done once, ahead of training (Krizhevsky et al. 2012, sec. 2).

Sec. 2: every image is rescaled so that its shorter side is 256 and the central
256 x 256 patch is kept. Reading ImageNet's JPEGs of every size and resizing them again
in every epoch costs more CPU than two towers can be fed with; the paper stored the
256 px images instead. ``launch/prepare.py`` (:mod:`alexnet_mp.data.prepare`) does that
work once; training reads the result with ``data=prepared`` (:class:`PreparedImages`).
This module owns the format: the file names, the manifest and the reader.

On disk (``S``: image size, ``NNNNN``: shard index)::

    OUT/prepare.json                 settings and source fingerprint, written first
    OUT/<split>/images-NNNNN.npy     raw: uint8 [n, 3, S, S]
    OUT/<split>/jpeg-NNNNN.bin       jpeg: the shard's JPEG files, concatenated
    OUT/<split>/jpeg-NNNNN.offsets.npy   jpeg: int64 [n + 1] byte offsets into the .bin
    OUT/<split>/shard-NNNNN.pt       the shard's record (labels, skipped files, partial
                                     statistics), written last: the shard's "done" marker
    OUT/<split>/labels.npy           int64 labels of the whole split, in order
    OUT/stats.pt                     mean image and RGB eigen-decomposition (weights_only)
    OUT/manifest.json                written LAST: the dataset is complete only with it
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from alexnet_mp.data.images import check_same_classes, decode
from alexnet_mp.data.dataset_stats import DatasetStats
from alexnet_mp.errors import UserError

__all__ = ["FORMATS", "FORMAT_VERSION", "KIND", "LABELS_NPY", "MANIFEST_JSON", "PREPARE_JSON", "PreparedImages",
           "SPLITS", "STATS_PT", "data_names", "open_prepared", "read_json", "read_manifest", "record_name"]

FORMAT_VERSION = 1
SPLITS = ("train", "val")
FORMATS = ("raw", "jpeg")
PREPARE_JSON, MANIFEST_JSON, STATS_PT, LABELS_NPY = "prepare.json", "manifest.json", "stats.pt", "labels.npy"
KIND = "alexnet_mp prepared dataset"


def _shard_stem(index: int) -> str:
    return f"{index:05d}"


def data_names(fmt: str, index: int) -> list[str]:
    """The data files of shard ``index`` in format ``fmt`` (``raw`` or ``jpeg``)."""
    stem = _shard_stem(index)
    return [f"images-{stem}.npy"] if fmt == "raw" else [f"jpeg-{stem}.bin", f"jpeg-{stem}.offsets.npy"]


def record_name(index: int) -> str:
    """The record of shard ``index``, written last: the shard is done only with it."""
    return f"shard-{_shard_stem(index)}.pt"


def read_json(path: Path, what: str) -> dict:
    """The JSON object in ``path``; a one-line error naming ``what`` it should have been."""
    try:
        obj = json.loads(path.read_text())
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
        return obj
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path} ({what}): {type(err).__name__}: {str(err).splitlines()[0]}") from None


def _looks_like_image_tree(root: Path) -> bool:
    train = root / "train"
    return train.is_dir() and any(d.is_dir() and not d.name.startswith(".") for d in train.iterdir())


def read_manifest(root: Path) -> dict:
    """The manifest of the prepared dataset at ``root``; one-line errors for anything else."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"prepared dataset {root} does not exist")
    if not root.is_dir():
        raise UserError(f"prepared dataset {root} is not a folder")
    path = root / MANIFEST_JSON
    if not path.is_file():
        if (root / PREPARE_JSON).is_file():
            raise UserError(f"{root} is an incomplete prepared dataset (interrupted prepare?): re-run "
                            f"launch/prepare.py with the same settings to finish it{_same_command(root)}")
        if _looks_like_image_tree(root):
            raise UserError(f"{root} is a raw image folder, not a prepared dataset: run `python launch/prepare.py "
                            f"data.root={root} out=PREPARED` first, then use data=prepared data.root=PREPARED "
                            f"(or read it as it is with data=imagefolder)")
        raise UserError(f"{root} is not a prepared dataset (no {MANIFEST_JSON}); make one with "
                        f"`python launch/prepare.py data.root=IMAGES out={root}`")
    manifest = read_json(path, "the manifest of a prepared dataset")
    if manifest.get("kind") != KIND or manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path} is not a version-{FORMAT_VERSION} manifest of an alexnet_mp prepared dataset "
                        f"(kind {manifest.get('kind')!r}, version {manifest.get('format_version')!r}); "
                        f"prepare it again with this version of launch/prepare.py")
    return manifest


def _same_command(root: Path) -> str:
    try:
        plan = json.loads((root / PREPARE_JSON).read_text())
        s = plan["settings"]
        extra = f" format=jpeg jpeg_quality={s['jpeg_quality']}" if s["format"] == "jpeg" else ""
        return (f" (python launch/prepare.py data.root={plan['source']['root']} out={root} "
                f"data.image_size={s['image_size']}{extra})")
    except (OSError, ValueError, KeyError, TypeError):
        return ""


class PreparedImages(Dataset):
    """One split of a prepared dataset: ``(uint8 [3, S, S], label)`` items (written by
    :func:`alexnet_mp.data.prepare.prepare_dataset`).

    ``read_batch`` reads a whole batch at once (one fancy index per shard for raw shards;
    a JPEG decode per image for jpeg ones). Shards are memory-mapped lazily, in each
    process on its first read, and the maps are never pickled, so DataLoader workers,
    forked or spawned, open their own.
    """

    def __init__(self, root: str | Path, split: str, image_size: int | None = None):
        self.root, self.split = Path(root).expanduser(), split
        manifest = read_manifest(self.root)
        if split not in manifest["splits"]:
            raise UserError(f"prepared dataset {self.root} has no split {split!r} (it has "
                            f"{', '.join(manifest['splits'])})")
        self.image_size = int(manifest["image_size"])
        if image_size is not None and int(image_size) != self.image_size:
            raise UserError(f"prepared dataset {self.root} holds {self.image_size}px images but data.image_size="
                            f"{int(image_size)}; set data.image_size={self.image_size}, or prepare again with "
                            f"data.image_size={int(image_size)} into another out=")
        self.format = manifest["format"]
        self.classes = list(manifest["classes"])
        self.num_classes = len(self.classes)
        info = manifest["splits"][split]
        self.skipped: list[str] = list(info["skipped"])
        self.created = manifest["created"]
        self._shards = [list(s["files"]) for s in info["shards"]]
        counts = [int(s["count"]) for s in info["shards"]]
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        folder = self.root / split
        for names in self._shards + [[info["labels"]]]:
            for name in names:
                if not (folder / name).is_file():
                    raise UserError(f"prepared dataset {self.root} is missing {split}/{name}; "
                                    f"prepare it again (launch/prepare.py) into a new out=")
        self._check_sizes(folder, info["shards"])
        labels = folder / info["labels"]
        try:
            self._labels = np.load(labels, allow_pickle=False)
        except (OSError, ValueError) as err:  # truncated ("EOF: reading array header") or not a .npy
            raise UserError(f"cannot read {labels} of prepared dataset {self.root} ({str(err).splitlines()[0]}); "
                            f"prepare it again into a new out=") from None
        if self._labels.shape != (int(self._starts[-1]),):
            raise UserError(f"{folder / info['labels']} holds {self._labels.shape[0]} labels, the manifest "
                            f"{int(self._starts[-1])} images; prepare it again into a new out=")
        self._maps: dict[int, Any] = {}
        self._pid = os.getpid()

    def _check_sizes(self, folder: Path, shards: list[dict]) -> None:
        """Each shard's files hold the bytes the manifest records (a truncated or replaced one
        is refused here, at open, not by a loader worker part-way through an epoch)."""
        for shard in shards:
            if "bytes" not in shard:
                continue
            sizes = {name: (folder / name).stat().st_size for name in shard["files"]}
            if sum(sizes.values()) != int(shard["bytes"]):
                name = max(sizes, key=sizes.get)  # the data file; beside it a jpeg shard has its small offsets
                raise UserError(f"{folder / name} of prepared dataset {self.root} is damaged: the shard's files hold "
                                f"{sum(sizes.values())} bytes, the manifest says {int(shard['bytes'])} (truncated or "
                                f"replaced); prepare it again into a new out=")

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_maps"] = {}  # memory maps stay in the process that opened them
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

    def fingerprint(self) -> str:
        return (f"prepared|{self.format}|{self.split}|{self.num_classes}|{len(self)}|{self.image_size}|"
                f"{self.created}")

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        images, labels = self.read_batch([index])
        return images[0], int(labels[0])

    def _shard(self, k: int) -> Any:
        if self._pid != os.getpid():  # forked after opening: open our own
            self._maps, self._pid = {}, os.getpid()
        opened = self._maps.get(k)
        if opened is None:
            folder = self.root / self.split
            names = self._shards[k]
            try:
                if self.format == "raw":
                    opened = np.load(folder / names[0], mmap_mode="r")
                    expect = (int(self._starts[k + 1] - self._starts[k]), 3, self.image_size, self.image_size)
                    if opened.shape != expect or opened.dtype != np.uint8:
                        raise ValueError(f"shape {opened.shape} {opened.dtype}, expected {expect} uint8")
                else:
                    offsets = np.load(folder / names[1], allow_pickle=False)
                    opened = (np.memmap(folder / names[0], dtype=np.uint8, mode="r"), offsets)
            except (OSError, ValueError) as err:
                raise UserError(f"cannot read shard {folder / names[0]} of prepared dataset {self.root}: "
                                f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
            self._maps[k] = opened
        return opened

    def read_batch(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        """(uint8 images [n, 3, S, S], int64 labels [n]) of ``indices``, in that order."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n, size = idx.size, self.image_size
        if n and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"indices out of range for {len(self)} images")
        out = np.empty((n, 3, size, size), dtype=np.uint8)
        shard = np.searchsorted(self._starts, idx, side="right") - 1
        local = idx - self._starts[shard]
        order = np.lexsort((local, shard))  # by shard, then position in it: sequential reads
        groups = np.split(order, np.flatnonzero(np.diff(shard[order])) + 1) if n else []
        for group in groups:
            k, rows = int(shard[group[0]]), local[group]
            if self.format == "raw":
                out[group] = self._shard(k)[rows]
            else:
                blob, offsets = self._shard(k)
                for pos, row in zip(group, rows):
                    img = decode(blob[offsets[row]:offsets[row + 1]].tobytes())
                    if img.shape != (3, size, size):
                        raise UserError(f"image {row} of shard {self._shards[k][0]} of {self.root} decodes to "
                                        f"{tuple(img.shape)}, not (3, {size}, {size})")
                    out[pos] = img.numpy()
        return torch.from_numpy(out), torch.from_numpy(self._labels[idx].astype(np.int64, copy=False))

    def stats(self) -> DatasetStats:
        """Mean image and RGB eigen-decomposition over the whole training set (``stats.pt``)."""
        path = self.root / STATS_PT
        if not path.is_file():
            raise UserError(f"prepared dataset {self.root} has no {STATS_PT}; prepare it again into a new out=")
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            stats = DatasetStats(blob["mean_image"], blob["eigvals"], blob["eigvecs"])
        except Exception as err:
            raise UserError(f"cannot read {path}: {type(err).__name__}: {str(err).splitlines()[0]}") from None
        if tuple(stats.mean_image.shape) != (3, self.image_size, self.image_size):
            raise UserError(f"{path} holds a mean image of shape {tuple(stats.mean_image.shape)}, not "
                            f"(3, {self.image_size}, {self.image_size}); prepare it again into a new out=")
        return stats


def open_prepared(root: str | Path, image_size: int | None) -> tuple[PreparedImages, PreparedImages]:
    """Both splits of the prepared dataset at ``root``, checked to have the same classes."""
    train = PreparedImages(root, "train", image_size)
    val = PreparedImages(root, "val", image_size)
    check_same_classes(train, val)
    return train, val
