"""The paper's Figures 3 and 4 from a trained net, and the numbers behind them.

- Figure 3: the 96 conv1 kernels, tower 0's 48 in the top rows and tower 1's below, and
  per tower the share of kernel energy that is chromatic, a number for the paper's
  observation that one tower's kernels are largely colour-agnostic and the other's
  colour-specific (sec. 6.1).
- Figure 4: eight validation images with their top-5 labels as bars, and five validation
  images each followed by the six training images nearest to it in Euclidean distance on
  the 4096 fc7 activations (sec. 6.1).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from alexnet_mp.net.arch import split_sizes
from alexnet_mp.io import atomic_write
from alexnet_mp.job.metrics_log import save_png

__all__ = ["chromatic_share", "tower_chromatic_shares", "nearest_neighbours", "running_nearest", "kernel_grid", "draw_figures"]


def chromatic_share(kernels: Tensor) -> float:
    """Share of the energy of ``kernels`` ([n, 3, k, k]) that is chromatic: the squared
    deviation of the R, G and B weights from their mean at each pixel, over the sum of
    squared weights. 0 for grey kernels (R = G = B everywhere); 2/3 for a kernel on one
    channel alone; 1, the maximum, where the channels sum to zero at every pixel (e.g.
    R = -G, B = 0: an opponent-colour kernel)."""
    if kernels.dim() != 4 or kernels.shape[1] != 3:
        raise ValueError(f"expected RGB kernels [n, 3, k, k], got {list(kernels.shape)}")
    w = kernels.double()
    total = w.pow(2).sum()
    if total == 0:
        return 0.0
    chromatic = (w - w.mean(dim=1, keepdim=True)).pow(2).sum()
    return (chromatic / total).item()


def tower_chromatic_shares(conv1_weight: Tensor, towers: int) -> list[float]:
    """:func:`chromatic_share` of each tower's conv1 kernels (the first tower's come first)."""
    return [chromatic_share(k) for k in conv1_weight.split(split_sizes(conv1_weight.shape[0], towers))]


def nearest_neighbours(queries: Tensor, pool: Tensor, k: int, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Indices and Euclidean distances of the ``k`` rows of ``pool`` nearest to each row of
    ``queries``, nearest first, reading ``pool`` in chunks of ``chunk`` rows."""
    if k > len(pool):
        raise ValueError(f"asked for {k} neighbours among {len(pool)} rows")
    chunks = ((pool[s:s + chunk], torch.arange(s, min(s + chunk, len(pool)))) for s in range(0, len(pool), chunk))
    return running_nearest(queries, chunks, k)


def running_nearest(queries: Tensor, chunks, k: int) -> tuple[Tensor, Tensor]:
    """:func:`nearest_neighbours` over ``(rows, their ids)`` chunks, keeping only each query's
    ``k`` nearest so far: memory does not grow with the pool (fewer than ``k`` ids if it is smaller)."""
    best_d = torch.zeros((len(queries), 0), dtype=torch.float64)
    best_i = torch.zeros((len(queries), 0), dtype=torch.long)
    q = queries.double()
    for rows, ids in chunks:
        if not len(rows):
            continue
        d = torch.cat([best_d, torch.cdist(q, rows.double())], 1)
        i = torch.cat([best_i, torch.as_tensor(ids).expand(len(q), -1)], 1)
        best_d, order = d.topk(min(k, d.shape[1]), dim=1, largest=False, sorted=True)
        best_i = i.gather(1, order)
    return best_i, best_d


# -- drawing ------------------------------------------------------------------------------------

def kernel_grid(conv1_weight: Tensor, towers: int, columns: int = 16) -> Tensor:
    """The conv1 kernels as one RGB image [H, W, 3] in [0, 1]: each tower's kernels in rows
    of ``columns``, the first tower's on top, a blank row between towers. Each kernel is
    scaled to [0, 1] on its own, so its shape and colour show whatever its magnitude."""
    w = conv1_weight.detach().float().cpu()
    k = w.shape[-1]
    lo = w.flatten(1).min(1).values.view(-1, 1, 1, 1)
    hi = w.flatten(1).max(1).values.view(-1, 1, 1, 1)
    w = (w - lo) / (hi - lo).clamp_min(1e-12)
    blocks = []
    for t, part in enumerate(w.split(split_sizes(w.shape[0], towers))):
        rows = -(-len(part) // columns)
        canvas = torch.ones(3, rows * (k + 1) + 1, columns * (k + 1) + 1)
        for i, kernel in enumerate(part):
            r, c = divmod(i, columns)
            canvas[:, 1 + r * (k + 1):1 + r * (k + 1) + k, 1 + c * (k + 1):1 + c * (k + 1) + k] = kernel
        blocks.append(canvas)
        if t < towers - 1:
            blocks.append(torch.ones(3, k, canvas.shape[2]))
    return torch.cat(blocks, 1).permute(1, 2, 0)


@torch.no_grad()
def _features(model, augment, base, indices: list[int], batch: int = 64, until: str | None = None):
    """(images as stored, uint8 [n, 3, S, S]; outputs; labels; the indices read) of readable ``indices``."""
    images, outs, labels, kept = [], [], [], []
    device = next(model.parameters()).device
    for start in range(0, len(indices), batch):
        items = [(i, base[i]) for i in indices[start:start + batch]]
        items = [(i, it) for i, it in items if it is not None]  # unreadable files are skipped
        if not items:
            continue
        x = torch.stack([it[0] for _, it in items])
        outs.append(model(augment.centre(x.to(device)), until=until).float().cpu())
        images.append(x)
        labels += [int(it[1]) for _, it in items]
        kept += [i for i, _ in items]
    return torch.cat(images), torch.cat(outs), torch.tensor(labels), kept


def _crop_view(img: Tensor, crop: int) -> Tensor:
    c = (img.shape[-1] - crop) // 2
    return img[:, c:c + crop, c:c + crop].permute(1, 2, 0)


def _figure3(weight: Tensor, towers: int, out: Path) -> tuple[list[float], str]:
    """Figure 3, the conv1 kernels with each tower's chromatic share: (the shares, the file)."""
    import matplotlib.pyplot as plt

    shares = tower_chromatic_shares(weight, towers)
    grid = kernel_grid(weight, towers)
    fig, ax = plt.subplots(figsize=(8, 8 * grid.shape[0] / grid.shape[1] + 0.8))
    ax.imshow(grid.numpy(), interpolation="nearest")
    ax.set_axis_off()
    names = [f"tower {t}" for t in range(towers)] if towers > 1 else ["the half net"]
    ax.set_title(f"{weight.shape[0]} conv1 kernels ({weight.shape[-1]}x{weight.shape[-1]}x3); chromatic share of "
                 "energy: " + ", ".join(f"{n} {100 * s:.1f}%" for n, s in zip(names, shares)), fontsize=9)
    path = save_png(fig, out / "figure3-conv1-kernels.png", dpi=120, bbox_inches="tight")
    print("conv1 kernels, chromatic share of energy: " +
          ", ".join(f"{n} {100 * s:.1f}%" for n, s in zip(names, shares)) +
          " (grey kernels 0%; random kernels about 66.7%)", flush=True)
    return shares, path


def _figure4_top5(images: Tensor, probs: Tensor, labels: Tensor, classes: list[str], crop: int, out: Path) -> str:
    """Figure 4 (left): validation images with the net's top-5 as bars (red: the correct label)."""
    import matplotlib.pyplot as plt

    n_top = len(images)
    fig, axes = plt.subplots(2, n_top, figsize=(2.2 * n_top, 4.6), gridspec_kw={"height_ratios": [3, 2]})
    axes = axes.reshape(2, -1)
    for j in range(n_top):
        axes[0, j].imshow(_crop_view(images[j], crop).numpy())
        axes[0, j].set_axis_off()
        axes[0, j].set_title(classes[labels[j]], fontsize=8)
        p, top = probs[j].topk(min(5, len(classes)))
        colours = ["tab:red" if int(c) == int(labels[j]) else "tab:blue" for c in top]
        axes[1, j].barh(range(len(top))[::-1], p.numpy(), color=colours)
        axes[1, j].set_yticks(range(len(top))[::-1], [classes[int(c)] for c in top], fontsize=7)
        axes[1, j].set_xlim(0, 1)
        axes[1, j].tick_params(axis="x", labelsize=6)
    fig.suptitle("validation images and the net's top-5 (red: the correct label)", fontsize=9)
    fig.tight_layout()
    return save_png(fig, out / "figure4-top5.png", dpi=110)


def _nearest_train(model, augment, train, q_feats: Tensor, limit: int, k: int) -> tuple[Tensor, Tensor, int]:
    """(indices, distances) of the ``k`` training images nearest on fc7 to each query, and how
    many readable training images were searched."""
    from alexnet_mp.errors import UserError

    # The training set is read in chunks and only each query's k nearest so far are kept, so
    # memory does not grow with the training set (ImageNet's is 1.28M images).
    order = list(range(min(limit, len(train))))
    searched = 0

    def chunks():
        nonlocal searched
        for start in range(0, len(order), 512):
            _, feats, _, kept = _features(model, augment, train, order[start:start + 512], until="fc7")
            searched += len(kept)
            yield feats, kept

    best_i, best_d = running_nearest(q_feats, chunks(), k)
    if best_i.shape[1] < k:
        raise UserError(f"{searched} readable training images; Figure 4 needs at least {k}")
    return best_i, best_d, searched


def _figure4_neighbours(q_images: Tensor, q_labels: Tensor, index: Tensor, dist: Tensor, neighbours: dict,
                        classes: list[str], crop: int, features: int, out: Path) -> str:
    """Figure 4 (right): each validation image and its nearest training images on fc7."""
    import matplotlib.pyplot as plt

    k = index.shape[1]
    fig, axes = plt.subplots(len(q_images), k + 1, figsize=(1.4 * (k + 1), 1.5 * len(q_images)))
    axes = axes.reshape(len(q_images), k + 1)
    for r in range(len(q_images)):
        axes[r, 0].imshow(_crop_view(q_images[r], crop).numpy())
        axes[r, 0].set_title(f"val: {classes[q_labels[r]]}", fontsize=7, color="tab:red")
        for c in range(k):
            i = int(index[r, c])
            axes[r, c + 1].imshow(_crop_view(neighbours[i][0], crop).numpy())
            axes[r, c + 1].set_title(f"{classes[int(neighbours[i][1])]} ({dist[r, c]:.0f})", fontsize=7)
        for a in axes[r]:
            a.set_axis_off()
    fig.suptitle(f"each validation image (left) and the {k} training images nearest on the "
                 f"{features} fc7 activations (Euclidean distance)", fontsize=8)
    fig.tight_layout()
    return save_png(fig, out / "figure4-neighbours.png", dpi=110)


def _figure4(cfg, model, blob: dict, out: Path, result: dict) -> None:
    """Both panels of Figure 4 and the share of neighbours in the query's class, into ``result``."""
    from alexnet_mp.errors import UserError
    from alexnet_mp.use.evaluate import open_data

    device = torch.device("cpu")
    allow = bool(cfg.allow_class_mismatch)
    val, augment, _ = open_data(blob, cfg.get("data"), "val", device, allow_class_mismatch=allow)
    train, _, _ = open_data(blob, cfg.get("data"), "train", device, allow_class_mismatch=allow)
    classes, crop = list(val.classes), blob["data"]["crop"]
    needed = int(cfg.top5_images) + int(cfg.neighbour_queries)
    if len(val) < needed:
        raise UserError(f"the validation set has {len(val)} images; the figures need {needed}")
    picks = torch.randperm(len(val), generator=torch.Generator().manual_seed(int(cfg.seed)))[:needed].tolist()
    images, logits, labels, _ = _features(model, augment, val, picks)
    n_top = min(int(cfg.top5_images), len(images))
    result["files"]["figure4_top5"] = _figure4_top5(images[:n_top], logits.softmax(1), labels, classes, crop, out)
    q_images, q_feats, q_labels, _ = _features(model, augment, val, picks[n_top:], until="fc7")
    limit = int(cfg.train_images) if int(cfg.train_images) > 0 else len(train)
    index, dist, searched = _nearest_train(model, augment, train, q_feats, limit, int(cfg.neighbours))
    neighbours = {int(i): train[int(i)] for i in index.flatten().unique()}  # read again, only these
    result["files"]["figure4_neighbours"] = _figure4_neighbours(q_images, q_labels, index, dist, neighbours,
                                                                classes, crop, q_feats.shape[1], out)
    same = sum(int(neighbours[int(i)][1]) == int(q_labels[r]) for r in range(len(index))
               for i in index[r]) / index.numel()
    result.update(neighbours_same_class=same, neighbours=index.tolist(), neighbour_distances=dist.tolist(),
                  train_images_searched=searched)
    print(f"fc7 neighbours: {100 * same:.0f}% share the query's class (among {searched} training images)",
          flush=True)


def draw_figures(cfg) -> dict:
    """Figures 3 and 4 of a trained run (``launch/figures.py``); returns what it wrote and measured."""
    import matplotlib

    matplotlib.use("Agg")
    from alexnet_mp.net.arch import spec_for
    from alexnet_mp.use.evaluate import load_trained_model

    torch.set_num_threads(int(cfg.threads))
    checkpoint = Path(str(cfg.checkpoint))
    model, blob = load_trained_model(checkpoint)
    run_dir = checkpoint if checkpoint.is_dir() else checkpoint.parent
    out = Path(str(cfg.output_dir)) if cfg.output_dir else run_dir / "figures"
    out.mkdir(parents=True, exist_ok=True)
    towers = spec_for(blob["model"]["name"], 2).towers
    result: dict = {"checkpoint": str(checkpoint), "files": {}}
    result["chromatic_share"], result["files"]["figure3"] = _figure3(blob["state_dict"]["conv1.weight"], towers, out)
    _figure4(cfg, model, blob, out, result)
    atomic_write(out / "figures.json", json.dumps(result, indent=1))
    print("wrote " + ", ".join(result["files"].values()), flush=True)
    return result
