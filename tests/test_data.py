"""Tests of the data pipeline (paper sec. 5): datasets, statistics, augmentations, loading."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import alexnet_mp.io
from alexnet_mp import data
from alexnet_mp.data import (
    ImageFolderImages,
    BatchLoader,
    SyntheticImages,
    check_same_classes,
    compute_stats,
    crop_size_for,
    default_workers,
    load_or_compute_stats,
    read_images,
    ten_crop,
)
from alexnet_mp.errors import UserError
from benchmarks.data.per_image import PaperTransform
from helpers import SHARED_DATA, one_line


# ----------------------------------------------------------------------------- crop sizes


def test_crop_size_for_paper_sizes():
    assert crop_size_for(256, "224") == 224
    assert crop_size_for(256, "227") == 227


@pytest.mark.parametrize("size", [77, 96, 128, 160, 255, 320])
def test_crop_size_for_scales_proportionally(size):
    for geometry, crop_of_256 in (("224", 224), ("227", 227)):
        crop = crop_size_for(size, geometry)
        assert crop == round(size * crop_of_256 / 256)
        assert 67 <= crop <= size


def test_crop_size_for_rejects_too_small_and_unknown_geometry():
    assert crop_size_for(77, "224") == 67  # the smallest stored size that still works
    with pytest.raises(UserError) as err:
        crop_size_for(76, "224")
    assert "76" in one_line(err)
    with pytest.raises(UserError) as err:
        crop_size_for(32, "227")
    assert "32" in one_line(err)
    with pytest.raises(UserError):
        crop_size_for(256, "225")


# ----------------------------------------------------------------------------- synthetic


def _stack(ds, n=None):
    items = [ds[i] for i in range(len(ds) if n is None else n)]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def test_synthetic_is_deterministic_and_splits_differ():
    a = SyntheticImages("train", num_classes=5, size=20, image_size=33, seed=3)
    b = SyntheticImages("train", num_classes=5, size=20, image_size=33, seed=3)
    xa, ya = _stack(a)
    xb, yb = _stack(b)
    assert xa.dtype == torch.uint8 and xa.shape == (20, 3, 33, 33)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert torch.equal(a[7][0], xa[7])  # lazily regenerated, in any order
    xv, yv = _stack(SyntheticImages("val", num_classes=5, size=20, image_size=33, seed=3))
    assert torch.equal(ya, yv)
    assert all(not torch.equal(xa[i], xv[i]) for i in range(20))
    xs, _ = _stack(SyntheticImages("train", num_classes=5, size=20, image_size=33, seed=4))
    assert not torch.equal(xa, xs)
    assert torch.bincount(ya).tolist() == [4] * 5
    assert a.classes == [f"class_{c:02d}" for c in range(5)] and a.num_classes == 5
    with pytest.raises(UserError):
        SyntheticImages("test", num_classes=5, size=20, image_size=33, seed=3)


def test_synthetic_has_class_structure_that_is_not_trivial():
    kw = dict(num_classes=10, image_size=32, seed=0)
    xt, yt = _stack(SyntheticImages("train", size=600, **kw))
    xv, yv = _stack(SyntheticImages("val", size=300, **kw))

    def nearest_class_mean(ft, fv):
        means = torch.stack([ft[yt == c].mean(0) for c in range(10)]).flatten(1)
        return (torch.cdist(fv.flatten(1), means).argmin(1) == yv).float().mean().item()

    raw = nearest_class_mean(xt.float(), xv.float())
    # The oriented gratings carry class information that raw-pixel means average away
    # (random phase); the phase-free amplitude spectrum recovers it.
    spectrum = lambda x: torch.fft.rfft2(x.float() - x.float().mean((-2, -1), keepdim=True)).abs().log1p()  # noqa: E731
    spec = nearest_class_mean(spectrum(xt), spectrum(xv))
    assert 0.25 < raw < 0.9, raw
    assert spec > raw + 0.1, (spec, raw)
    assert spec < 1.0


# ----------------------------------------------------------------------------- image folders


def _save(path: Path, img: Image.Image, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def _noise_image(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3, "RGBA": 4, "CMYK": 4}[mode]
    arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(arr[..., 0] if channels == 1 else arr, mode)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    for split in ("train", "val"):
        _save(root / split / "cat" / "rgb.jpg", _noise_image("RGB", (50, 40), 1))
        _save(root / split / "cat" / "grey.JPEG", _noise_image("L", (40, 60), 2))
        _save(root / split / "dog" / "cmyk.jpeg", Image.new("CMYK", (45, 45), (255, 0, 0, 0)))
        _save(root / split / "dog" / "rgba.PNG", _noise_image("RGBA", (30, 36), 3))
        _save(root / split / "dog" / "palette.png", _noise_image("RGB", (36, 30), 4).convert("P"))
        (root / split / "dog" / "notes.txt").write_text("not an image")
    (root / "train" / "cat" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    whole = root / "train" / "cat" / "rgb.jpg"
    (root / "train" / "dog" / "truncated.jpg").write_bytes(whole.read_bytes()[:200])
    return root


def test_image_folder_modes_all_become_rgb(folder):
    ds = ImageFolderImages(folder, "val", 24)
    assert ds.classes == ["cat", "dog"] and ds.num_classes == 2
    names = [p.name for p, _ in ds.samples]
    assert names == ["grey.JPEG", "rgb.jpg", "cmyk.jpeg", "palette.png", "rgba.PNG"]
    assert [label for _, label in ds.samples] == [0, 0, 1, 1, 1]
    for i in range(len(ds)):
        img, label = ds[i]
        assert img.dtype == torch.uint8 and img.shape == (3, 24, 24), names[i]
        assert label == ds.samples[i][1]
    grey = ds[0][0]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    cyan = ds[2][0].float().mean((1, 2))  # CMYK (255, 0, 0, 0) is pure cyan
    assert cyan[0] < 20 and cyan[1] > 235 and cyan[2] > 235, cyan


def test_image_folder_resizes_shorter_side_then_centre_crops(tmp_path):
    # 48 wide x 32 high: red | green | blue columns. Shorter side 32 -> 16 halves the
    # image to 24 x 16; the central 16 columns are exactly the green band.
    arr = np.zeros((32, 48, 3), np.uint8)
    arr[:, :8, 0] = arr[:, 8:40, 1] = arr[:, 40:, 2] = 255
    _save(tmp_path / "r" / "s" / "a" / "wide.png", Image.fromarray(arr))
    _save(tmp_path / "r" / "s" / "a" / "tall.png", Image.fromarray(arr.transpose(1, 0, 2).copy()))
    ds = ImageFolderImages(tmp_path / "r", "s", 16)
    for i, (path, _) in enumerate(ds.samples):
        img = ds[i][0].float()
        assert img.shape == (3, 16, 16)
        inner = img[:, 1:-1, 1:-1]
        assert (inner[1] > 250).all() and (inner[0] < 5).all() and (inner[2] < 5).all(), path
        # Edges are blended by the antialiasing filter, but symmetrically: centred crop.
        if path.name == "wide.png":
            assert torch.allclose(img[0, :, 0], img[2, :, -1], atol=2), (img[0, :, 0], img[2, :, -1])
        else:
            assert torch.allclose(img[0, 0, :], img[2, -1, :], atol=2)
    # Against an independent implementation (torchvision's antialiased tensor resize).
    from torchvision.transforms import functional as TF

    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (6, 9, 3)), np.ones((10, 10, 1))).astype(np.uint8)
    _save(tmp_path / "q" / "s" / "a" / "smooth.png", Image.fromarray(smooth))  # 90 x 60
    got = ImageFolderImages(tmp_path / "q", "s", 30)[0][0].float()
    resized = TF.resize(torch.from_numpy(smooth).permute(2, 0, 1).float(), 30, antialias=True)
    assert resized.shape == (3, 30, 45)
    ref = resized[:, :, 7:37]  # centre: floor((45 - 30) / 2) = 7 columns cut on the left
    assert got.shape == ref.shape == (3, 30, 30)
    assert (got - ref).abs().mean() < 3, (got - ref).abs().mean()


def test_corrupt_files_give_none_with_a_warning_and_are_dropped(folder, caplog):
    ds = ImageFolderImages(folder, "train", 20)
    bad = {p.name: i for i, (p, _) in enumerate(ds.samples)}
    for name in ("bad.jpg", "truncated.jpg"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="alexnet_mp"):
            assert ds[bad[name]] is None
            assert ds[bad[name]] is None  # read again (another epoch): said once
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 1 and "skipping unreadable image" in lines[0] and name in lines[0], lines
        assert "\n" not in lines[0]
    good = [i for i in range(len(ds)) if ds.samples[i][0].name != "truncated.jpg"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        images, labels, read = read_images(ds, good)
    assert len(read) == len(good) - 1 and bad["bad.jpg"] not in read
    assert images.shape == (len(good) - 1, 3, 20, 20) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64
    assert labels.tolist() == [ds.samples[i][1] for i in good if ds.samples[i][0].name != "bad.jpg"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        images, labels, read = read_images(ds, [bad["bad.jpg"], bad["truncated.jpg"]])
    assert read == [] and labels.numel() == 0 and images.shape == (0, 3, 20, 20)


def test_image_folder_user_errors(folder, tmp_path):
    with pytest.raises(UserError) as err:
        ImageFolderImages(tmp_path / "nowhere", "train", 32)
    assert str(tmp_path / "nowhere") in one_line(err)
    with pytest.raises(UserError) as err:
        ImageFolderImages(folder, "test", 32)
    assert str(folder / "test") in one_line(err)
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(UserError) as err:
        ImageFolderImages(tmp_path / "empty", "train", 32)
    assert str(tmp_path / "empty" / "train") in one_line(err)
    for name in ("a", "b"):
        (tmp_path / "noimg" / "train" / name).mkdir(parents=True)
        (tmp_path / "noimg" / "train" / name / "readme.txt").write_text("x")
    with pytest.raises(UserError) as err:
        ImageFolderImages(tmp_path / "noimg", "train", 32)
    assert str(tmp_path / "noimg" / "train") in one_line(err)


def test_check_same_classes(folder):
    train, val = ImageFolderImages(folder, "train", 16), ImageFolderImages(folder, "val", 16)
    check_same_classes(train, val)
    (folder / "val" / "cat").rename(folder / "val" / "cow")
    with pytest.raises(UserError) as err:
        check_same_classes(train, ImageFolderImages(folder, "val", 16))
    msg = one_line(err)
    assert "missing from val: [cat]" in msg and "extra in val: [cow]" in msg


# ----------------------------------------------------------------------------- statistics


class _Tiny(torch.utils.data.Dataset):
    """Known random images; item 3 is 'corrupt'. Records which items were read."""

    image_size = 6

    def __init__(self, n: int = 12, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (n, 3, 6, 6), generator=g, dtype=torch.uint8)
        self.images[:, 0] //= 2  # correlated, unequal channels
        self.images[:, 2] = (self.images[:, 2] // 2 + self.images[:, 0] // 2)
        self.read: list[int] = []
        self.seed = seed

    def fingerprint(self) -> str:
        return f"tiny|{len(self.images)}|{self.seed}"

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        self.read.append(i)
        return None if i == 3 else (self.images[i], i % 2)


def test_stats_match_direct_computation():
    ds = _Tiny()
    stats = compute_stats(ds, max_samples=100, seed=0)
    good = torch.cat([ds.images[:3], ds.images[4:]]).double()
    assert stats.mean_image.dtype == torch.float32 and stats.mean_image.shape == (3, 6, 6)
    torch.testing.assert_close(stats.mean_image, good.mean(0).float())
    pixels = good.permute(1, 0, 2, 3).reshape(3, -1) / 255
    cov = torch.cov(pixels, correction=0)
    v, lam = stats.eigvecs.double(), stats.eigvals.double()
    torch.testing.assert_close(v @ torch.diag(lam) @ v.T, cov, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(v.T @ v, torch.eye(3, dtype=torch.float64), atol=1e-6, rtol=0)
    assert (lam[:-1] >= lam[1:]).all() and (lam >= 0).all()


def test_stats_sample_is_deterministic_and_bounded():
    ds = _Tiny(n=30)
    a = compute_stats(ds, max_samples=8, seed=1)
    first = sorted(ds.read)
    ds.read.clear()
    b = compute_stats(ds, max_samples=8, seed=1)
    assert sorted(ds.read) == first and len(first) == 8
    assert torch.equal(a.mean_image, b.mean_image)
    ds.read.clear()
    compute_stats(ds, max_samples=8, seed=2)
    assert sorted(ds.read) != first


def test_stats_cache_reused_and_recomputed_on_mismatch(tmp_path, monkeypatch):
    calls = []
    real = data.compute_stats
    monkeypatch.setattr(data.dataset_stats, "compute_stats", lambda *a, **k: calls.append(a) or real(*a, **k))
    cache = tmp_path / "cache" / "stats.pt"
    ds = _Tiny(n=20)
    first = load_or_compute_stats(ds, cache, max_samples=10, seed=0)
    assert len(calls) == 1 and cache.is_file()
    again = load_or_compute_stats(ds, cache, max_samples=10, seed=0)
    assert len(calls) == 1
    for name in ("mean_image", "eigvals", "eigvecs"):
        assert torch.equal(getattr(first, name), getattr(again, name))
    load_or_compute_stats(ds, cache, max_samples=10, seed=1)  # another sample
    assert len(calls) == 2
    load_or_compute_stats(ds, cache, max_samples=12, seed=1)  # another sample size
    assert len(calls) == 3
    load_or_compute_stats(_Tiny(n=20, seed=5), cache, max_samples=12, seed=1)  # other data
    assert len(calls) == 4
    cache.write_bytes(b"garbage")
    load_or_compute_stats(ds, cache, max_samples=10, seed=0)
    assert len(calls) == 5
    assert [p.name for p in cache.parent.iterdir()] == ["stats.pt"]  # no temp files left


def test_stats_cache_in_unwritable_place_does_not_fail(tmp_path, monkeypatch):
    ds = _Tiny()
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    stats = load_or_compute_stats(ds, blocker / "stats.pt", max_samples=100, seed=0)
    assert stats.mean_image.shape == (3, 6, 6)

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(alexnet_mp.io, "temporary_name", read_only)
    stats2 = load_or_compute_stats(ds, tmp_path / "ro" / "stats.pt", max_samples=100, seed=0)
    assert torch.equal(stats.mean_image, stats2.mean_image)
    assert not (tmp_path / "ro" / "stats.pt").exists()
    if os.geteuid() != 0:  # root ignores permission bits
        monkeypatch.undo()
        ro = tmp_path / "ro2"
        ro.mkdir()
        ro.chmod(0o555)
        load_or_compute_stats(ds, ro / "stats.pt", max_samples=100, seed=0)
        assert not (ro / "stats.pt").exists()


# ----------------------------------------------------------------------------- transforms

S, CROP = 24, 20


@pytest.fixture(scope="module")
def synth():
    ds = SyntheticImages("train", num_classes=4, size=40, image_size=S, seed=1)
    return ds, compute_stats(ds, max_samples=100, seed=0)


def test_transform_is_a_function_of_seed_index_epoch(synth):
    ds, stats = synth
    t1, t2 = PaperTransform(stats, CROP, train=True, seed=7), PaperTransform(stats, CROP, train=True, seed=7)
    img = ds[5][0]
    out = t1(img, 5, 2)
    assert out.dtype == torch.float32 and out.shape == (3, CROP, CROP)
    torch.manual_seed(123)  # global RNG must not matter
    assert torch.equal(out, t2(img, 5, 2))
    assert not torch.equal(out, t1(img, 5, 3))
    assert not torch.equal(out, t1(img, 6, 2))
    assert not torch.equal(out, PaperTransform(stats, CROP, train=True, seed=8)(img, 5, 2))


def test_crop_window_and_flip_match_their_definitions(synth):
    ds, stats = synth
    img = ds[0][0]
    centred = img.float() - stats.mean_image
    plain = PaperTransform(stats, CROP, train=True, flip=False, pca_sigma=0, seed=3)
    flipping = PaperTransform(stats, CROP, train=True, flip=True, pca_sigma=0, seed=3)
    tops, lefts, flips = [], [], []
    for index in range(400):
        top, left, flip, _ = flipping.draw(index, epoch=1)
        assert plain.draw(index, 1)[:2] == (top, left)  # flipping does not move crops
        assert plain.draw(index, 1)[2] is False
        tops.append(top), lefts.append(left), flips.append(flip)
        if index < 20:
            window = centred[:, top:top + CROP, left:left + CROP]
            assert torch.equal(plain(img, index, 1), window)
            assert torch.equal(flipping(img, index, 1), torch.flip(window, [-1]) if flip else window)
    positions = set(range(S - CROP + 1))
    assert set(tops) == positions and set(lefts) == positions  # every window reachable
    assert 0.4 < sum(flips) / len(flips) < 0.6


@pytest.mark.parametrize("scale", ["sqrt", "eigenvalue"])
def test_fancy_pca_adds_the_drawn_colour_shift_to_every_pixel(synth, scale):
    ds, stats = synth
    img = ds[1][0]
    noisy = PaperTransform(stats, CROP, train=True, pca_sigma=0.1, pca_scale=scale, seed=4)
    clean = PaperTransform(stats, CROP, train=True, pca_sigma=0.0, seed=4)
    weights = stats.eigvals.sqrt() if scale == "sqrt" else stats.eigvals
    alphas = []
    for index in range(10):
        top, left, flip, alpha = noisy.draw(index, epoch=0)
        assert clean.draw(index, 0)[:3] == (top, left, flip)
        expected = (stats.eigvecs @ (alpha * weights)) * 255
        diff = noisy(img, index, 0) - clean(img, index, 0)
        torch.testing.assert_close(diff, expected[:, None, None].expand_as(diff), atol=1e-3, rtol=1e-4)
        assert expected.abs().max() > 1e-3
        alphas.append(alpha)
    many = torch.stack([noisy.draw(i, 5)[3] for i in range(2000)])
    assert 0.09 < many.std().item() < 0.11 and abs(many.mean().item()) < 0.01


def test_eval_transform_is_the_centre_crop(synth):
    ds, stats = synth
    img = ds[2][0]
    t = PaperTransform(stats, CROP, train=False, seed=1)
    c = (S - CROP) // 2
    expected = (img.float() - stats.mean_image)[:, c:c + CROP, c:c + CROP]
    assert torch.equal(t(img, 2, 0), expected)
    assert torch.equal(t(img, 9, 4), expected)
    no_mean = PaperTransform(None, CROP, train=False)
    assert torch.equal(no_mean(img, 0, 0), img.float()[:, c:c + CROP, c:c + CROP])
    with pytest.raises(ValueError):
        PaperTransform(None, CROP, train=True)  # fancy PCA needs the statistics


def test_ten_crop_geometry(synth):
    img = torch.arange(3 * 10 * 12, dtype=torch.float32).reshape(3, 10, 12)
    crops = ten_crop(img, 6)
    assert crops.shape == (10, 3, 6, 6)
    offsets = [(0, 0), (0, 6), (4, 0), (4, 6), (2, 3)]
    for k, (top, left) in enumerate(offsets):
        assert torch.equal(crops[k], img[:, top:top + 6, left:left + 6])
        assert torch.equal(crops[k + 5], torch.flip(crops[k], [-1]))
    ds, stats = synth
    t = PaperTransform(stats, CROP, train=False)
    u8 = ds[3][0]
    tc = t.test_ten_crop(u8)
    assert torch.equal(tc, ten_crop(u8.float() - stats.mean_image, CROP))
    assert torch.equal(tc[4], t(u8, 3, 0))  # the centre patch is the eval input


# ----------------------------------------------------------------------------- loading


class _Indexed(torch.utils.data.Dataset):
    """Label = index; counts reads."""

    classes = ["x"]
    image_size = 4

    def __init__(self, n: int):
        self.n, self.read = n, []

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.read.append(i)
        return torch.full((3, 4, 4), i % 256, dtype=torch.uint8), i


def _labels(batches) -> list[list[int]]:
    return [b.labels.tolist() for b in batches]


def test_loader_order_is_deterministic_and_resumable():
    base = _Indexed(23)
    kw = dict(shuffle=True, seed=5, workers=0, drop_last=False)
    loader = BatchLoader(base, 5, **kw)
    full = _labels(loader.epoch(2))
    assert [len(b) for b in full] == [5, 5, 5, 5, 3]
    assert sorted(sum(full, [])) == list(range(23))
    assert full == _labels(loader.epoch(2))
    assert full != _labels(loader.epoch(3))
    assert full != _labels(BatchLoader(base, 5, **{**kw, "seed": 6}).epoch(2))
    assert sum(full, []) == data.epoch_order(23, shuffle=True, seed=5, epoch=2).tolist()
    for k in range(6):
        base.read.clear()
        batches = loader.epoch(2, start_batch=k)
        assert len(batches) == 5 - k
        assert _labels(batches) == full[k:]
        assert sorted(base.read) == sorted(sum(full[k:], []))  # skipped batches unread
    assert _labels(BatchLoader(base, 5, **{**kw, "drop_last": True}).epoch(2)) == full[:4]
    seq = _labels(BatchLoader(base, 5, **{**kw, "shuffle": False}).epoch(2))
    assert sum(seq, []) == list(range(23))
    batch = next(iter(loader.epoch(4)))
    assert batch.epoch == 4 and batch.indices.tolist() == batch.labels.tolist()
    assert batch.images.dtype == torch.uint8 and batch.images.shape == (5, 3, 4, 4)


def test_loader_leaves_global_rng_alone():
    state = torch.get_rng_state()
    for workers in (0, 1):
        list(BatchLoader(_Indexed(8), 3, shuffle=True, seed=0, workers=workers, drop_last=False).epoch(0))
    assert torch.equal(state, torch.get_rng_state())


def test_loader_batches_identical_with_and_without_workers_and_workers_persist(synth):
    base, stats = synth
    kw = dict(shuffle=True, seed=9, drop_last=False)
    serial = BatchLoader(base, 8, workers=0, **kw)
    parallel = BatchLoader(base, 8, workers=2, **kw)
    for epoch in (1, 2):
        a, b = list(serial.epoch(epoch)), list(parallel.epoch(epoch))
        assert len(a) == len(b) == 5
        for x, y in zip(a, b):
            assert x.images.dtype == torch.uint8 and x.images.shape[1:] == (3, S, S)
            assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels)
            assert torch.equal(x.indices, y.indices) and x.epoch == y.epoch == epoch and x.skipped == y.skipped == 0
        if epoch == 1:
            workers = parallel.loader._iterator._workers  # the same worker processes serve every epoch
        assert parallel.loader._iterator._workers is workers and all(w.is_alive() for w in workers)
    resumed = list(parallel.epoch(1, start_batch=3))
    assert all(torch.equal(x.images, y.images) for x, y in zip(list(serial.epoch(1))[3:], resumed))


def test_loader_reports_skipped_corrupt_images(folder):
    base = ImageFolderImages(folder, "train", 20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = list(BatchLoader(base, 3, shuffle=True, seed=0, workers=0, drop_last=False).epoch(0))
    assert sum(b.skipped for b in batches) == 2  # bad.jpg and truncated.jpg
    assert sum(len(b) for b in batches) == len(base) - 2
    for b in batches:
        assert b.images.shape == (len(b), 3, 20, 20) and len(b.indices) == len(b)


def test_default_workers(monkeypatch):
    n = default_workers()
    assert isinstance(n, int) and 0 <= n <= 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(os.cpu_count() or 1))
    assert default_workers() == 0  # every core already runs a training process


# ----------------------------------------------------------------------------- real data


def test_real_images_load_as_rgb_squares():
    imagenet, cifar = SHARED_DATA / "imagenet-sample", SHARED_DATA / "cifar10"
    if not (imagenet / "val").is_dir() or not (cifar / "train").is_dir():
        pytest.skip(f"shared data not found under {SHARED_DATA}")
    ds = ImageFolderImages(imagenet, "val", 77)
    def mode(path: Path) -> str:
        with Image.open(path) as im:
            return im.mode

    grey = [i for i, (p, _) in enumerate(ds.samples) if mode(p) != "RGB"]
    assert grey, "the ImageNet sample should contain greyscale images"
    for i in grey[:3] + [0, len(ds) // 2, len(ds) - 1]:
        img, label = ds[i]
        assert img.shape == (3, 77, 77) and img.dtype == torch.uint8
        assert label == ds.samples[i][1]
    train, val = ImageFolderImages(cifar, "train", 32), ImageFolderImages(cifar, "val", 32)
    check_same_classes(train, val)
    assert train.num_classes == 10
    for ds, size in ((val, 32), (ImageFolderImages(cifar, "val", 77), 77)):
        for i in (0, len(ds) - 1):
            img, label = ds[i]
            assert img.shape == (3, size, size) and img.dtype == torch.uint8
    with Image.open(val.samples[0][0]) as im:
        raw = np.array(im.convert("RGB"))
    assert torch.equal(val[0][0], torch.from_numpy(raw).permute(2, 0, 1))  # 32px: untouched
