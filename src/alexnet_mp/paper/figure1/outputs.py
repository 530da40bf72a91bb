"""Figure 1's results as files: ``figure1.json`` (every run, the rates, each run's epoch at the target, the
ratio, the provenance), ``figure1.md`` (the table) and ``figure1.png`` (the curves drawn as
the paper draws them: epochs against training error from 0 to 0.75, ReLU solid, tanh
dashed, the mean over seeds with a band from the lowest to the highest seed, the 25% line).
Each file is written whole through :func:`alexnet_mp.io.atomic_write`."""

from __future__ import annotations

import json
import math
import time

from alexnet_mp.paper.figure1.curves import epoch_at_target, ratio_summary
from alexnet_mp.paper.figure1.net import Figure1Net, figure1_spec, map_sizes
from alexnet_mp.io import atomic_write
from alexnet_mp.job.metrics_log import save_png
from alexnet_mp.paper.student_t import spread

__all__ = ["summarise", "write_outputs", "markdown"]

PAPER = {"relu": 6, "tanh": 35, "ratio": 6}  # Figure 1, read off the plot (spec sec. 8)
PLOT_EVERY_S = 60.0  # drawing costs about a second: often enough to watch a long run, not per tiny run
STYLE = {"relu": ("tab:blue", "-"), "tanh": ("tab:red", "--")}


def _net() -> dict:
    spec = figure1_spec()
    layers = [{"name": l.name, "kind": l.kind, "width": l.width, "kernel": l.kernel, "padding": l.padding,
               "neuron": l.relu, "pool": f"{l.pool_kind} {spec.pool[0]}/{spec.pool[1]}" if l.pool else None}
              for l in spec.layers]
    params = sum(p.numel() for p in Figure1Net(spec, "relu").parameters())
    return {"name": spec.name, "layers": layers, "map_sizes": map_sizes(spec, 32), "parameters": params,
            "init": "weights N(0, 1/fan-in), biases 0", "input": "pixels / 255 less the mean image"}


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
    """The results dictionary of the runs in ``state`` (see :mod:`alexnet_mp.paper.figure1.run`)."""
    cfg = state["cfg"]
    neurons = {n: _neuron(state, n) for n in cfg["neurons"]}
    ratio = None
    if "relu" in neurons and "tanh" in neurons:
        at = lambda n: {int(s): v["interpolated"] for s, v in neurons[n]["seeds"].items()}  # noqa: E731
        ratio = ratio_summary(at("tanh"), at("relu"), cfg["epochs"])
    runs = list(state["runs"].values())
    epochs = sum(len(r["errors"]) for r in runs)
    cost = sum(r["seconds"] for r in runs) / epochs if epochs else None
    return {"figure": "Figure 1 (sec. 3.1): ReLU against tanh on CIFAR-10", "complete": final,
            "target_error": cfg["target_error"], "net": _net(), "data": state["data"],
            "budget": {k: cfg[k] for k in ("epochs", "seeds", "search", "batch_size", "momentum", "threads")}
            | {"device": state["device"], "train_images": state["data"]["images"]},
            "seconds_per_epoch": cost, "seconds_total": sum(r["seconds"] for r in runs),
            "neurons": neurons, "ratio": ratio, "paper": PAPER,
            "fingerprint": state["fingerprint"], "runs": state["runs"], "provenance": state["provenance"]}


def write_outputs(state: dict, final: bool = False) -> dict:
    """The files of the runs so far; the plot at most every ``PLOT_EVERY_S`` seconds until the last."""
    result = summarise(state, final)
    out = state["out"]
    atomic_write(out / "figure1.json", json.dumps(result, indent=1))
    atomic_write(out / "figure1.md", markdown(result))
    if final or time.monotonic() - state.get("plotted", -math.inf) >= PLOT_EVERY_S:
        plot(result, out / "figure1.png")
        state["plotted"] = time.monotonic()
    return result


def _epochs(v: float | None) -> str:
    return "never" if v is None else f"{v:.2f}"


def _ratio_line(ratio: dict | None) -> str:
    if not ratio or not ratio["spread"]:
        return "Ratio tanh / ReLU of epochs to the target: not measured (a neuron has not reached it yet)."
    s = ratio["spread"]
    sd = "" if s["std"] is None else f" ± {s['std']:.2f} (sd)"
    bound = " (at least: tanh did not reach it within the budget on some seeds)" if ratio["at_least"] else ""
    return (f"Ratio tanh / ReLU of epochs to the target: **{s['mean']:.2f}**{sd}, range {s['min']:.2f} to "
            f"{s['max']:.2f} over {s['n']} seeds{bound}; the paper: about {PAPER['ratio']}.")


def markdown(result: dict) -> str:
    b, d = result["budget"], result["data"]
    target = f"{100 * result['target_error']:.0f}%"
    lines = [f"# {result['figure']}", "",
             f"Four-layer net `{result['net']['name']}` (cuda-convnet's CIFAR-10 net, spec sec. 8), no regularisation. "
             f"Budget: {d['images']} of the {d['of']} training images, {b['epochs']} epochs, seeds {b['seeds']}, "
             f"batch {b['batch_size']}, momentum {b['momentum']}, on {b['device']} ({b['threads']} thread(s)); rate "
             f"search over {b['search']['rates']}, {b['search']['epochs']} epoch(s) from seed {b['search']['seed']}."
             + ("" if result["complete"] else " **Partial: runs still to come.**"), "",
             f"| neuron | learning rate | epochs to {target}, per seed (interpolated) | first whole epoch | "
             f"mean ± sd | paper |", "|---|---|---|---|---|---|"]
    for name, n in result["neurons"].items():
        per = ", ".join(_epochs(s["interpolated"]) for s in n["seeds"].values()) or "-"
        whole = ", ".join(str(s["first_epoch"] or "never") for s in n["seeds"].values()) or "-"
        e = n["epochs_to_target"]
        mean = "-" if e is None else f"{e['mean']:.2f}" + ("" if e["std"] is None else f" ± {e['std']:.2f}")
        lines.append(f"| {name} | {n['lr']} | {per} | {whole} | {mean} ({n['reached']} seeds reached it) | "
                     f"about {PAPER.get(name, '-')} |")
    lines += ["", _ratio_line(result["ratio"]), "", "Rate search (running training error after the search epochs):", "",
              "| neuron | " + " | ".join(f"lr {r}" for r in b["search"]["rates"]) + " |",
              "|---|" + "---|" * len(b["search"]["rates"])]
    for name, n in result["neurons"].items():
        cells = [f"{n['search'][repr(float(r))][-1]:.4f}" if n["search"].get(repr(float(r))) else "-"
                 for r in b["search"]["rates"]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    p = result["provenance"]
    cost = result["seconds_per_epoch"]
    lines += ["", f"Cost: {'-' if cost is None else f'{cost:.1f}'} s per epoch of {d['images']} images, "
              f"{result['seconds_total'] / 60:.1f} min of training in all. Commit {p['git']['commit']}"
              f"{' (dirty)' if p['git']['dirty'] else ''}, torch {p['versions']['torch']}, {', '.join(p['devices'])}.",
              ""]
    return "\n".join(lines)


def plot(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for name, n in result["neurons"].items():
        curves = [s["errors"] for s in n["seeds"].values() if s["errors"]]
        if not curves:
            continue
        length = min(len(c) for c in curves)
        e = np.array([c[:length] for c in curves])
        x = np.arange(1, length + 1)
        colour, dash = STYLE.get(name, ("tab:grey", ":"))
        reach = n["epochs_to_target"]
        label = f"{name}, lr {n['lr']:g}: 25% at " + ("never" if reach is None else f"{reach['mean']:.1f}") + " epochs"
        ax.plot(x, e.mean(0), dash, color=colour, label=label + f" ({len(curves)} seeds)")
        ax.fill_between(x, e.min(0), e.max(0), color=colour, alpha=0.2, linewidth=0)
    ax.axhline(result["target_error"], color="black", linewidth=0.8, linestyle=":")
    ax.set(xlabel="epochs", ylabel="training error rate", ylim=(0, 0.75), xlim=(0, result["budget"]["epochs"]))
    ax.set_title(f"Figure 1: {result['net']['name']} on {result['data']['images']} CIFAR-10 training images "
                 f"(mean, band: min to max over seeds)", fontsize=8)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_png(fig, path, dpi=110)
