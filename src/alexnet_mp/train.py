"""Train AlexNet with the paper's recipe (Krizhevsky et al. 2012, sec. 5), one tower per process.

    torchrun --nproc_per_node=2 launch/train.py                       # the two-tower net, synthetic data
    torchrun --nproc_per_node=2 launch/train.py data=imagefolder data.root=PATH
    python launch/train.py model=half                                 # the one-GPU half net
    torchrun --nproc_per_node=2 launch/train.py hydra.run.dir=DIR resume=true

Two processes train the full net as two towers; one process trains either net
whole. Every rank computes the same loss and metrics (the logits are gathered on
every device); only rank 0 prints and writes shared files.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from alexnet_mp import comm, data
from alexnet_mp.checkpoint import CheckpointStore, atomic_save, atomic_write_text
from alexnet_mp.errors import UserError
from alexnet_mp.model import AlexNet, build_model
from alexnet_mp.optim import PlateauSchedule, build_optimizer
from alexnet_mp.parallel import full_state_dict, init_towers, parallelize
from alexnet_mp.report import MetricsLog

__all__ = ["train", "Data", "build_data", "topk_errors"]

log = logging.getLogger("alexnet_mp")


# -- the configuration ----------------------------------------------------------------------

def _integer(low: int):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _number(positive: bool):
    return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and (v > 0 if positive else v >= 0)


_CHECKS = (  # (keys, what they must be, test)
    (("epochs", "batch_size", "threads", "log_every_steps", "data.image_size", "data.stats_samples"),
     "a positive integer", _integer(1)),
    (("seed", "data.seed", "checkpoint.every_steps", "checkpoint.keep", "debug.kill_at_step", "debug.max_steps",
      "schedule.patience", "schedule.max_drops", "schedule.warmup_steps"), "a non-negative integer", _integer(0)),
    (("optim.lr",), "a positive number", _number(positive=True)),
    (("optim.momentum", "optim.weight_decay", "data.pca_sigma", "schedule.threshold"),
     "a non-negative number", _number(positive=False)),
    (("resume", "progress", "data.mean_subtraction", "data.flip", "debug.check_batches"),
     "true or false", lambda v: isinstance(v, bool)),
    (("device",), "auto, cpu or cuda", lambda v: v in ("auto", "cpu", "cuda")),
    (("data.pca_scale",), "sqrt or eigenvalue", lambda v: v in ("sqrt", "eigenvalue")),
    (("data.workers",), "auto or a non-negative integer", lambda v: v == "auto" or _integer(0)(v)),
)
_SYNTHETIC_CHECKS = ((("data.num_classes", "data.train_size", "data.val_size"), "a positive integer", _integer(1)),)


def validate_config(cfg: DictConfig) -> None:
    """One-line errors for values of the wrong type or range, before any work starts."""
    checks = _CHECKS + (_SYNTHETIC_CHECKS if cfg.data.name == "synthetic" else ())
    for keys, meaning, ok in checks:
        for key in keys:
            value = OmegaConf.select(cfg, key, default=None)
            if not ok(value):
                raise UserError(f"{key} must be {meaning}, not {value!r}")


# -- processes and devices -----------------------------------------------------------------------

def _processes(cfg: DictConfig) -> tuple[int, int, torch.device]:
    """(rank, world size, device) after checking the model can use this many processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 2 and cfg.model.name != "full":
        raise UserError(f"model={cfg.model.name} runs in one process; launch it with --nproc_per_node=1 "
                        f"(only the full net splits into two towers)")
    if world not in (1, 2):
        raise UserError(f"the two-tower net runs on exactly 2 processes (one per tower) or 1 (the whole net); "
                        f"got WORLD_SIZE={world}")
    if world == 2:
        towers = init_towers(towers=2, threads=int(cfg.threads), device=str(cfg.device))
        return towers.rank, 2, towers.device
    torch.set_num_threads(int(cfg.threads))
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no GPU is visible")
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    return 0, 1, torch.device("cuda", 0) if use_cuda else torch.device("cpu")


# -- data ---------------------------------------------------------------------------------------

@dataclass
class Data:
    train: data.TransformedDataset
    val: data.TransformedDataset
    stats: data.DatasetStats
    num_classes: int
    image_size: int
    crop: int


def _base_datasets(dcfg: DictConfig):
    if dcfg.name == "synthetic":
        make = lambda split, n: data.SyntheticImages(split, int(dcfg.num_classes), int(n), int(dcfg.image_size),  # noqa: E731
                                                     int(dcfg.seed))
        return make("train", dcfg.train_size), make("val", dcfg.val_size), None
    if dcfg.name == "imagefolder":
        if OmegaConf.is_missing(dcfg, "root") or dcfg.root in (None, ""):
            raise UserError("data=imagefolder needs data.root=PATH (a folder with train/ and val/)")
        root = Path(str(dcfg.root)).expanduser()
        train = data.ImageFolderImages(root, "train", int(dcfg.image_size))
        val = data.ImageFolderImages(root, "val", int(dcfg.image_size))
        data.check_same_classes(train, val)
        return train, val, root
    raise UserError(f"unknown data {dcfg.name!r}: choose synthetic or imagefolder")


def build_data(cfg: DictConfig, run_dir: Path, rank: int) -> Data:
    """Both splits with the paper's transforms; the statistics come from rank 0's cache."""
    dcfg = cfg.data
    train_base, val_base, root = _base_datasets(dcfg)
    crop = data.crop_size_for(int(dcfg.image_size), str(cfg.model.geometry))
    outcome = None
    if rank == 0:
        # Cached beside the data when it is writable (reused by later runs), else in the run.
        cache = run_dir / "dataset-stats.pt"
        if root is not None and str(dcfg.stats_cache) == "data" and _writable(root):
            cache = root / f".alexnet_mp-stats-{dcfg.image_size}px.pt"
        try:
            outcome = data.load_or_compute_stats(train_base, cache, int(dcfg.stats_samples), int(dcfg.seed),
                                                 progress=bool(cfg.progress))
        except UserError as err:
            outcome = err
    # Every rank gets the statistics, or the same error, so none waits for a rank that failed.
    outcome = comm.broadcast_object(outcome if isinstance(outcome, data.DatasetStats) else str(outcome))
    if not isinstance(outcome, data.DatasetStats):
        raise UserError(outcome)
    stats = outcome
    mean = stats if dcfg.mean_subtraction else data.DatasetStats(torch.zeros_like(stats.mean_image),
                                                                 stats.eigvals, stats.eigvecs)
    common = dict(crop=crop, flip=bool(dcfg.flip), pca_sigma=float(dcfg.pca_sigma),
                  pca_scale=str(dcfg.pca_scale), seed=int(cfg.seed))
    train = data.TransformedDataset(train_base, data.PaperTransform(mean, train=True, **common))
    val = data.TransformedDataset(val_base, data.PaperTransform(mean, train=False, **common))
    return Data(train, val, mean, len(train_base.classes), int(dcfg.image_size), crop)


def _writable(folder: Path) -> bool:
    # os.access says yes to root even for a folder without write bits (a read-only
    # dataset mount, shared data); respect the bits too.
    return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)


def _workers(dcfg: DictConfig) -> int:
    return data.default_workers() if str(dcfg.workers) == "auto" else int(dcfg.workers)


# -- metrics ----------------------------------------------------------------------------------

def topk_errors(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """Number of top-1 and top-5 mistakes in a batch (top-k capped at the class count)."""
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hit = top == labels[:, None]
    return int((~hit[:, 0]).sum()), int((~hit.any(1)).sum())


@torch.no_grad()
def evaluate(model: AlexNet, dataset: data.TransformedDataset, cfg: DictConfig, device: torch.device) -> dict:
    """Centre-crop top-1 and top-5 error over the whole validation set."""
    model.eval()
    wrong1 = wrong5 = seen = skipped = 0
    loader = data.make_loader(dataset, int(cfg.batch_size), shuffle=False, seed=int(cfg.seed), epoch=0,
                              workers=_workers(cfg.data), drop_last=False)
    for images, labels, n_skipped in loader:
        skipped += n_skipped
        if not len(labels):
            continue
        w1, w5 = topk_errors(model(images.to(device)), labels.to(device))
        wrong1, wrong5, seen = wrong1 + w1, wrong5 + w5, seen + len(labels)
    model.train()
    return {"val_top1_err": wrong1 / max(seen, 1), "val_top5_err": wrong5 / max(seen, 1), "val_images": seen,
            "val_skipped": skipped}


# -- the run directory ------------------------------------------------------------------------

def _model_signature(cfg: DictConfig, num_classes: int, crop: int, world: int) -> dict:
    return {"name": str(cfg.model.name), "num_classes": num_classes, "input_size": crop,
            "geometry": str(cfg.model.geometry), "lrn": str(cfg.model.lrn), "towers": world}


def _check_run_dir(run_dir: Path, store: CheckpointStore, resume: bool) -> None:
    finished = (run_dir / "summary.json").is_file()
    if resume:
        if finished:
            raise UserError(f"the run in {run_dir} has already finished (summary.json); nothing to resume")
        return
    if finished or store.latest() is not None:
        raise UserError(f"{run_dir} already holds a run; pass resume=true to continue it, "
                        f"or choose another hydra.run.dir")


# What may differ between a run and its resumption: how long it runs and how it reports.
_RESUME_MAY_CHANGE = ("epochs", "resume", "progress", "log_every_steps", "checkpoint.", "debug.", "threads",
                      "device", "data.workers", "data.root", "data.stats_cache")


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _check_resumable(saved: dict, now: dict, folder: Path) -> None:
    before, after = _flatten(saved), _flatten(now)
    changed = sorted(k for k in set(before) | set(after)
                     if before.get(k) != after.get(k) and not k.startswith(_RESUME_MAY_CHANGE))
    if changed:
        listed = ", ".join(f"{k}={before.get(k)!r} here {after.get(k)!r}" for k in changed[:6])
        raise UserError(f"checkpoint {folder} was written with another configuration ({listed}); "
                        f"resume with the same settings or start a new run directory")


def _agree_on_run_dir(mine: Path) -> Path:
    """Rank 0's run directory on every rank: Hydra's timestamped default can differ by a
    second between processes, so the others follow rank 0 and drop their empty folder."""
    agreed = Path(comm.broadcast_object(str(mine)))
    if agreed.resolve() != mine.resolve() and mine.is_dir() and not any(mine.iterdir()):
        mine.rmdir()
    agreed.mkdir(parents=True, exist_ok=True)
    return agreed


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _throughput(history: list[dict]) -> float | None:
    """Training images per second over every finished epoch."""
    seconds = sum(h["seconds"] for h in history)
    return sum(h["images_per_s"] * h["seconds"] for h in history) / seconds if seconds else None


# -- training ---------------------------------------------------------------------------------

def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Run (or resume) one training run in ``run_dir``; return the summary (every rank)."""
    validate_config(cfg)
    rank, world, device = _processes(cfg)
    main = rank == 0
    run_dir = _agree_on_run_dir(run_dir)
    store = CheckpointStore(run_dir, rank, world, keep=int(cfg.checkpoint.keep))
    _check_run_dir(run_dir, store, bool(cfg.resume))
    comm.barrier()

    d = build_data(cfg, run_dir, rank)
    if str(cfg.model.num_classes) not in ("auto", str(d.num_classes)):
        raise UserError(f"model.num_classes={cfg.model.num_classes} but the data has {d.num_classes} classes")
    if len(d.train) < int(cfg.batch_size):
        raise UserError(f"batch_size={cfg.batch_size} is larger than the {len(d.train)} training images; "
                        f"an epoch would have no step")
    signature = _model_signature(cfg, d.num_classes, d.crop, world)

    torch.manual_seed(int(cfg.seed))  # the same weights on every rank; a tower keeps its share
    model = build_model(cfg.model.name, num_classes=d.num_classes, input_size=d.crop,
                        geometry=str(cfg.model.geometry), lrn=str(cfg.model.lrn), init=str(cfg.model.init))
    model = parallelize(model, device=device) if world == 2 else model.to(device)
    optimizer = build_optimizer(model.parameters(), lr=float(cfg.optim.lr), momentum=float(cfg.optim.momentum),
                                weight_decay=float(cfg.optim.weight_decay), rule=str(cfg.optim.rule))
    schedule = PlateauSchedule(optimizer, **{k: cfg.schedule[k] for k in
                                             ("factor", "patience", "threshold", "max_drops", "warmup_steps")})

    epoch, batch_in_epoch, step = 0, 0, 0
    epoch_loss, epoch_images, epoch_seconds, skipped = 0.0, 0, 0.0, 0
    torch.manual_seed(int(cfg.seed) + 1)  # dropout's stream, restored on resume
    latest = store.latest() if cfg.resume else None
    if latest is not None:
        shard, meta = store.load(latest, signature)
        _check_resumable(meta.get("config", {}), OmegaConf.to_container(cfg, resolve=True), latest)
        model.load_state_dict(shard["model"])
        optimizer.load_state_dict(shard["optimizer"])
        schedule.load_state_dict(shard["schedule"])
        _set_rng_state(shard["rng"], device)
        p = shard["position"]
        epoch, batch_in_epoch, step = p["epoch"], p["batch_in_epoch"], p["step"]
        epoch_loss, epoch_images, epoch_seconds, skipped = p["epoch_loss"], p["epoch_images"], p["epoch_seconds"], p["skipped"]
        if main:
            log.info("resuming from %s (epoch %d, batch %d, step %d)", latest, epoch, batch_in_epoch, step)
    elif cfg.resume and main:
        log.info("resume=true but %s has no checkpoint yet: starting from scratch", run_dir)

    metrics = MetricsLog(run_dir, enabled=main, last_epoch=epoch)
    if main:
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        where = f"{world} towers, {device.type}" if world == 2 else f"1 process, {device}"
        log.info("training %s net (%s): %d train / %d val images, %d classes, %dpx crops, run dir %s",
                 cfg.model.name, where, len(d.train), len(d.val), d.num_classes, d.crop, run_dir)

    def diverged(what: str, at_step: int) -> None:
        raise UserError(f"{what} at epoch {epoch + 1}, step {at_step}; stopped. "
                        f"Last good checkpoint: {store.latest() or 'none'} (try a lower optim.lr)")

    def save(reason: str) -> None:
        shard = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                 "rng": _rng_state(device),
                 "position": {"epoch": epoch, "batch_in_epoch": batch_in_epoch, "step": step,
                              "epoch_loss": epoch_loss, "epoch_images": epoch_images,
                              "epoch_seconds": epoch_seconds, "skipped": skipped}}
        finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
        if not comm.all_ranks(finite):
            diverged("the weights became non-finite", step)
        name = f"step-{step:08d}-epoch-{epoch:04d}-batch-{batch_in_epoch:07d}"
        latest = store.latest()
        if latest is not None and latest.name == name:
            return  # this position is saved already (every_steps fell on the same step)
        store.save(name, shard, {"model": signature, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                                 "step": step, "reason": reason, "config": OmegaConf.to_container(cfg, resolve=True)})

    max_steps, kill_at = int(cfg.debug.max_steps), int(cfg.debug.kill_at_step)
    every, log_every = int(cfg.checkpoint.every_steps), int(cfg.log_every_steps)
    check_batches = bool(cfg.debug.check_batches)
    run_start = time.perf_counter()
    stopped_early = False
    model.train()
    while epoch < int(cfg.epochs):
        loader = data.make_loader(d.train, int(cfg.batch_size), shuffle=True, seed=int(cfg.seed), epoch=epoch,
                                  start_batch=batch_in_epoch, workers=_workers(cfg.data), drop_last=True)
        bar = tqdm(total=batch_in_epoch + len(loader), initial=batch_in_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not (main and cfg.progress), unit="batch", dynamic_ncols=True, leave=False)
        tick = time.perf_counter()
        for images, labels, n_skipped in loader:
            skipped += n_skipped
            if not len(labels):
                batch_in_epoch += 1
                continue
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if check_batches and not comm.all_equal(torch.stack([images.sum(), labels.sum().to(images)])):
                raise RuntimeError("the towers received different batches")
            loss = F.cross_entropy(model(images), labels)
            if not torch.isfinite(loss):
                diverged(f"the loss became {loss.item()}", step + 1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            schedule.begin_step(step + 1)
            optimizer.step()
            now = time.perf_counter()
            epoch_seconds += now - tick
            tick = now
            step, batch_in_epoch = step + 1, batch_in_epoch + 1
            epoch_loss += loss.item() * len(labels)
            epoch_images += len(labels)
            bar.update(1)
            if step % log_every == 0 or step == 1:
                speed = epoch_images / max(epoch_seconds, 1e-9)
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{schedule.lr:.2g}", img_s=f"{speed:.0f}")
                metrics.scalar("train/loss", loss.item(), step)
            if every and step % every == 0:
                save("every_steps")
            if kill_at == step:
                os.kill(os.getpid(), signal.SIGKILL)  # a crash without warning, for the tests
            if max_steps and step >= max_steps:
                stopped_early = True
                break
            tick = time.perf_counter()
        bar.close()
        if stopped_early:
            save("max_steps")  # a clean stop: resume=true with a larger debug.max_steps goes on from here
            break
        result = evaluate(model, d.val, cfg, device)
        row = {"epoch": epoch + 1, "train_loss": epoch_loss / max(epoch_images, 1), **result,
               "train_skipped": skipped,
               "lr": schedule.lr, "images_per_s": epoch_images / max(epoch_seconds, 1e-9),
               "seconds": epoch_seconds, "step": step}
        dropped = schedule.step(result["val_top1_err"])
        metrics.epoch(row)
        if main:
            log.info("epoch %d/%d: train loss %.4f, val top-1 %.2f%%, top-5 %.2f%%, %.0f images/s%s",
                     epoch + 1, cfg.epochs, row["train_loss"], 100 * row["val_top1_err"], 100 * row["val_top5_err"],
                     row["images_per_s"], f"; learning rate now {schedule.lr:.2g}" if dropped else "")
        epoch, batch_in_epoch = epoch + 1, 0
        epoch_loss, epoch_images, epoch_seconds, skipped = 0.0, 0, 0.0, 0
        save("epoch")

    state = full_state_dict(model) if world == 2 else {k: v.cpu() for k, v in model.state_dict().items()}
    final = run_dir / "model_final.pt"
    history = metrics.history()
    summary = {
        "model": str(cfg.model.name), "towers": world, "device": device.type, "epochs": epoch, "steps": step,
        "val_top1_err": history[-1]["val_top1_err"] if history else None,
        "val_top5_err": history[-1]["val_top5_err"] if history else None,
        "best_val_top1_err": min((h["val_top1_err"] for h in history), default=None),
        "chance_top1_err": 1 - 1 / d.num_classes,
        "images_per_s": _throughput(history),
        "seconds": time.perf_counter() - run_start,
        # Every epoch skips the same unreadable files: count them once, train and val.
        "skipped_images": max((h.get("train_skipped", 0) for h in history), default=skipped)
                          + (history[-1].get("val_skipped", 0) if history else 0),
        "final_model": str(final.resolve()),
        "stopped_early": stopped_early,
    }
    if main:
        atomic_save({"model": signature, "state_dict": state,
                     "data": {"name": str(cfg.data.name), "image_size": d.image_size, "crop": d.crop,
                              "config": OmegaConf.to_container(cfg.data, resolve=True)},
                     "stats": {"mean_image": d.stats.mean_image, "eigvals": d.stats.eigvals,
                               "eigvecs": d.stats.eigvecs}}, final)
        if not stopped_early:
            atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1))
        metrics.close(plot=True)
        log.info("done: %s", json.dumps({k: summary[k] for k in ("val_top1_err", "val_top5_err", "seconds")}))
    comm.barrier()
    return summary
