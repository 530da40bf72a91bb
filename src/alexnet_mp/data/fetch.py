"""A public dataset fetched and written in the layout training reads (``launch/get_data.py``,
``make data``): ``OUT/{train,val,test}/<class>/<index>.png``.

CIFAR-10 comes as the official archive (``cifar-10-python.tar.gz``: pickled batches
``data_batch_1`` to ``data_batch_5`` and ``test_batch``, class names in ``batches.meta``, all
inside ``cifar-10-batches-py/``). torchvision's downloader fetches it over http(s) (an archive
already in OUT is used when its md5 matches) and its md5 is checked before anything is unpickled: pickle runs code,
so an archive is read only when it is the one the checksum names.

``val/`` is the user's choice: ``val=test`` links it to ``test/`` (the official 10,000), or
``val=N`` holds N images per class out of the 50,000 training images, drawn with ``seed``;
``train_per_class=M`` keeps M of the rest per class (the committed results' subsets,
docs/data.md). A file is named by its index in its official split, so any subset can be
traced back to the archive. Nothing is written into OUT until every image is: the splits are
made in a hidden folder and renamed into place at the end.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import pickle
import shutil
import tarfile
import urllib.error
from pathlib import Path

import numpy as np

from alexnet_mp.config.get_data import GetDataConfig
from alexnet_mp.errors import UserError
from alexnet_mp.progress import Progress

__all__ = ["get_data", "cifar10_splits", "draw_split"]

_log = logging.getLogger("alexnet_mp.get_data")

_ARCHIVE = "cifar-10-python.tar.gz"
_FOLDER = "cifar-10-batches-py"
_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_SPLITS = ("train", "val", "test")


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _download(cfg: GetDataConfig, out: Path) -> Path:
    """The archive in ``out``, fetched unless a copy with the right md5 is there already."""
    from torchvision.datasets.utils import check_integrity, download_url

    archive = out / _ARCHIVE
    if check_integrity(str(archive), cfg.md5):
        _log.info("%s is here already, md5 checked", archive)
        return archive
    _log.info("downloading %s", cfg.url)
    import torchvision.datasets.utils as tv_utils

    # progress=false: torchvision's download bar off too (it has no option; its module's tqdm is swapped).
    bar = tv_utils.tqdm
    if not cfg.progress:
        tv_utils.tqdm = functools.partial(bar, disable=True)
    try:
        download_url(cfg.url, str(out), filename=_ARCHIVE, md5=None)  # the md5 is checked below, in one line
    except (urllib.error.URLError, OSError, ValueError) as err:
        archive.unlink(missing_ok=True)
        reason = getattr(err, "reason", None) or err
        raise UserError(f"could not download {cfg.url}: {reason}") from None
    finally:
        tv_utils.tqdm = bar
    if not check_integrity(str(archive), cfg.md5):
        found = _md5(archive)
        archive.unlink()
        raise UserError(f"bad checksum: {cfg.url} has md5 {found}, not {cfg.md5} (a damaged download "
                        f"or another file; removed it: run again, or give that archive's md5 as md5=)")
    return archive


def _read_batches(archive: Path, scratch: Path) -> tuple[list[str], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Class names, and each official split as (uint8 images N x 32 x 32 x 3, labels N)."""
    from torchvision.datasets.utils import extract_archive

    try:
        extract_archive(str(archive), str(scratch))
    except (tarfile.TarError, OSError, EOFError) as err:
        raise UserError(f"{archive} is not a readable tar.gz archive: {err}") from None
    folder = scratch / _FOLDER

    def load(name: str) -> dict:
        path = folder / name
        if not path.is_file():
            raise UserError(f"{archive} holds no {_FOLDER}/{name}: not the CIFAR-10 python archive")
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")

    classes = list(load("batches.meta")["label_names"])
    splits = {}
    for split, names in (("train", _TRAIN_BATCHES), ("test", ("test_batch",))):
        batches = [load(n) for n in names]
        data = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches])
        labels = np.concatenate([np.asarray(b["labels"], dtype=np.int64) for b in batches])
        # Each row is 1024 red, 1024 green, then 1024 blue values of a 32 x 32 image.
        splits[split] = (data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels)
    return classes, splits


def draw_split(labels: np.ndarray, val_per_class: int | None, train_per_class: int | None,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training split kept for train and held out for val: per class, a
    permutation drawn from ``seed`` gives the first ``val_per_class`` to val and the next
    ``train_per_class`` (null: all the rest) to train. Both sorted."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        order = members[rng.permutation(len(members))]
        n_val = val_per_class or 0
        if n_val + (train_per_class or 1) > len(order):
            raise UserError(f"class {int(c)} has {len(order)} training images: too few for val={n_val}"
                            + (f" and train_per_class={train_per_class}" if train_per_class else ""))
        val.append(order[:n_val])
        rest = order[n_val:]
        train.append(rest if train_per_class is None else rest[:train_per_class])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _val_per_class(value: object) -> int | None:
    text = str(value).strip()
    if text == "test":
        return None
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise UserError(f"val must be test or a positive integer (images per class held out of train), not {text!r}")


def cifar10_splits(cfg: GetDataConfig, labels_train: np.ndarray, labels_test: np.ndarray) -> dict[str, np.ndarray]:
    """Which images of which official split go to train/, val/ and test/ (val: None when it is test/)."""
    val_n = _val_per_class(cfg.val)
    train, val = draw_split(labels_train, val_n, cfg.train_per_class, cfg.seed)
    return {"train": train, "val": None if val_n is None else val, "test": np.arange(len(labels_test))}


def _check_out(out: Path) -> None:
    taken = [s for s in _SPLITS if (out / s).exists() or (out / s).is_symlink()]
    if taken:
        raise UserError(f"{out} already holds {taken[0]}/: choose a new folder for out=, or remove it")
    if out.exists() and not out.is_dir():
        raise UserError(f"out={out} is a file, not a folder")


def get_data(cfg: GetDataConfig) -> Path:
    """Fetch ``cfg.dataset`` and write ``cfg.out``'s split folders; returns ``cfg.out``."""
    from PIL import Image

    out = Path(cfg.out).expanduser()
    _val_per_class(cfg.val)  # a bad val= is one line before any download
    _check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    archive = _download(cfg, out)
    partial = out / ".get_data-partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        classes, official = _read_batches(archive, partial / "extracted")
        chosen = cifar10_splits(cfg, official["train"][1], official["test"][1])
        jobs = [(split, source, idx) for split, source, idx in
                (("train", "train", chosen["train"]), ("val", "train", chosen["val"]), ("test", "test", chosen["test"]))
                if idx is not None]
        suffix = ".png" if cfg.format == "png" else ".jpg"
        options = {} if cfg.format == "png" else {"quality": cfg.jpeg_quality}
        total = sum(len(idx) for _, _, idx in jobs)
        with Progress(total=total, desc="writing images", unit="image", enabled=cfg.progress) as bar:
            for split, source, idx in jobs:
                images, labels = official[source]
                for name in classes:
                    (partial / split / name).mkdir(parents=True)
                for i in idx:
                    path = partial / split / classes[labels[i]] / f"{i:05d}{suffix}"
                    Image.fromarray(images[i]).save(path, **options)
                    bar.update(1)
        for split, _, _ in jobs:
            os.replace(partial / split, out / split)
        if chosen["val"] is None:
            (out / "val").symlink_to("test", target_is_directory=True)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    if not cfg.keep_archive:
        archive.unlink()
    counts = {s: sum(1 for _ in (out / s).rglob(f"*{suffix}")) for s in _SPLITS}
    print(f"{cfg.dataset} in {out}: train {counts['train']:,}, val {counts['val']:,}"
          f"{' (= test)' if chosen['val'] is None else ''}, test {counts['test']:,} images, {len(classes)} classes"
          f"; train with data=imagefolder data.root={out}", flush=True)
    return out
