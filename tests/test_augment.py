"""Augmentation per batch on the training device (sec. 4.1, 5) against the per-image reference."""

from __future__ import annotations

import pytest
import torch

from alexnet_mp import data
from alexnet_mp.data import BatchAugment
from alexnet_mp.errors import UserError
from benchmarks.data.per_image import PaperTransform

S, CROP, N = 40, 34, 48


@pytest.fixture(scope="module")
def synth():
    ds = data.SyntheticImages("train", num_classes=4, size=N, image_size=S, seed=1)
    stats = data.compute_stats(ds, max_samples=N, seed=0, progress=False)
    images = torch.stack([ds[i][0] for i in range(N)])
    return ds, stats, images


@pytest.mark.parametrize("flip, sigma, scale, mean", [(True, 0.1, "sqrt", True), (False, 0.0, "sqrt", True),
                                                      (True, 0.3, "eigenvalue", False)])
def test_batch_augmentation_equals_the_per_image_transform_bit_for_bit(synth, flip, sigma, scale, mean):
    _, stats, images = synth
    ref_stats = stats if mean else data.DatasetStats(torch.zeros_like(stats.mean_image), stats.eigvals, stats.eigvecs)
    per_image = PaperTransform(ref_stats, CROP, train=True, flip=flip, pca_sigma=sigma, pca_scale=scale, seed=3)
    augment = BatchAugment(stats, CROP, seed=3, flip=flip, pca_sigma=sigma, pca_scale=scale, mean_subtraction=mean)
    indices = torch.randperm(N, generator=torch.Generator().manual_seed(0))[:20]
    for epoch in (0, 5):
        expected = torch.stack([per_image(images[i], int(i), epoch) for i in indices])
        got = augment.train(images[indices], indices, epoch)
        assert got.dtype == torch.float32 and got.shape == (20, 3, CROP, CROP)
        assert torch.equal(got, expected)
        # The GPU's single gather computes the same numbers as the CPU's per-image slices.
        d = data.draw_augmentations(3, epoch, indices, image_size=S, crop=CROP, train=True, flip=flip, pca_sigma=sigma)
        shift = data.pca_shift(d.alpha, augment.pca_w, augment.pca_basis) if sigma else None
        assert torch.equal(augment._crops_by_gather(images[indices], d.top, d.left, d.flip, shift), expected)
    if flip:
        assert d.flip.any() and not d.flip.all()


def test_centre_and_ten_crop_equal_the_per_image_versions(synth):
    _, stats, images = synth
    augment = BatchAugment(stats, CROP, seed=0)
    per_image = PaperTransform(stats, CROP, train=False)
    assert torch.equal(augment.centre(images), torch.stack([per_image(img, i, 0) for i, img in enumerate(images)]))
    assert torch.equal(augment.ten_crop(images), torch.stack([per_image.test_ten_crop(img) for img in images]))


def test_draws_depend_on_seed_epoch_and_index_only(synth):
    kw = dict(image_size=S, crop=CROP, train=True)
    whole = data.draw_augmentations(7, 2, torch.arange(N), **kw)
    for start in range(0, N, 5):  # any grouping into batches gives each sample the same draw
        part = data.draw_augmentations(7, 2, torch.arange(start, min(start + 5, N)), **kw)
        for a, b in zip(vars(whole).values(), vars(part).values()):
            assert torch.equal(a[start:start + 5], b)
    other_epoch = data.draw_augmentations(7, 3, torch.arange(N), **kw)
    other_seed = data.draw_augmentations(8, 2, torch.arange(N), **kw)
    for other in (other_epoch, other_seed):
        assert not torch.equal(whole.alpha, other.alpha) and not torch.equal(whole.top, other.top)
    many = data.draw_augmentations(0, 0, torch.arange(20000), image_size=256, crop=224, train=True, pca_sigma=0.1)
    assert set(many.top.tolist()) == set(range(33)) == set(many.left.tolist())  # every window reachable
    counts = torch.bincount(many.top, minlength=33).float()
    assert counts.min() > 0.8 * counts.mean() and counts.max() < 1.2 * counts.mean()  # uniform
    assert 0.48 < many.flip.float().mean() < 0.52
    assert 0.098 < many.alpha.std().item() < 0.102 and abs(many.alpha.mean().item()) < 0.003
    corr = torch.corrcoef(many.alpha.T)  # three independent normals
    assert (corr - torch.eye(3)).abs().max() < 0.03
    z = many.alpha / 0.1  # a normal's tails: 4.6% beyond 2 sigma
    assert 0.040 < (z.abs() > 2).double().mean() < 0.052


def test_workers_and_device_augmentation_give_the_same_batches(synth):
    ds, stats, _ = synth
    augment = BatchAugment(stats, CROP, seed=2)

    class InWorker:
        def __call__(self, images, indices, epoch):
            return augment.train(images, indices, epoch)

    on_device = data.BatchLoader(ds, 8, shuffle=True, seed=9, workers=0, drop_last=True)
    in_workers = data.BatchLoader(ds, 8, shuffle=True, seed=9, workers=2, drop_last=True, transform=InWorker())
    for a, b in zip(on_device.epoch(1), in_workers.epoch(1)):
        assert b.images.dtype == torch.float32
        assert torch.equal(augment.train(a.images, a.indices, a.epoch), b.images)


def test_images_of_another_size_are_a_clear_error(synth):
    _, stats, images = synth
    with pytest.raises(UserError, match="another image_size"):
        BatchAugment(stats, CROP, seed=0).train(images[:, :, :-2, :-2], torch.arange(N), 0)
    with pytest.raises(UserError, match="larger than"):
        BatchAugment(stats, S + 1, seed=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_augmentation_equals_the_cpu_one(synth):
    _, stats, images = synth
    cpu, gpu = BatchAugment(stats, CROP, seed=4), BatchAugment(stats, CROP, seed=4, device="cuda")
    idx = torch.arange(N)
    torch.testing.assert_close(gpu.train(images.cuda(), idx, 1).cpu(), cpu.train(images, idx, 1), rtol=0, atol=1e-4)
    assert torch.equal(gpu.ten_crop(images.cuda()).cpu(), cpu.ten_crop(images))


def test_reused_output_buffer_gives_the_same_crops(synth):
    _, stats, images = synth
    fresh, reused = BatchAugment(stats, CROP, seed=6), BatchAugment(stats, CROP, seed=6, reuse_output=True)
    idx = torch.arange(N)
    first = reused.train(images, idx, 0)
    expected = fresh.train(images, idx, 0)
    assert torch.equal(first, expected)
    again = reused.train(images, idx, 1)
    assert again.data_ptr() == first.data_ptr()  # the same memory, overwritten
    assert torch.equal(again, fresh.train(images, idx, 1))
