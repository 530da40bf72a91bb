"""The data path: images, their statistics, the paper's augmentations, the loader and the prepared dataset.

Krizhevsky et al. 2012, sec. 2 (the dataset, rescaled to 256 px), sec. 4.1 (random
crops, reflections and fancy PCA) and sec. 5 (the mean image, the ten test patches).
One concern a module:

- :mod:`~alexnet_mp.data.images`: the datasets and the decoding of one file (sec. 2);
- :mod:`~alexnet_mp.data.dataset_stats`: the mean image and the RGB eigen-decomposition (sec. 2, 4.1);
- :mod:`~alexnet_mp.data.seeds`: every random stream as a function of (seed, epoch, index);
- :mod:`~alexnet_mp.data.augment`: the draws of sec. 4.1 and their application per batch;
- :mod:`~alexnet_mp.data.loader`: whole uint8 batches of any epoch;
- :mod:`~alexnet_mp.data.memory`: a dataset decoded once into one uint8 tensor (small images, Figure 1);
- :mod:`~alexnet_mp.data.sources`: the dataset a ``data`` config names;
- :mod:`~alexnet_mp.data.prepared`: the prepared dataset's format and reader;
- :mod:`~alexnet_mp.data.prepare` and :mod:`~alexnet_mp.data.shards`: the prepare (writer).

Per-image work is reading (and decoding) the stored uint8 image; the augmentation runs
per batch on the training device. Every random draw is a function of (seed, epoch,
index), never of global or worker RNG, so both towers' processes, any number of loader
workers and a resumed run produce bit-identical batches.

    >>> ds = SyntheticImages("train", num_classes=10, size=2000, image_size=77, seed=0)
    >>> stats = load_or_compute_stats(ds, Path("runs/x/stats.pt"), max_samples=1000, seed=0)
    >>> loader = BatchLoader(ds, 128, shuffle=True, seed=0, workers=default_workers(), drop_last=True)
    >>> augment = BatchAugment(stats, crop_size_for(77, "224"), seed=0, device=device)
    >>> for batch in loader.epoch(0):
    ...     x = augment.train(batch.images.to(device), batch.indices, batch.epoch)

The prepare writer (:mod:`alexnet_mp.data.prepare`) is not imported here: training
does not need it.
"""

from alexnet_mp.data.augment import (BatchAugment, Draws, crop_size_for, draw_augmentations, pca_shift,
                                     pca_weights, ten_crop)
from alexnet_mp.data.images import (IMAGE_EXTENSIONS, ImageFolderImages, SyntheticImages, check_same_classes,
                                    decode, read_image, shorter_side_centre_crop)
from alexnet_mp.data.loader import (Batch, BatchLoader, BatchReader, EpochBatches, cores, default_workers,
                                    epoch_order, read_images, worker_context)
from alexnet_mp.data.prepared import FORMAT_VERSION, PreparedImages, open_prepared, read_manifest
from alexnet_mp.data.sources import base_datasets
from alexnet_mp.data.dataset_stats import DatasetStats, StatsSums, compute_stats, load_or_compute_stats, stats_from_sums

__all__ = [
    "Batch", "BatchAugment", "BatchLoader", "BatchReader", "DatasetStats", "Draws", "EpochBatches",
    "FORMAT_VERSION", "IMAGE_EXTENSIONS", "ImageFolderImages", "PreparedImages", "StatsSums", "SyntheticImages",
    "base_datasets", "check_same_classes", "compute_stats", "cores", "crop_size_for", "decode", "default_workers",
    "draw_augmentations", "epoch_order", "load_or_compute_stats", "open_prepared", "pca_shift",
    "pca_weights", "read_image", "read_images", "read_manifest", "shorter_side_centre_crop", "stats_from_sums", "ten_crop",
    "worker_context",
]
