"""Centre-crop and ten-crop error of a trained net (Krizhevsky et al. 2012, sec. 5, "Test").

Ten-crop: the four corner patches and the centre patch, and their horizontal
reflections; the softmax outputs of the ten are averaged.

    python launch/evaluate.py checkpoint=RUN_DIR/model_final.pt [data=imagefolder data.root=PATH]
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from alexnet_mp import data
from alexnet_mp.parallel import placement
from alexnet_mp.net.arch import arch_options
from alexnet_mp.job.checkpoint import load_file
from alexnet_mp.job.launcher import Launcher
from alexnet_mp.data import BatchAugment, base_datasets
from alexnet_mp.errors import UserError
from alexnet_mp.io import atomic_write, check_not_a_folder, check_output_path
from alexnet_mp.net.model import build_model
from alexnet_mp.progress import Progress
from alexnet_mp.job.rundir import check_writable
from alexnet_mp.net.topk import topk_wrong

__all__ = ["evaluate_checkpoint", "load_trained_model", "open_data", "eval_augment"]

log = logging.getLogger("alexnet_mp")
CENTRE = 4  # index of the centre patch in data.ten_crop's order


def load_trained_model(path: Path):
    """(model, saved blob) from ``model_final.pt`` or a run directory holding one."""
    path = Path(path)
    if path.is_dir():
        path = path / "model_final.pt"
    blob = load_file(path)
    if not {"model", "state_dict", "stats", "data"} <= set(blob) or "config" not in blob["data"]:
        raise UserError(f"{path} is not a model file written by alexnet_mp training (no model/state_dict/stats)")
    m = blob["model"]
    model = build_model(m["name"], num_classes=m["num_classes"], input_size=m["input_size"], init=None,
                        **arch_options(m))
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as err:
        raise UserError(f"{path}: its weights do not fit the {m['name']} net it names ({str(err).splitlines()[0]})") from None
    return model.eval(), blob


def open_data(blob: dict, data_cfg: DictConfig | None, split: str, device: torch.device, *,
              allow_class_mismatch: bool = False, launcher: Launcher | None = None):
    """(dataset of ``split``, the training run's augmentation, the data config) for a trained
    net: its own data unless ``data_cfg`` names other data (same classes and image size;
    other class names only with ``allow_class_mismatch``, and a warning). ``launcher``: the job's
    notes (:func:`alexnet_mp.data.base_datasets`)."""
    dcfg = data_cfg if data_cfg is not None else OmegaConf.create(blob["data"]["config"])
    if int(dcfg.image_size) != blob["data"]["image_size"]:
        raise UserError(f"data.image_size={dcfg.image_size} but the model was trained on "
                        f"{blob['data']['image_size']}px images")
    train_base, val_base, _, _ = base_datasets(dcfg, launcher)
    base = val_base if split == "val" else train_base
    if len(base.classes) != blob["model"]["num_classes"]:
        raise UserError(f"the data has {len(base.classes)} classes but the model was trained on "
                        f"{blob['model']['num_classes']}")
    _check_class_names(list(base.classes), blob.get("classes"), allow_class_mismatch)
    return base, eval_augment(blob, device), dcfg


def _check_class_names(data_classes: list[str], trained: list[str] | None, allow: bool) -> None:
    """The same class names in the same order as the model learned (model files from before
    they were recorded are not checked); label i must mean what it meant in training."""
    if not trained or list(trained) == data_classes:
        return
    i = next(i for i, (a, b) in enumerate(zip(data_classes, trained)) if a != b)
    differ = sum(a != b for a, b in zip(data_classes, trained))
    what = (f"the data's class names differ from the model's ({differ} of {len(trained)}; label {i} is "
            f"{data_classes[i]!r} in the data, {trained[i]!r} in the model)")
    if not allow:
        raise UserError(f"{what}: use the classes it was trained on, or pass allow_class_mismatch=true")
    log.warning("%s; evaluating anyway (allow_class_mismatch=true)", what)


def eval_augment(blob: dict, device: torch.device) -> BatchAugment:
    """The test-time crops of a trained net: the training run's mean image, subtracted as it was."""
    return BatchAugment(data.DatasetStats(**blob["stats"]), blob["data"]["crop"], seed=0, device=device,
                        mean_subtraction=bool(blob["data"]["config"].get("mean_subtraction", True)))


def _output_path(cfg: DictConfig) -> Path:
    """Where the result goes, checked writable before any evaluation (one line otherwise)."""
    ckpt = Path(str(cfg.checkpoint))
    data_name = cfg.data.name if cfg.get("data") is not None else ""
    if cfg.output:  # like predict's and export's: a missing folder is refused, not made (a mistyped path)
        return check_output_path(Path(str(cfg.output)))
    out = (ckpt if ckpt.is_dir() else ckpt.parent) / f"eval-{data_name}.json"
    if out.parent.is_dir():  # else the checkpoint is not there, which loading reports
        check_writable(out.parent, "the output folder")
    return check_not_a_folder(out)


@torch.no_grad()
def evaluate_checkpoint(cfg: DictConfig, launcher: Launcher | None = None) -> dict:
    """``launcher``: the job's notes (:func:`open_data`)."""
    torch.set_num_threads(int(cfg.threads))
    # split, device and the numbers are checked by the schema (alexnet_mp.config.evaluate).
    device = placement.single_device(str(cfg.device))
    out = _output_path(cfg)
    model, blob = load_trained_model(Path(str(cfg.checkpoint)))
    model.to(device)
    base, augment, dcfg = open_data(blob, cfg.get("data"), str(cfg.split), device,
                                    allow_class_mismatch=bool(cfg.allow_class_mismatch), launcher=launcher)
    wrong = torch.zeros(2, 2, dtype=torch.int64, device=device)  # (centre, ten-crop) x (top-1, top-5)
    seen = skipped = 0
    loader = data.BatchLoader(base, int(cfg.batch_size), shuffle=False, seed=0, drop_last=False,
                              workers=data.default_workers() if str(cfg.workers) == "auto" else int(cfg.workers),
                              pin_memory=device.type == "cuda")
    with Progress(len(loader), "evaluate", unit="batch", enabled=bool(cfg.progress), scale=int(cfg.batch_size),
                  scale_unit="images") as bar:
        for batch in loader.epoch(0):
            skipped += batch.skipped
            bar.update(1)
            if not len(batch):
                continue
            labels = batch.labels.to(device, non_blocking=True)
            patches = augment.ten_crop(batch.images.to(device, non_blocking=True))  # on the device
            b, n = patches.shape[:2]
            logits = model(patches.flatten(0, 1)).view(b, n, -1)
            # Patch 4 is the centre crop (corners first, then the centre, then the reflections).
            wrong[0] += topk_wrong(logits[:, CENTRE], labels)
            wrong[1] += topk_wrong(logits.softmax(2).mean(1), labels)
            seen += len(batch)
    counts = dict(zip(("center", "ten_crop"), wrong.tolist()))
    result = {k: {"top1_err": v[0] / max(seen, 1), "top5_err": v[1] / max(seen, 1)} for k, v in counts.items()}
    result.update(images=seen, skipped_images=skipped, checkpoint=str(cfg.checkpoint), split=str(cfg.split),
                  data=str(dcfg.name))
    if out.name == "eval-.json":
        out = out.with_name(f"eval-{dcfg.name}.json")
    atomic_write(out, json.dumps(result, indent=1))
    log.info("centre crop: top-1 %.2f%%, top-5 %.2f%%; ten-crop: top-1 %.2f%%, top-5 %.2f%% (%d images) -> %s",
             100 * result["center"]["top1_err"], 100 * result["center"]["top5_err"],
             100 * result["ten_crop"]["top1_err"], 100 * result["ten_crop"]["top5_err"], seen, out)
    return result
