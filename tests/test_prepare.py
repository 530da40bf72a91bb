"""Tests of the prepared dataset (Krizhevsky et al. 2012, sec. 2: shorter side to 256, the
central square; the mean image and the RGB covariance over the training set, sec. 4.1).

``launch/prepare.py`` does sec. 2's preprocessing once so training need not decode and
resize every image in every epoch. That is only worth having if training on the prepared
data is training on the same data: these tests hold the prepared images, labels and
statistics equal to what ``data=imagefolder`` computes from the source folder, show that
an interrupted prepare resumes without redoing finished shards and ends identical, and
that every bad input is one line naming the problem.
"""

from __future__ import annotations

import errno
import logging
import pickle
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet_mp.data import ImageFolderImages, PreparedImages, compute_stats, open_prepared, read_manifest
from alexnet_mp.data import prepare as prep
from alexnet_mp.data.prepare import bytes_on_disk, prepare_dataset
from alexnet_mp.data.shards import RawWriter
from alexnet_mp.errors import UserError
from alexnet_mp.io import disk_full_error
from helpers import ROOT, SHARED_DATA, one_line
SIZE = 32
CLASSES = ("cat", "dog", "eel")


def _photo(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A smooth colour image with some texture: JPEG treats it like a photograph."""
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    base = rng.uniform(40, 200, 3)
    slope = rng.uniform(-80, 80, (2, 3))
    wave = 30 * np.sin(2 * np.pi * rng.uniform(1, 3) * (xx + rng.uniform() * yy))[..., None]
    img = base + xx[..., None] * slope[0] + yy[..., None] * slope[1] + wave + rng.normal(0, 4, (h, w, 3))
    return img.clip(0, 255).astype(np.uint8)


def _make_tree(root: Path, train_per_class: int = 8, val_per_class: int = 3, classes=CLASSES, seed: int = 0) -> Path:
    """train/ and val/ of class folders: JPEGs of several sizes and shapes, a greyscale
    JPEG, a PNG, and one corrupt file in train/dog."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for c in classes:
            folder = root / split / c
            folder.mkdir(parents=True)
            for k in range(n):
                w, h = int(rng.integers(40, 81)), int(rng.integers(40, 81))
                img = Image.fromarray(_photo(rng, w, h))
                if k == 1:
                    img.convert("L").save(folder / f"{k:02d}-grey.jpg", quality=95)
                elif k == 2:
                    img.save(folder / f"{k:02d}.png")
                else:
                    img.save(folder / f"{k:02d}.jpg", quality=95)
    (root / "train" / "dog" / "05-corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    return root


def _readable(ds: ImageFolderImages) -> list[tuple[torch.Tensor, int]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [item for item in (ds[i] for i in range(len(ds))) if item is not None]


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    return _make_tree(tmp_path_factory.mktemp("src"))


@pytest.fixture(scope="module")
def raw(src, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prep") / "raw"
    prepare_dataset(src, out, image_size=SIZE, workers=2, shard_size=5, progress=False)
    return out


@pytest.fixture(scope="module")
def reference(src) -> dict:
    """What data=imagefolder reads: every readable item of both splits, and the statistics."""
    sets = {s: ImageFolderImages(src, s, SIZE) for s in ("train", "val")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats = compute_stats(sets["train"], max_samples=10 ** 12, seed=0, progress=False)
    return {"items": {s: _readable(ds) for s, ds in sets.items()}, "stats": stats}


# ----------------------------------------------------------------------------- the same data

def test_raw_shards_equal_the_image_folder_bit_for_bit(src, raw, reference):
    train, val = open_prepared(raw, SIZE)
    for ds in (train, val):
        items = reference["items"][ds.split]
        assert ds.classes == list(CLASSES) and ds.num_classes == 3 and ds.format == "raw"
        assert len(ds) == len(items)
        for i, (img, label) in enumerate(items):
            got, got_label = ds[i]
            assert got.dtype == torch.uint8 and got.shape == (3, SIZE, SIZE)
            assert torch.equal(got, img) and got_label == label
    # The corrupt file: skipped, counted and named (relative to the source root).
    assert train.skipped == ["train/dog/05-corrupt.jpg"] and val.skipped == []
    manifest = read_manifest(raw)
    assert manifest["splits"]["train"]["skipped_count"] == 1
    assert manifest["splits"]["train"]["files"] == 25 and manifest["splits"]["train"]["count"] == 24
    assert len(manifest["splits"]["train"]["shards"]) == 5  # 25 files in shards of 5
    assert manifest["source_root"] == str(src.resolve())
    arr = np.load(raw / "train" / "images-00000.npy", mmap_mode="r")  # plain memory-mappable .npy
    assert arr.dtype == np.uint8 and arr.shape == (5, 3, SIZE, SIZE)


def test_statistics_equal_compute_stats_over_every_training_image(raw, reference):
    got, want = PreparedImages(raw, "train").stats(), reference["stats"]
    assert got.mean_image.dtype == torch.float32 and got.mean_image.shape == (3, SIZE, SIZE)
    torch.testing.assert_close(got.mean_image, want.mean_image, rtol=1e-6, atol=0)
    torch.testing.assert_close(got.eigvals, want.eigvals, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(got.eigvecs, want.eigvecs, rtol=1e-5, atol=1e-6)
    assert torch.all(got.eigvals[:-1] >= got.eigvals[1:])
    loaded = torch.load(raw / "stats.pt", weights_only=True)
    assert loaded["image_size"] == SIZE and loaded["count"] == 24


def test_jpeg_format_is_close_smaller_and_has_the_pre_encoding_statistics(src, raw, reference, tmp_path):
    out = tmp_path / "jpeg"
    prepare_dataset(src, out, image_size=SIZE, format="jpeg", jpeg_quality=90, workers=1, progress=False)
    for split in ("train", "val"):
        ds, items = PreparedImages(out, split, SIZE), reference["items"][split]
        assert ds.format == "jpeg" and len(ds) == len(items)
        images, labels = ds.read_batch(list(range(len(ds))))
        want = torch.stack([img for img, _ in items])
        assert labels.tolist() == [label for _, label in items]
        assert (images.float() - want.float()).abs().mean() < 3
    stats, raw_stats = PreparedImages(out, "train").stats(), PreparedImages(raw, "train").stats()
    assert torch.equal(stats.mean_image, raw_stats.mean_image) and torch.equal(stats.eigvecs, raw_stats.eigvecs)
    assert bytes_on_disk(out / "train") < bytes_on_disk(raw / "train")


def test_read_batch_in_any_order_after_pickling_and_in_a_spawned_loader(raw):
    ds = PreparedImages(raw, "train", SIZE)
    order = [17, 3, 3, 0, 23, 9, 4, 5, 12, 1]  # across shards, a repeat, unsorted
    images, labels = ds.read_batch(order)
    assert images.shape == (len(order), 3, SIZE, SIZE) and labels.dtype == torch.int64
    assert torch.equal(images, torch.stack([ds[i][0] for i in order]))
    assert labels.tolist() == [ds[i][1] for i in order]
    assert ds._maps  # opened by the reads above, and not pickled:
    copy = pickle.loads(pickle.dumps(ds))
    assert copy._maps == {}
    again, again_labels = copy.read_batch(order)
    assert torch.equal(again, images) and torch.equal(again_labels, labels)
    assert ds.read_batch([])[0].shape == (0, 3, SIZE, SIZE)
    with pytest.raises(IndexError):
        ds.read_batch([len(ds)])
    with pytest.raises(IndexError):
        ds[len(ds)]
    # A spawned worker gets the reader by pickle and opens its own maps.
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=1, multiprocessing_context="spawn")
    x = torch.cat([b[0] for b in loader])
    assert torch.equal(x, ds.read_batch(list(range(len(ds))))[0])
    assert ds.fingerprint().startswith(f"prepared|raw|train|3|24|{SIZE}|")


# ----------------------------------------------------------------------------- crash and resume

def test_an_interrupted_prepare_resumes_without_redoing_shards_and_equals_an_uninterrupted_one(
        src, raw, tmp_path, caplog):
    out = tmp_path / "resumed"
    with pytest.raises(SystemExit) as stop:
        prepare_dataset(src, out, image_size=SIZE, workers=2, shard_size=3, progress=False, stop_after_shards=1)
    assert stop.value.code == 3
    assert not (out / "manifest.json").exists() and (out / "prepare.json").exists()
    with pytest.raises(UserError) as err:
        PreparedImages(out, "train", SIZE)
    assert "incomplete prepared dataset (interrupted prepare?)" in one_line(err)
    records = sorted(out.glob("*/shard-*.pt"))
    assert 1 <= len(records) < 12  # 25 + 9 files in shards of 3: 9 + 3 shards
    kept = {}
    for record in records:
        for name in torch.load(record, weights_only=True)["data"]:
            st = (record.parent / name).stat()
            kept[record.parent / name] = (st.st_ino, st.st_mtime_ns)
    stray = out / "train" / ".images-00011.npy.tmp-12345"  # what a killed worker leaves
    stray.write_bytes(b"partial")

    caplog.set_level(logging.INFO, logger="alexnet_mp")
    prepare_dataset(src, out, image_size=SIZE, workers=2, shard_size=3, progress=False)
    assert "continuing an interrupted prepare" in caplog.text
    assert not stray.exists() and not list(out.rglob(".*.tmp-*"))
    for path, (ino, mtime) in kept.items():  # finished shards were not written again
        st = path.stat()
        assert (st.st_ino, st.st_mtime_ns) == (ino, mtime), path
    for split in ("train", "val"):  # the same data as the uninterrupted prepare (other shard size)
        a, b = PreparedImages(out, split, SIZE), PreparedImages(raw, split, SIZE)
        assert len(a) == len(b) and a.skipped == b.skipped
        for x, y in zip(a.read_batch(list(range(len(a)))), b.read_batch(list(range(len(b))))):
            assert torch.equal(x, y)
    s, r = PreparedImages(out, "train").stats(), PreparedImages(raw, "train").stats()
    torch.testing.assert_close(s.eigvecs, r.eigvecs, rtol=1e-5, atol=1e-6)
    assert torch.equal(s.mean_image, r.mean_image)

    caplog.clear()  # a third run finds it complete and does nothing
    manifest = prepare_dataset(src, out, image_size=SIZE, shard_size="auto", progress=False)
    assert "already prepared" in caplog.text and manifest["splits"]["train"]["count"] == 24


def test_a_full_disk_is_one_line_marks_nothing_complete_and_a_rerun_finishes(src, tmp_path, monkeypatch):
    out = tmp_path / "full"
    original = RawWriter.commit

    def commit(self):
        if self.path.name != "images-00000.npy":
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self)

    monkeypatch.setattr(RawWriter, "commit", commit)  # forked workers inherit the patch
    with pytest.raises(UserError) as err:
        prepare_dataset(src, out, image_size=SIZE, workers=2, shard_size=10, progress=False)
    msg = one_line(err)
    assert "no space left on device while writing" in msg and "images-0000" in msg and "re-run" in msg
    assert not (out / "manifest.json").exists() and not list(out.rglob(".*.tmp-*"))
    monkeypatch.setattr(RawWriter, "commit", original)

    write = prep.atomic_write

    def full(path, data):  # the disk fills up again while writing the manifest: what io.atomic_write raises
        if path.name != "manifest.json":
            return write(path, data)
        raise disk_full_error(OSError(errno.ENOSPC, "No space left on device"), path)

    monkeypatch.setattr(prep, "atomic_write", full)
    with pytest.raises(UserError) as err:
        prepare_dataset(src, out, image_size=SIZE, workers=2, shard_size=10, progress=False)
    assert "manifest.json" in one_line(err) and not (out / "manifest.json").exists()
    monkeypatch.undo()
    prepare_dataset(src, out, image_size=SIZE, workers=2, shard_size=10, progress=False)
    assert len(PreparedImages(out, "train", SIZE)) == 24


# ----------------------------------------------------------------------------- bad input

def test_out_must_be_new_empty_or_the_same_prepare(src, raw, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(UserError) as err:
        prepare_dataset(src, busy, image_size=SIZE, progress=False)
    assert "is not empty and is not a prepared dataset; choose an empty or new folder" in one_line(err)
    with pytest.raises(UserError) as err:  # the complete dataset at another size
        prepare_dataset(src, raw, image_size=48, progress=False)
    msg = one_line(err)
    assert "other settings" in msg and "settings.image_size 32 there, 48 now" in msg and "delete" in msg
    with pytest.raises(UserError) as err:
        prepare_dataset(src, raw, image_size=SIZE, format="jpeg", progress=False)
    assert "settings.format" in one_line(err)


def test_the_reader_refuses_what_is_not_a_complete_prepared_dataset_of_this_size(src, raw, tmp_path):
    with pytest.raises(UserError) as err:
        PreparedImages(src, "train", SIZE)
    msg = one_line(err)
    assert "raw image folder" in msg and "python launch/prepare.py" in msg and "data=prepared" in msg
    with pytest.raises(UserError) as err:
        PreparedImages(tmp_path / "nowhere", "train")
    assert "does not exist" in one_line(err)
    with pytest.raises(UserError) as err:
        open_prepared(raw, 48)
    msg = one_line(err)
    assert "32px" in msg and "data.image_size=48" in msg
    broken = tmp_path / "broken"
    (broken / "train").mkdir(parents=True)
    (broken / "val").mkdir()
    for p in raw.rglob("*"):
        if p.is_file():
            (broken / p.relative_to(raw)).write_bytes(p.read_bytes())
    (broken / "val" / "images-00001.npy").unlink()
    with pytest.raises(UserError) as err:
        PreparedImages(broken, "val", SIZE)
    assert "missing val/images-00001.npy" in one_line(err)


@pytest.mark.parametrize("damaged", ["train/images-00001.npy", "val/labels.npy"])
def test_a_truncated_shard_or_labels_file_is_refused_at_open_naming_it(raw, tmp_path, damaged):
    """Caught when the dataset is opened (the manifest records each shard's bytes), not by a
    loader worker part-way through an epoch: one line naming the file."""
    copy = tmp_path / "copy"
    shutil.copytree(raw, copy)
    path = copy / damaged
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2 if "images" in damaged else 40])
    with pytest.raises(UserError) as err:
        PreparedImages(copy, damaged.split("/")[0], SIZE)
    msg = one_line(err)
    assert str(path) in msg and "prepare it again" in msg, msg


def test_classes_that_differ_between_train_and_val_are_refused_before_writing(tmp_path):
    src = _make_tree(tmp_path / "src", train_per_class=2, val_per_class=1)
    (src / "val" / "fox").mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(src / "val" / "fox" / "a.png")
    with pytest.raises(UserError) as err:
        prepare_dataset(src, tmp_path / "out", image_size=SIZE, progress=False)
    assert "train and val classes differ" in one_line(err) and "fox" in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("key, value, words", [
    ("format", "png", "format must be raw or jpeg"), ("jpeg_quality", 0, "jpeg_quality must be"),
    ("workers", 0, "workers must be auto or"), ("shard_size", "big", "shard_size must be auto or"),
    ("image_size", -3, "data.image_size must be"), ("progress", "yes", "progress must be true or false"),
])
def test_bad_settings_are_one_line_errors(src, tmp_path, key, value, words):
    with pytest.raises(UserError) as err:
        prepare_dataset(src, tmp_path / "out", **{"image_size": SIZE, key: value})
    assert words in one_line(err)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- the launcher

def test_launch_prepare_end_to_end_and_a_bad_input_exits_1_withone_line(src, tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, str(ROOT / "launch" / "prepare.py"), f"data.root={src}", f"out={out}",
           f"data.image_size={SIZE}", "progress=false"]
    crash = subprocess.run(cmd + ["shard_size=4", "debug.stop_after_shards=1"], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
    assert crash.returncode == 3, crash.stderr
    assert not (out / "manifest.json").exists()
    done = subprocess.run(cmd + ["shard_size=4"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "continuing an interrupted prepare" in done.stdout and "(1 skipped)" in done.stdout
    assert len(PreparedImages(out, "val", SIZE)) == 9
    bad = subprocess.run(cmd[:3] + [f"out={src}"] + cmd[4:], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("alexnet_mp: error: ") and "not empty" in lines[0]


# ----------------------------------------------------------------------------- real photographs

@pytest.mark.skipif(not (SHARED_DATA / "imagenet-sample" / "val").is_dir(), reason="no ../shared/data/imagenet-sample")
def test_a_few_imagenet_photographs(tmp_path):
    """The sample has only val/, one image per class: a train/ and val/ of links to a few classes."""
    sample = SHARED_DATA / "imagenet-sample" / "val"
    classes = sorted(d for d in sample.iterdir() if d.is_dir())[:6]
    src = tmp_path / "src"
    for split in ("train", "val"):
        for c in classes:
            (src / split / c.name).mkdir(parents=True)
            for f in sorted(c.iterdir()):
                (src / split / c.name / f.name).symlink_to(f.resolve())
    out = tmp_path / "out"
    prepare_dataset(src, out, image_size=64, workers=2, progress=False)
    ds, ref = PreparedImages(out, "train", 64), ImageFolderImages(src, "train", 64)
    items = _readable(ref)
    assert len(ds) == len(items) > 0
    images, labels = ds.read_batch(list(range(len(ds))))
    assert torch.equal(images, torch.stack([x for x, _ in items]))
    assert labels.tolist() == [y for _, y in items]
