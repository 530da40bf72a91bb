"""The images themselves: the datasets and the decoding of one file (Krizhevsky et al. 2012, sec. 2).

Sec. 2: ImageNet's images are of every size; each is rescaled so that its shorter side
is 256 and the central 256 x 256 patch kept (:func:`shorter_side_centre_crop`, of any
side S here). Three sources hand out such uint8 [3, S, S] images with their labels:
:class:`SyntheticImages` (generated, with real class structure), :class:`ImageFolderImages`
(``root/split/<class>/*.jpg``, decoded and resized per image) and the prepared dataset
of :mod:`alexnet_mp.data.prepared` (resized once, ahead of training).
"""

from __future__ import annotations

import io
import logging
import math
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from alexnet_mp.data.seeds import TAG_CLASS, TAG_IMAGE, generator
from alexnet_mp.errors import UserError
from alexnet_mp.job.launcher import Launcher

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderImages", "SyntheticImages", "check_same_classes", "decode",
           "read_image", "shorter_side_centre_crop"]

_log = logging.getLogger("alexnet_mp.data")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
_SYNTHETIC_VERSION = 1  # bump when the generator changes, so stats caches go stale


class SyntheticImages(Dataset):
    """Generated images with real class structure, deterministic from (seed, split, index).

    Class c has a base colour, a coloured blob at a preferred place and an oriented
    sinusoidal grating of its own orientation and frequency (independent of split and
    of ``num_classes``). Each image draws its own grating phase, small orientation and
    frequency jitter, blob jitter, brightness, colour cast and pixel noise, so classes
    overlap in raw pixels and a classifier has to find the grating.
    """

    def __init__(self, split: str, num_classes: int, size: int, image_size: int, seed: int):
        if split not in ("train", "val") or num_classes < 1 or size < 0 or image_size < 1:
            raise UserError(f"bad synthetic dataset: split={split!r} (train|val), "
                            f"num_classes={num_classes}, size={size}, image_size={image_size}")
        self.split, self.num_classes, self.size = split, num_classes, size
        self.image_size, self.seed = image_size, seed
        self.classes = [f"class_{c:02d}" for c in range(num_classes)]
        self._split_id = 1 if split == "train" else 2
        params = [self._class_params(c) for c in range(num_classes)]
        self._params = {k: torch.stack([p[k] for p in params]) for k in params[0]}
        lin = (torch.arange(image_size, dtype=torch.float32) + 0.5) / image_size * 2 - 1
        self._yy, self._xx = torch.meshgrid(lin, lin, indexing="ij")

    def _class_params(self, c: int) -> dict[str, Tensor]:
        g = generator(TAG_CLASS, self.seed, c)
        u = lambda *shape: torch.rand(shape, generator=g)  # noqa: E731
        amp = u(3) * 2 - 1
        return {"base": 60 + 135 * u(3), "amp": 45 * amp / amp.norm().clamp_min(1e-6),
                "theta": math.pi * u(1), "freq": 1.5 + 4.5 * u(1),
                "blob": u(2) - 0.5, "radius": 0.15 + 0.2 * u(1), "blob_rgb": 100 * u(3) - 50}

    def fingerprint(self) -> str:
        return (f"synthetic-v{_SYNTHETIC_VERSION}|{self.split}|{self.num_classes}|{self.size}|"
                f"{self.image_size}|{self.seed}")

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} images")
        label = index % self.num_classes
        p = {k: v[label] for k, v in self._params.items()}
        g = generator(TAG_IMAGE, self.seed, self._split_id, index)
        r = torch.rand(7, generator=g)
        theta = p["theta"] + 0.08 * torch.randn(1, generator=g)
        freq = p["freq"] * torch.exp(0.08 * torch.randn(1, generator=g))
        proj = self._xx * torch.cos(theta) + self._yy * torch.sin(theta)
        grating = torch.sin(math.pi * freq * proj + 2 * math.pi * r[0])
        centre = p["blob"] + 0.15 * torch.randn(2, generator=g)
        d2 = (self._xx - centre[0]) ** 2 + (self._yy - centre[1]) ** 2
        blob = torch.exp(-d2 / (2 * p["radius"] ** 2))
        cast = 30 * torch.randn(3, generator=g)
        noise = 18 * torch.randn(3, self.image_size, self.image_size, generator=g)
        brightness = 0.7 + 0.6 * r[1]
        img = brightness * (p["base"][:, None, None] + p["amp"][:, None, None] * grating
                            + p["blob_rgb"][:, None, None] * blob) + cast[:, None, None] + noise
        return img.clamp_(0, 255).round_().to(torch.uint8), label


def _layout_hint(root: Path) -> str:
    """What to do with a data root that is not ``root/{train,val}/<class>/``."""
    if (root / "cifar-10-batches-py").is_dir() or (root / "data_batch_1").is_file():
        return (f": {root} holds torchvision's CIFAR-10 download (pickled batches), not image folders; "
                f"write them with `make data` (python launch/get_data.py out=DIR) and train with data.root=DIR")
    return (f" (data=imagefolder reads {root}/train/<class>/*.jpg and {root}/val/<class>/*.jpg; "
            f"`make data` writes CIFAR-10 so, docs/data.md)")


class ImageFolderImages(Dataset):
    """``root/split/<class>/*.jpg|png|...``: classes are the sorted folder names.

    Each image is converted to RGB, its shorter side resized to ``image_size``
    (bilinear, antialiased) and the central square kept (sec. 5). An unreadable file
    gives ``None`` and a warning naming it, once per job (``launcher``: the job's notes,
    :class:`alexnet_mp.job.launcher.Launcher`; None: this process's, read here); the loader's
    workers get it with the dataset. :func:`alexnet_mp.data.loader.read_images` drops the image.
    """

    def __init__(self, root: str | Path, split: str, image_size: int, launcher: Launcher | None = None):
        self.launcher = launcher if launcher is not None else Launcher.of_this_process()
        self.root, self.split, self.image_size = Path(root), split, int(image_size)
        if not self.root.is_dir():
            raise UserError(f"data root {self.root} does not exist or is not a directory")
        split_dir = self.root / split
        if not split_dir.is_dir():
            raise UserError(f"split folder {split_dir} does not exist" + _layout_hint(self.root))
        self.classes = sorted(d.name for d in split_dir.iterdir()
                              if d.is_dir() and not d.name.startswith("."))
        if not self.classes:
            flat = any(f.suffix.lower() in IMAGE_EXTENSIONS for f in split_dir.iterdir() if f.is_file())
            raise UserError(f"no class folders in {split_dir}" + (
                ": its images lie directly in it, as in the official ILSVRC-2012 val archive; sort them into "
                "class folders first (docs/data.md, 'ImageNet from the official archives')" if flat else ""))
        self.num_classes = len(self.classes)
        self.samples: list[tuple[Path, int]] = []
        empty = []
        for label, name in enumerate(self.classes):
            files = sorted(f for f in (split_dir / name).iterdir()
                           if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
            empty += [] if files else [name]
            self.samples += [(f, label) for f in files]
        if not self.samples:
            raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in the "
                            f"{len(self.classes)} class folders of {split_dir}")
        if empty:
            _log.warning("%d class folders of %s hold no images (first: %s)",
                         len(empty), split_dir, empty[0])

    def fingerprint(self) -> str:
        first, last = (p.relative_to(self.root).as_posix() for p in
                       (self.samples[0][0], self.samples[-1][0]))
        return f"folder|{self.split}|{self.num_classes}|{len(self.samples)}|{first}|{last}"

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int] | None:
        path, label = self.samples[index]
        img, reason = read_image(path, self.image_size)
        if img is None:
            _say_once(f"skipping unreadable image {path}: {reason}", self.launcher)
        return None if img is None else (img, label)


_said: set[str] = set()


def _say_once(line: str, launcher: Launcher) -> None:
    """One warning line per job, however many processes (ranks, loader workers) and epochs
    meet the file: the first to note it in the job's shared folder says it."""
    if line not in _said:
        _said.add(line)
        if launcher.first_note(line):
            _log.warning("%s", line)


def decode(encoded: bytes) -> Tensor:
    """uint8 RGB [3, H, W] from an encoded image file's bytes.

    torchvision's libjpeg-turbo/libpng decoders first: faster than PIL on real photographs
    (docs/data.md, ``make bench-data``). torchvision 0.29 deprecates them in favour of
    TorchCodec, which the GPU machine's torch 2.11 stack lacks; PIL takes every format they
    refuse (BMP, TIFF, PPM, 16-bit PNG...).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import ImageReadMode, decode_image

            img = decode_image(torch.frombuffer(bytearray(encoded), dtype=torch.uint8), mode=ImageReadMode.RGB)
        if img.dtype == torch.uint8 and img.dim() == 3:
            return img
    except RuntimeError:
        pass  # a format or a variant torchvision does not read: PIL decides
    with Image.open(io.BytesIO(encoded)) as im:
        if im.mode == "P":  # palette transparency must go through RGBA to convert cleanly
            im = im.convert("RGBA")
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            im = im.point(lambda v: v * (1 / 256)).convert("L")  # 16-bit greyscale to 8 bits
        rgb = np.array(im.convert("RGB"), dtype=np.uint8)  # L, LA, CMYK, RGBA, YCbCr: alpha dropped
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


def shorter_side_centre_crop(img: Tensor, size: int) -> Tensor:
    """Sec. 2: rescale uint8 [3, H, W] so the shorter side is ``size`` (bilinear,
    antialiased), then keep the central ``size`` x ``size`` square."""
    from torchvision.transforms.v2 import functional as TF

    h, w = img.shape[-2:]
    scale = size / min(w, h)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    if (new_h, new_w) != (h, w):
        img = TF.resize(img, [new_h, new_w], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return img[:, top:top + size, left:left + size].contiguous()


def read_image(path: str | Path, size: int) -> tuple[Tensor | None, str]:
    """The paper's preprocessing of one file (sec. 2): (uint8 RGB [3, size, size], ""), or
    (None, why the file cannot be read); the caller says it, once, where it reports."""
    try:
        img = decode(Path(path).read_bytes())
        if min(img.shape[-2:]) < 1:
            raise ValueError("empty image")
        return shorter_side_centre_crop(img, size), ""
    except (OSError, ValueError, SyntaxError, EOFError, RuntimeError, Image.DecompressionBombError) as e:
        # PIL names the in-memory buffer it was given (<_io.BytesIO object at 0x...>): noise, and a
        # different line each time.
        why = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(e).splitlines()[0] if str(e) else "")
        return None, why or type(e).__name__


def check_same_classes(train_ds: Any, val_ds: Any) -> None:
    """Raise UserError unless both datasets have the same classes (hence the same labels)."""
    train, val = list(train_ds.classes), list(val_ds.classes)
    if train == val:
        return
    missing, extra = sorted(set(train) - set(val)), sorted(set(val) - set(train))
    show = lambda xs: ", ".join(xs[:5]) + (f", ... ({len(xs)} in all)" if len(xs) > 5 else "")  # noqa: E731
    raise UserError(f"train and val classes differ: missing from val: [{show(missing)}]; "
                    f"extra in val: [{show(extra)}]")

