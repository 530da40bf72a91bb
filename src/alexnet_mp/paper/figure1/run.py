"""``launch/figure1.py``: the rate search and the runs of Figure 1, kept as they finish.

Order: each neuron's rate search first, then the reported runs seed by seed, ReLU and tanh
of one seed together, so a run stopped part-way leaves whole pairs. After every run the
results so far are written (:mod:`alexnet_mp.paper.figure1.outputs`); run the same command again
with the same ``output_dir`` and the runs already there are kept, not trained again.

One invocation makes one row of the results: one net reading (``net``) on one number of training
images. The rows already in ``output_dir/figure1.json`` stay; a run of another net or another
number of images adds its row beside them, so one folder shows the trend with the net and the budget.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from alexnet_mp.parallel import placement
from alexnet_mp.data.images import ImageFolderImages, SyntheticImages
from alexnet_mp.data.memory import decode_into_memory, subset_indices
from alexnet_mp.errors import UserError
from alexnet_mp.paper.figure1.curves import fastest_rate
from alexnet_mp.paper.figure1.net import NEURONS, READINGS
from alexnet_mp.paper.figure1.outputs import row_key, write_outputs
from alexnet_mp.paper.figure1.training import Images, Recipe, train_curve
from alexnet_mp.job.provenance import record

__all__ = ["figure1", "run_key"]


def run_key(neuron: str, lr: float, seed: int, epochs: int) -> str:
    return f"{neuron}|lr={lr!r}|seed={seed}|epochs={epochs}"


def _check(cfg: DictConfig) -> None:
    """What the schema cannot say about lists, before any image is read."""
    bad = [n for n in cfg.neurons if n not in NEURONS]
    if bad or not cfg.neurons:
        raise UserError(f"neurons must be a non-empty list of {' and '.join(sorted(NEURONS))}, not {list(cfg.neurons)}")
    if not cfg.seeds or any(int(s) < 0 for s in cfg.seeds) or len(set(cfg.seeds)) != len(cfg.seeds):
        raise UserError(f"seeds must be distinct non-negative integers, at least one, not {list(cfg.seeds)}")
    if cfg.search.rates is not None and (not cfg.search.rates or any(float(r) <= 0 for r in cfg.search.rates)):
        raise UserError(f"search.rates must be positive learning rates, at least one, or null (the net's own "
                        f"grid), not {list(cfg.search.rates)}")
    if cfg.data.name == "imagefolder" and not cfg.data.root:
        raise UserError("data.root=PATH is needed: a folder with train/<class>/ images "
                        "(e.g. data/cifar10 from make data)")


def _device(name: str) -> torch.device:
    device = placement.single_device(name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one input shape all run long: let cuDNN pick its kernels once
    return device


def _load_images(dcfg: DictConfig, device: torch.device, divisor: float) -> tuple[Images, dict]:
    """The training images in memory (a batch: pixels / ``divisor`` less the mean image so divided) and
    what describes them (for the results' ``data``)."""
    if dcfg.name == "synthetic":
        size = int(dcfg.train_size) or 2000
        base = SyntheticImages("train", int(dcfg.num_classes), size, int(dcfg.image_size), int(dcfg.seed))
    else:
        base = ImageFolderImages(Path(str(dcfg.root)).expanduser(), "train", int(dcfg.image_size))
    tic = time.perf_counter()
    pixels, labels = decode_into_memory(base, subset_indices(len(base), int(dcfg.train_size), int(dcfg.seed)))
    about = {"name": str(dcfg.name), "root": None if dcfg.root is None else str(dcfg.root),
             "train_size": int(dcfg.train_size), "images": len(labels), "of": len(base), "seed": int(dcfg.seed),
             "image_size": int(dcfg.image_size), "classes": len(base.classes),
             "decode_seconds": round(time.perf_counter() - tic, 2)}
    print(f"figure1: {len(labels)} training images of {len(base)} decoded into memory in "
          f"{about['decode_seconds']:.1f} s", flush=True)
    return Images(pixels.to(device), labels.to(device), divisor), about


def _fingerprint(cfg: DictConfig, about: dict) -> dict:
    """What every stored run of a row depends on besides its own key: a rerun may reuse runs only under
    these. The data folder counts as its resolved path, so the same folder named from elsewhere matches."""
    keep = ("name", "root", "train_size", "images", "seed", "image_size", "classes")
    data = {k: about[k] for k in keep}
    if data["root"] is not None:
        data["root"] = str(Path(data["root"]).expanduser().resolve())
    return {"data": data, "batch_size": int(cfg.batch_size), "momentum": float(cfg.momentum), "net": str(cfg.net)}


def _stored_rows(path: Path, key: str, fingerprint: dict) -> dict:
    """The rows of ``path`` (none if it is not there); this invocation's row must hold runs of the same
    settings, or none."""
    if not path.is_file():
        return {}
    try:
        rows = json.loads(path.read_text())["rows"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{path} exists but is not a figure1.json with rows: move it away or choose another "
                        "output_dir") from None
    if key in rows and rows[key].get("fingerprint") != fingerprint:
        raise UserError(f"{path} holds runs of net {key.split('/')[0]} on {key.split('/')[1]} images under other "
                        f"settings (data, batch size or momentum): choose another output_dir, or move it away to "
                        f"start afresh")
    return dict(rows)


def _train(state: dict, images: Images, recipe: Recipe, neuron: str, lr: float, seed: int, epochs: int,
           tag: str, progress: bool) -> dict:
    """One run, or the stored one; the results are rewritten after a new run finishes."""
    key = run_key(neuron, lr, seed, epochs)
    if key in state["runs"]:
        return state["runs"][key]
    state["provenance"] = state["started"]  # the row now holds a run of this invocation's code

    def line(epoch: int, error: float, seconds: float) -> None:
        if progress:
            print(f"figure1: {tag} {neuron} lr={lr:g} seed={seed}: epoch {epoch}/{epochs} training error "
                  f"{error:.4f} ({seconds:.1f} s)", flush=True)

    run = train_curve(images, neuron, lr, seed, epochs, recipe, on_epoch=line)
    run.update(neuron=neuron, lr=lr, seed=seed, epochs=epochs, role=tag)
    state["runs"][key] = run
    write_outputs(state)
    return run


def figure1(cfg: DictConfig) -> dict:
    """Search each neuron's rate, train every seed at it, write this row (``net`` on its training images)
    into ``output_dir/figure1.{json,md,png}`` beside the rows already there; returns the row."""
    _check(cfg)
    torch.set_num_threads(int(cfg.threads))
    device = _device(str(cfg.device))
    out = Path(str(cfg.output_dir))
    out.mkdir(parents=True, exist_ok=True)
    reading = READINGS[str(cfg.net)]
    images, about = _load_images(cfg.data, device, reading.pixel_divisor)
    fingerprint, key = _fingerprint(cfg, about), row_key(str(cfg.net), about["images"])
    recipe = Recipe(int(cfg.batch_size), float(cfg.momentum), bool(cfg.channels_last), about["classes"],
                    reading.name)
    rows = _stored_rows(out / "figure1.json", key, fingerprint)
    stored = rows.get(key, {})
    settings = OmegaConf.to_container(cfg, resolve=True)
    rates = [float(r) for r in (cfg.search.rates if cfg.search.rates is not None else reading.rates)]
    settings["search"]["rates"] = rates
    # Provenance now, before any run: the code that started them (a later edit of the checkout is not theirs).
    # A row this invocation adds nothing to keeps the provenance it has.
    started = record(cfg)
    state = {"cfg": settings, "data": about, "fingerprint": fingerprint, "device": str(device), "out": out,
             "started": started, "provenance": stored.get("provenance", started), "rows": rows,
             "runs": dict(stored.get("runs", {})), "rates": {}}
    if state["runs"]:
        print(f"figure1: {len(state['runs'])} finished runs of {key} kept from {out / 'figure1.json'}", flush=True)
    search = cfg.search
    for neuron in cfg.neurons:
        tried = {lr: _train(state, images, recipe, neuron, lr, int(search.seed), int(search.epochs), "search",
                            bool(cfg.progress)) for lr in rates} if len(rates) > 1 else {}
        state["rates"][neuron] = fastest_rate(tried) if tried else rates[0]
        print(f"figure1: {neuron}: learning rate {state['rates'][neuron]:g}", flush=True)
    for seed in cfg.seeds:
        for neuron in cfg.neurons:
            _train(state, images, recipe, neuron, state["rates"][neuron], int(seed), int(cfg.epochs), "run",
                   bool(cfg.progress))
    result = write_outputs(state, final=True)
    print(f"figure1: wrote {out / 'figure1.json'}, figure1.md, figure1.png", flush=True)
    return result
