"""The end of a run: the whole net's weights with what evaluation and prediction need
beside them (``model_final.pt``: signature, class names, data settings, the training set's
statistics, provenance), and the run's summary (``summary.json``, only for a run that went
all its epochs)."""

from __future__ import annotations

import json
import logging
import time

from omegaconf import OmegaConf

from alexnet_mp.job import provenance
from alexnet_mp.parallel import ranks
from alexnet_mp.io import atomic_save, atomic_write
from alexnet_mp.parallel.hybrid import hybrid_full_state_dict
from alexnet_mp.parallel.towers import full_state_dict
from alexnet_mp.train.start import Run

__all__ = ["finish_run"]

log = logging.getLogger("alexnet_mp")


def finish_run(run: Run, stopped_early: bool, started: float) -> dict:
    """Collective: save the final model and the summary (main process); return the summary
    on every rank. ``started``: ``time.perf_counter()`` when training began."""
    model, towers = run.state.model, run.placement.towers
    # Every rank: gathering a tower pair's weights is a collective.
    final_state = (full_state_dict(model) if towers == 2 else hybrid_full_state_dict(model) if run.state.hybrid
                   else {k: v.cpu() for k, v in model.state_dict().items()})
    summary = _summary(run, stopped_early, started)
    if run.placement.main:
        d = run.data
        # The one-process format whatever the scheme (the hybrid's shards are put together above).
        signature = {**run.checkpoints.signature, "towers": 1} if run.state.hybrid else run.checkpoints.signature
        atomic_save({"model": signature, "state_dict": final_state,
                     "provenance": summary["provenance"], "classes": list(d.train.classes),
                     "data": {"name": str(run.cfg.data.name), "image_size": d.image_size, "crop": d.crop,
                              "config": OmegaConf.to_container(run.cfg.data, resolve=True)},
                     "stats": {"mean_image": d.stats.mean_image, "eigvals": d.stats.eigvals,
                               "eigvecs": d.stats.eigvecs}}, run.run_dir / "model_final.pt")
        if not stopped_early:
            atomic_write(run.run_dir / "summary.json", json.dumps(summary, indent=1))
        run.metrics.close(plot=True)
        log.info("done: %s", json.dumps({k: summary[k] for k in ("val_top1_err", "val_top5_err", "seconds")}))
    ranks.barrier()
    return summary


def _summary(run: Run, stopped_early: bool, started: float) -> dict:
    cfg, placement, p = run.cfg, run.placement, run.state.position
    history = run.metrics.history()
    last = history[-1] if history else {}
    return {
        "model": str(cfg.model.name), "towers": placement.towers, "replicas": placement.replicas,
        "device": placement.device.type, "epochs": p.epoch, "steps": p.step,
        "val_top1_err": last.get("val_top1_err"),
        "val_top5_err": last.get("val_top5_err"),
        "train_loss": last.get("train_loss"),
        "best_val_top1_err": min((h["val_top1_err"] for h in history), default=None),
        "chance_top1_err": 1 - 1 / run.data.num_classes,
        "images_per_s": _throughput(history),
        "seconds": time.perf_counter() - started,
        # Every epoch skips the same unreadable files: count them once, train and val.
        "skipped_images": max((h.get("train_skipped", 0) for h in history), default=p.skipped)
                          + last.get("val_skipped", 0),
        "final_model": str((run.run_dir / "model_final.pt").resolve()),
        "stopped_early": stopped_early,
        "provenance": provenance.record(cfg),
    }


def _throughput(history: list[dict]) -> float | None:
    """Training images per second over every finished epoch."""
    seconds = sum(h["seconds"] for h in history)
    return sum(h["images_per_s"] * h["seconds"] for h in history) / seconds if seconds else None
