"""What a trained net sees in photographs: top-k classes with softmax probabilities.

The preprocessing is the paper's test path with the run's own data settings (sec. 2 and
sec. 5, "Test"): the shorter side rescaled to the run's ``image_size``, the central square
kept, the run's mean image subtracted, then the centre crop or, with ``ten_crop=true``,
the softmax averaged over the four corner and centre patches and their reflections. The
crops are :mod:`alexnet_mp.use.evaluate`'s, so a file here and the same image evaluated there
get the same answer.

    python launch/predict.py checkpoint=RUN_DIR images=PHOTO_OR_FOLDER [top_k=5] [ten_crop=true] [output=F.json]
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from alexnet_mp import data
from alexnet_mp.parallel import placement
from alexnet_mp.errors import UserError
from alexnet_mp.use.evaluate import eval_augment, load_trained_model
from alexnet_mp.io import atomic_write, check_output_path
from alexnet_mp.progress import Progress

__all__ = ["find_images", "class_names", "check_output_path", "predict_images", "predict"]

log = logging.getLogger("alexnet_mp")
CENTRE = 4  # the centre patch in alexnet_mp.data.ten_crop's order


def find_images(path: Path) -> list[Path]:
    """``path`` itself, or every image file under the folder ``path`` (recursively, sorted)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f"images={path}: no such file or folder")
    found = sorted(p for p in path.rglob("*") if p.suffix.lower() in data.IMAGE_EXTENSIONS and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not found:
        raise UserError(f"no images ({', '.join(data.IMAGE_EXTENSIONS)}) in {path} or its subfolders")
    return found


def class_names(blob: dict) -> list[str]:
    """The class names the net was trained on; model files from before they were saved get
    the synthetic data's names, or ``class_N``."""
    n = int(blob["model"]["num_classes"])
    if blob.get("classes"):
        return list(blob["classes"])
    if blob["data"]["name"] == "synthetic":
        return data.SyntheticImages("val", n, 0, 1, 0).classes
    return [f"class_{i}" for i in range(n)]


def _read(paths: list[Path], size: int) -> tuple[list[Path], list[torch.Tensor], list[str]]:
    """The readable images of ``paths`` (uint8 [3, size, size]) and one line per unreadable one."""
    kept, images, skipped = [], [], []
    for p in paths:
        img, why = data.read_image(p, size)
        if img is None:
            skipped.append(f"skipping unreadable image {p}: {why}")
        else:
            kept.append(p)
            images.append(img)
    return kept, images, skipped


@torch.no_grad()
def predict_images(model: torch.nn.Module, augment, images: torch.Tensor, ten_crop: bool) -> torch.Tensor:
    """Softmax probabilities [B, classes] for uint8 images [B, 3, S, S] on the augment's device."""
    if not ten_crop:
        return model(augment.centre(images)).float().softmax(1)
    patches = augment.ten_crop(images)
    b, n = patches.shape[:2]
    return model(patches.flatten(0, 1)).float().view(b, n, -1).softmax(2).mean(1)


def _table(records: list[dict], top_k: int) -> str:
    width = min(60, max(len(r["path"]) for r in records))
    head = f"{'image':<{width}}  " + "  ".join(f"{f'top {i + 1}':<24}" for i in range(top_k))
    rows = [head, "-" * len(head)]
    for r in records:
        name = r["path"] if len(r["path"]) <= width else "..." + r["path"][-width + 3:]
        rows.append(f"{name:<{width}}  " + "  ".join(f"{t['class'][:16]:<16} {100 * t['prob']:5.1f}% "
                                                     for t in r["top"]))
    return "\n".join(rows)


def predict(cfg: DictConfig) -> list[dict]:
    """Top-k classes of every image under ``cfg.images``; the table printed, JSON written if asked."""
    torch.set_num_threads(int(cfg.threads))
    top_k, batch_size = int(cfg.top_k), int(cfg.batch_size)
    if top_k < 1 or batch_size < 1:
        raise UserError(f"top_k and batch_size must be at least 1, got {top_k} and {batch_size}")
    out = check_output_path(Path(str(cfg.output))) if cfg.output else None
    device = placement.single_device(str(cfg.device))
    model, blob = load_trained_model(Path(str(cfg.checkpoint)))
    names = class_names(blob)
    if top_k > len(names):
        raise UserError(f"top_k={top_k} but the net knows {len(names)} classes: set top_k={len(names)} or less")
    paths = find_images(Path(str(cfg.images)))
    model.to(device)
    augment = eval_augment(blob, device)
    size = int(blob["data"]["image_size"])
    records, skipped = [], 0
    chunks = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    with Progress(len(paths), "predict", unit="image", enabled=bool(cfg.progress) and len(chunks) > 1) as bar:
        for chunk in chunks:
            kept, images, lines = _read(chunk, size)
            for line in lines:
                log.warning("%s", line)
            skipped += len(lines)
            bar.update(len(chunk))
            if not kept:
                continue
            probs = predict_images(model, augment, torch.stack(images).to(device), bool(cfg.ten_crop)).cpu()
            p, idx = probs.topk(top_k, dim=1)
            records += [{"path": str(path), "top": [{"class": names[c], "prob": float(q)} for q, c in
                                                    zip(p[i].tolist(), idx[i].tolist())]}
                        for i, path in enumerate(kept)]
    if not records:
        raise UserError(f"none of the {len(paths)} image file(s) under {cfg.images} could be read")
    print(_table(records, top_k), flush=True)
    log.info("%d image(s) classified%s, %s", len(records), " (ten-crop)" if cfg.ten_crop else " (centre crop)",
             f"{skipped} unreadable skipped" if skipped else "none skipped")
    if out is not None:
        atomic_write(out, json.dumps(records, indent=1))
        log.info("wrote %s", out)
    return records
