"""``launch/figure1.py``: the rate search and the runs of Figure 1, kept as they finish.

Order: each neuron's rate search first, then the reported runs seed by seed, ReLU and tanh
of one seed together, so a run stopped part-way leaves whole pairs. After every run the
results so far are written (:mod:`alexnet_mp.paper.figure1.outputs`); run the same command again
with the same ``output_dir`` and the runs already there are kept, not trained again.
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
from alexnet_mp.paper.figure1.net import NEURONS
from alexnet_mp.paper.figure1.outputs import write_outputs
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
    if not cfg.search.rates or any(float(r) <= 0 for r in cfg.search.rates):
        raise UserError(f"search.rates must be positive learning rates, at least one, not {list(cfg.search.rates)}")
    if cfg.data.name == "imagefolder" and not cfg.data.root:
        raise UserError("data.root=PATH is needed: a folder with train/<class>/ images "
                        "(e.g. data/cifar10 from make data)")


def _device(name: str) -> torch.device:
    device = placement.single_device(name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one input shape all run long: let cuDNN pick its kernels once
    return device


def _load_images(dcfg: DictConfig, device: torch.device) -> tuple[Images, dict]:
    """The training images in memory and what describes them (for the results' ``data``)."""
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
    return Images(pixels.to(device), labels.to(device)), about


def _fingerprint(cfg: DictConfig, about: dict) -> dict:
    """What every stored run depends on besides its own key: a rerun may reuse runs only under these."""
    keep = ("name", "root", "train_size", "images", "seed", "image_size", "classes")
    return {"data": {k: about[k] for k in keep}, "batch_size": int(cfg.batch_size), "momentum": float(cfg.momentum),
            "net": "layers-80sec"}


def _stored_runs(path: Path, fingerprint: dict) -> dict:
    if not path.is_file():
        return {}
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise UserError(f"{path} exists but cannot be read as JSON: move it away or choose another "
                        "output_dir") from None
    if old.get("fingerprint") != fingerprint:
        raise UserError(f"{path} holds runs of other settings (data, batch size or momentum): choose another "
                        f"output_dir, or move it away to start afresh")
    return dict(old.get("runs", {}))


def _train(state: dict, images: Images, recipe: Recipe, neuron: str, lr: float, seed: int, epochs: int,
           tag: str, progress: bool) -> dict:
    """One run, or the stored one; the results are rewritten after a new run finishes."""
    key = run_key(neuron, lr, seed, epochs)
    if key in state["runs"]:
        return state["runs"][key]

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
    """Search each neuron's rate, train every seed at it, write ``output_dir/figure1.{json,md,png}``."""
    _check(cfg)
    torch.set_num_threads(int(cfg.threads))
    device = _device(str(cfg.device))
    out = Path(str(cfg.output_dir))
    out.mkdir(parents=True, exist_ok=True)
    images, about = _load_images(cfg.data, device)
    fingerprint = _fingerprint(cfg, about)
    recipe = Recipe(int(cfg.batch_size), float(cfg.momentum), bool(cfg.channels_last), about["classes"])
    # Provenance now, before any run: the code that started them (a later edit of the checkout is not theirs).
    state = {"cfg": OmegaConf.to_container(cfg, resolve=True), "data": about, "fingerprint": fingerprint,
             "device": str(device), "out": out, "provenance": record(cfg),
             "runs": _stored_runs(out / "figure1.json", fingerprint), "rates": {}}
    if state["runs"]:
        print(f"figure1: {len(state['runs'])} finished runs kept from {out / 'figure1.json'}", flush=True)
    rates, search = [float(r) for r in cfg.search.rates], cfg.search
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
