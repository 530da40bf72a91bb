"""Figure 1's results as files, a row per (net reading, training images): ``figure1.json`` (per row: every
run, the rates, each run's epoch at the target, the ratio, the provenance of the code that ran it),
``figure1.md`` (a summary table of the rows, then each row's tables) and ``figure1.png`` (a panel per
row, the curves drawn as the paper draws them: epochs against training error from 0 to 0.75, ReLU
solid, tanh dashed, the mean over seeds with a band from the lowest to the highest seed, the 25%
line). Each file is written whole through :func:`alexnet_mp.io.atomic_write`."""

from __future__ import annotations

import json
import math
import time

from alexnet_mp.io import atomic_write
from alexnet_mp.job.metrics_log import save_png
from alexnet_mp.paper.figure1.curves import epoch_at_target, ratio_summary
from alexnet_mp.paper.figure1.net import DEFAULT_READING, READINGS, build_net, figure1_spec, map_sizes
from alexnet_mp.paper.student_t import spread

__all__ = ["FIGURE", "document", "markdown", "row_key", "summarise", "write_outputs"]

FIGURE = "Figure 1 (sec. 3.1): ReLU against tanh on CIFAR-10"
PAPER = {"relu": 6, "tanh": 35, "ratio": 6}  # Figure 1, read off the plot (spec sec. 8)
PLOT_EVERY_S = 60.0  # drawing costs about a second: often enough to watch a long run, not per tiny run
STYLE = {"relu": ("tab:blue", "-"), "tanh": ("tab:red", "--")}


def row_key(net: str, images: int) -> str:
    """A row of the results: one net reading on one number of training images."""
    return f"{net}/{images}"


def _net(reading: str) -> dict:
    spec, r = figure1_spec(reading=reading), READINGS[reading]
    layers = [{"name": l.name, "kind": l.kind, "width": l.width, "kernel": l.kernel, "padding": l.padding,
               "neuron": l.relu, "pool": f"{l.pool_kind} {spec.pool[0]}/{spec.pool[1]}" if l.pool else None}
              for l in spec.layers]
    params = sum(p.numel() for p in build_net(reading, "relu").parameters())
    return {"reading": reading, "default": reading == DEFAULT_READING, "name": spec.name, "layers": layers,
            "map_sizes": map_sizes(spec, 32), "parameters": params, "init": r.init, "input": r.input,
            "bias_lr_scale": r.bias_lr_scale}


def _neuron(state: dict, neuron: str) -> dict:
    cfg, target = state["cfg"], state["cfg"]["target_error"]
    chance = 1 - 1 / state["data"]["classes"]
    runs = [r for r in state["runs"].values() if r["neuron"] == neuron]
    search = {repr(r["lr"]): r["errors"] for r in runs if r["role"] == "search" and r["lr"] in cfg["search"]["rates"]
              and r["epochs"] == cfg["search"]["epochs"] and r["seed"] == cfg["search"]["seed"]}
    lr = state["rates"].get(neuron)
    seeds = {}
    for r in runs:
        if r["role"] == "run" and r["lr"] == lr and r["epochs"] == cfg["epochs"] and r["seed"] in cfg["seeds"]:
            seeds[str(r["seed"])] = {"errors": r["errors"], "diverged": r["diverged"], "seconds": r["seconds"],
                                     **epoch_at_target(r["errors"], target, chance)}
    reached = [s["interpolated"] for s in seeds.values() if s["interpolated"] is not None]
    return {"lr": lr, "search": search, "seeds": seeds, "reached": f"{len(reached)} of {len(seeds)}",
            "epochs_to_target": spread(reached) if reached else None}


def summarise(state: dict, final: bool = False) -> dict:
    """The row of the runs in ``state`` (see :mod:`alexnet_mp.paper.figure1.run`)."""
    cfg = state["cfg"]
    neurons = {n: _neuron(state, n) for n in cfg["neurons"]}
    ratio = None
    if "relu" in neurons and "tanh" in neurons:
        at = lambda n: {int(s): v["interpolated"] for s, v in neurons[n]["seeds"].items()}  # noqa: E731
        ratio = ratio_summary(at("tanh"), at("relu"), cfg["epochs"])
    runs = list(state["runs"].values())
    epochs = sum(len(r["errors"]) for r in runs)
    cost = sum(r["seconds"] for r in runs) / epochs if epochs else None
    return {"key": row_key(cfg["net"], state["data"]["images"]), "complete": final,
            "target_error": cfg["target_error"], "net": _net(cfg["net"]), "data": state["data"],
            "budget": {k: cfg[k] for k in ("epochs", "seeds", "search", "batch_size", "momentum", "threads")}
            | {"device": state["device"], "train_images": state["data"]["images"]},
            "seconds_per_epoch": cost, "seconds_total": sum(r["seconds"] for r in runs),
            "neurons": neurons, "ratio": ratio,
            "fingerprint": state["fingerprint"], "runs": state["runs"], "provenance": state["provenance"]}


def _order(key: str, row: dict) -> tuple:
    names = list(READINGS)
    reading = row["net"]["reading"]
    return names.index(reading) if reading in names else len(names), row["data"]["images"], key


def document(rows: dict[str, dict]) -> dict:
    """``figure1.json``: every row, the default net's first, fewer images first."""
    ordered = dict(sorted(rows.items(), key=lambda kv: _order(*kv)))
    return {"figure": FIGURE, "complete": all(r["complete"] for r in ordered.values()),
            "default_net": DEFAULT_READING, "paper": PAPER, "rows": ordered}


def write_outputs(state: dict, final: bool = False) -> dict:
    """This invocation's row (returned) into the files beside the other rows; the plot at most every
    ``PLOT_EVERY_S`` seconds until the last."""
    row = summarise(state, final)
    state["rows"][row["key"]] = row
    doc = document(state["rows"])
    out = state["out"]
    atomic_write(out / "figure1.json", json.dumps(doc, indent=1))
    atomic_write(out / "figure1.md", markdown(doc))
    if final or time.monotonic() - state.get("plotted", -math.inf) >= PLOT_EVERY_S:
        plot(doc, out / "figure1.png")
        state["plotted"] = time.monotonic()
    return row


def _epochs(v: float | None) -> str:
    return "never" if v is None else f"{v:.2f}"


def _mean_sd(s: dict | None) -> str:
    return "-" if s is None else f"{s['mean']:.2f}" + ("" if s["std"] is None else f" ± {s['std']:.2f}")


def _ratio_line(ratio: dict | None) -> str:
    if not ratio or not ratio["spread"]:
        return "Ratio tanh / ReLU of epochs to the target: not measured (a neuron has not reached it yet)."
    s = ratio["spread"]
    sd = "" if s["std"] is None else f" ± {s['std']:.2f} (sd)"
    bound = " (at least: tanh did not reach it within the budget on some seeds)" if ratio["at_least"] else ""
    return (f"Ratio tanh / ReLU of epochs to the target: **{s['mean']:.2f}**{sd}, range {s['min']:.2f} to "
            f"{s['max']:.2f} over {s['n']} seeds{bound}; the paper: about {PAPER['ratio']}.")


def _summary_line(key: str, row: dict) -> str:
    b, d, net = row["budget"], row["data"], row["net"]

    def cell(name: str) -> str:
        n = row["neurons"].get(name)
        if n is None or n["lr"] is None:  # not run, or its rate search still going
            return "-"
        return f"{n['lr']}: {_mean_sd(n['epochs_to_target'])} ({n['reached']})"

    s = (row["ratio"] or {}).get("spread")
    ratio = "-" if not s else (">= " if row["ratio"]["at_least"] else "") + _mean_sd(s)
    status = "complete" if row["complete"] else "**partial**"
    return (f"| `{net['reading']}`{' (default)' if net['default'] else ''} | {d['images']} of {d['of']} | "
            f"{b['epochs']}, {len(b['seeds'])} | {cell('relu')} | {cell('tanh')} | {ratio} | {status} |")


def _row_markdown(row: dict) -> list[str]:
    b, d, net = row["budget"], row["data"], row["net"]
    target = f"{100 * row['target_error']:.0f}%"
    bias = "" if net["bias_lr_scale"] == 1 else f"; biases at {net['bias_lr_scale']:g}x the rate"
    lines = [f"## `{net['reading']}` on {d['images']} training images", "",
             f"Net `{net['name']}` ({len(net['layers'])} weight layers, {net['parameters']} parameters; "
             f"{net['init']}; input: {net['input']}), no regularisation. Budget: {d['images']} of the {d['of']} "
             f"training images, {b['epochs']} epochs, seeds {b['seeds']}, batch {b['batch_size']}, momentum "
             f"{b['momentum']}{bias}, on {b['device']} ({b['threads']} thread(s)); rate search over "
             f"{b['search']['rates']}, {b['search']['epochs']} epoch(s) from seed {b['search']['seed']}."
             + ("" if row["complete"] else " **Partial: runs still to come.**"), "",
             f"| neuron | learning rate | epochs to {target}, per seed (interpolated) | first whole epoch | "
             f"mean ± sd | paper |", "|---|---|---|---|---|---|"]
    for name, n in row["neurons"].items():
        per = ", ".join(_epochs(s["interpolated"]) for s in n["seeds"].values()) or "-"
        whole = ", ".join(str(s["first_epoch"] or "never") for s in n["seeds"].values()) or "-"
        lines.append(f"| {name} | {'-' if n['lr'] is None else n['lr']} | {per} | {whole} | {_mean_sd(n['epochs_to_target'])} ({n['reached']} "
                     f"seeds reached it) | about {PAPER.get(name, '-')} |")
    lines += ["", _ratio_line(row["ratio"]), "", "Rate search (running training error after the search epochs):", "",
              "| neuron | " + " | ".join(f"lr {r}" for r in b["search"]["rates"]) + " |",
              "|---|" + "---|" * len(b["search"]["rates"])]
    for name, n in row["neurons"].items():
        cells = [f"{n['search'][repr(float(r))][-1]:.4f}" if n["search"].get(repr(float(r))) else "-"
                 for r in b["search"]["rates"]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    p = row["provenance"]
    cost = row["seconds_per_epoch"]
    lines += ["", f"Cost: {'-' if cost is None else f'{cost:.1f}'} s per epoch of {d['images']} images, "
              f"{row['seconds_total'] / 60:.1f} min of training in all. Commit {p['git']['commit']}"
              f"{' (dirty)' if p['git']['dirty'] else ''}, torch {p['versions']['torch']}, {', '.join(p['devices'])}.",
              ""]
    return lines


def markdown(doc: dict) -> str:
    rows = doc["rows"]
    lines = [f"# {doc['figure']}", "",
             f"A row per net reading and number of training images (spec sec. 8; the default net is "
             f"`{doc['default_net']}`, cuda-convnet's `layers-80sec.cfg` as the file defines it). Epochs to 25% "
             f"training error are interpolated, mean ± sd over seeds (how many reached it); the paper: ReLU about "
             f"{PAPER['relu']}, tanh about {PAPER['tanh']}, ratio about {PAPER['ratio']}."
             + ("" if doc["complete"] else " **Partial: runs still to come.**"), "",
             "| net | training images | epochs, seeds | ReLU: rate: epochs to 25% | tanh: rate: epochs to 25% | "
             "ratio tanh / ReLU | status |", "|---|---|---|---|---|---|---|"]
    lines += [_summary_line(k, r) for k, r in rows.items()] + [""]
    for row in rows.values():
        lines += _row_markdown(row)
    return "\n".join(lines)


def plot(doc: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = list(doc["rows"].values())
    fig, axes = plt.subplots(1, len(rows), figsize=(4.6 * len(rows), 4.2), squeeze=False, sharey=True)
    for ax, row in zip(axes[0], rows):
        for name, n in row["neurons"].items():
            curves = [s["errors"] for s in n["seeds"].values() if s["errors"]]
            if not curves:
                continue
            length = min(len(c) for c in curves)
            e = np.array([c[:length] for c in curves])
            x = np.arange(1, length + 1)
            colour, dash = STYLE.get(name, ("tab:grey", ":"))
            reach = n["epochs_to_target"]
            label = f"{name}, lr {n['lr']:g}: 25% at " + ("never" if reach is None else f"{reach['mean']:.1f}")
            ax.plot(x, e.mean(0), dash, color=colour, label=label + f" ({len(curves)} seeds)")
            ax.fill_between(x, e.min(0), e.max(0), color=colour, alpha=0.2, linewidth=0)
        ax.axhline(row["target_error"], color="black", linewidth=0.8, linestyle=":")
        ax.set(xlabel="epochs", ylim=(0, 0.75), xlim=(0, row["budget"]["epochs"]))
        s = (row["ratio"] or {}).get("spread")
        ratio = f", ratio {s['mean']:.2f}" if s else ""
        ax.set_title(f"{row['net']['reading']} ({row['net']['name']}), {row['data']['images']} images{ratio}"
                     + ("" if row["complete"] else " (partial)"), fontsize=8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("training error rate")
    fig.suptitle("Figure 1: ReLU (solid) against tanh (dashed) on CIFAR-10; mean, band: min to max over seeds",
                 fontsize=9)
    fig.tight_layout()
    save_png(fig, path, dpi=110)
