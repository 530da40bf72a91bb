"""bench-schemes' report: the markdown, the picture (bytes per image against K; projected speed-up
against K on two links), and the three files written atomically."""

from __future__ import annotations

import io
import json
from pathlib import Path

from alexnet_mp.io import atomic_write

__all__ = ["markdown", "plot", "write"]

MB = 2**20
PICTURED_LINKS = ("PCIe 2.0 x16 / GTX 580 (2012)", "NVLink 4 (H100) / H200 fp32")


def _mb(n: float) -> str:
    return f"{n / MB:.2f}"


def _measured(r: dict) -> list[str]:
    s = r["settings"]
    lines = ["## Measured: K gloo processes on the CPU, each beside one process", "",
             f"{s['model']} net, {s['input_size']} px, {s['num_classes']} classes, global batch {s['batch']}, "
             f"1 thread per process, {r['environment']['cores']} cores ({r['environment']['cpu']}); "
             f"{s['repeats']} interleaved repetitions of {s['warmup']} untimed + {s['steps']} timed steps "
             f"(medians); hybrid with fc8={s['fc8']}, fc_update=step. Bytes per process as handed to the "
             "collectives (docs/schemes.md); wire: what a ring sends of them. The K=4 runs put 4 processes on "
             f"{r['environment']['cores']} cores.", "",
             "| K | scheme | step (s) | / one process | handed MB/step | = arch.py | wire MB/step | wire KB/image "
             "| waited on comm | model (s) | model / measured | compute: model / measured | comm: model / waited |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for k, m in r["measured"].items():
        lines.append(f"| {k} | one process | {m['one_process_step_s']:.3f} | 1 | | | | | | | | | |")
        for scheme, x in m["schemes"].items():
            waited = max(x["waited_share"])
            lines.append(
                f"| {k} | {scheme} | {x['step_s']:.3f} | {x['ratio_to_one_process']:.2f} | "
                f"{_mb(x['handed_bytes_per_step'][0])} | {'yes' if x['bytes_match_arch'] else 'NO'} | "
                f"{_mb(x['wire_bytes_per_step'][0])} | {x['wire_bytes_per_image'] / 1024:.1f} | "
                f"{min(x['waited_share']):.0%}-{waited:.0%} | {x['model']['step_s']:.3f} | "
                f"{x['model_over_measured']:.2f} | {x['compute_model_over_measured']:.2f} | "
                f"{x['comm_model_over_measured']:.2f} |")
    for scheme, why in r["not_measured"].items():
        lines.append(f"| - | {scheme} | not measured: {why} | | | | | | | | | | |")
    cal = [f"K={k}: {m['calibration']['bandwidth'] / 1e9:.2f} GB/s, {m['calibration']['latency_s'] * 1e6:.0f} us a "
           "step" for k, m in r["measured"].items()]
    lines += ["", "The model for these runs takes one process's step as a fixed cost plus a cost per image "
              "(from its step on the batch and on half of it, measured beside: " + "; ".join(
                  f"K={k}: {m['one_process_fixed_s']:.3f} s fixed of {m['one_process_step_s']:.3f} s" for k, m in
                  r["measured"].items()) + "; its optimizer step alone took " + "; ".join(
                  f"{m['one_process_optimizer_s']:.3f} s" for m in r["measured"].values()) + "). The part per "
              "image is split over the layers by their multiply-adds (FLOP-proportional, not measured per layer); "
              "the fixed part (reading the weights, the optimizer) follows the parameters a process holds. Both "
              "are stretched by the sharing of the cores (each runnable thread an equal share, the "
              "machine's other work read from the load average before the run: "
              + "; ".join(f"K={k}: x{m['cpu_stretch']:.2f}" for k, m in r["measured"].items())
              + "), plus each collective's ring time on the gloo link as measured in the same "
              f"run by an all-reduce of {_mb(next(iter(r['measured'].values()))['calibration']['all_reduce_bytes'])} "
              f"MiB (the net's gradients, unless set) and of 4 bytes ({'; '.join(cal)}); "
              "no overlap. Waited on comm: the tracer's waited seconds over the step, the range over processes; "
              "the model's compute is set against the step less the mean wait, its communication against the "
              "mean wait. The machine's load average (1 min) before and after each K's run: "
              + "; ".join(f"K={k}: {m['load_average_1min'][0]:.1f}, {m['load_average_1min'][1]:.1f}"
                          for k, m in r["measured"].items()) + "."]
    return lines


def _table(r: dict) -> list[str]:
    lines = ["## Bytes per step per process: full net, 224 px, 128 images per replica (from arch.py)", "",
             "Towers: 128 images per pair of towers; data and hybrid: 128 per process (cuda-convnet2's setting); "
             "per image: of the global batch. NCCL's reduce-scatter for the towers' backward.", "",
             "| scheme | K | global batch | handed MB/step | wire MB/step | handed KB/image | wire KB/image |",
             "|---|---|---|---|---|---|---|"]
    for row in r["bytes_table_224"]:
        lines.append(f"| {row['scheme']} | {row['k']} | {row['batch']} | {_mb(row['handed'])} | {_mb(row['wire'])} | "
                     f"{row['handed_per_image'] / 1024:.1f} | {row['wire_per_image'] / 1024:.1f} |")
    return lines


def _projection(r: dict) -> list[str]:
    lines = ["## Projected on real links: speed-up over one device on the same global batch (full net, 224 px)", "",
             "Two regimes: " + "; ".join(f"{name}: {what}" for name, what in r["regimes"].items()) + ".",
             "Compute: " + "; ".join(f"{n}: {c['seconds_per_128']:g} s per 128 images ({c['source']})"
                                     for n, c in r["compute_for_links"].items()) + ".",
             "Links (one direction): " + "; ".join(f"{l['name']}: {l['bandwidth'] / 1e9:g} GB/s, "
                                                    f"{l['latency'] * 1e6:g} us ({l['source']})" for l in r["links"])
             + ".", "Stops scaling: the largest K with parallel efficiency (speed-up / K) of at least 50%.", ""]
    ks = sorted({row["k"] for p in r["projection"].values() for s in p["schemes"].values() for row in s["rows"]})
    lines += ["| link / compute | scheme, regime | " + " | ".join(f"K={k}" for k in ks) + " | scales to K |",
              "|---|---|" + "---|" * len(ks) + "---|"]
    for name, p in r["projection"].items():
        for scheme, s in p["schemes"].items():
            by_k = {row["k"]: row["speedup"] for row in s["rows"]}
            lines.append(f"| {name} | {scheme} | " + " | ".join(f"{by_k[k]:.1f}" if k in by_k else "-" for k in ks)
                         + f" | {s['scales_to'] or '< 2'} |")
    return lines


def _premise(r: dict) -> list[str]:
    lines = ["## The 2014 premise, from the architecture table (224 px, 1000 classes)", "",
             "| net | conv share of the FLOPs | fc share of the FLOPs | conv share of the parameters | "
             "fc share of the parameters | parameters |", "|---|---|---|---|---|---|"]
    for name, p in r["premise"].items():
        lines.append(f"| {name} | {p['flops']['conv']:.1%} | {p['flops']['fc']:.1%} | {p['parameters']['conv']:.1%} | "
                     f"{p['parameters']['fc']:.1%} | {p['parameters']['total']:,} |")
    if "one_tower" not in r["premise"]:
        lines.append("| one_tower | not in this checkout's arch.py | | | | |")
    return lines


def markdown(r: dict) -> str:
    git = r["provenance"]["git"]
    head = [f"# bench-schemes: three ways to split AlexNet", "",
            f"{r['created']}, commit {(git.get('commit') or '?')[:12]}{' (dirty)' if git.get('dirty') else ''}, "
            f"torch {r['environment']['torch']}, {r['environment']['cpu']}. "
            "`make bench-schemes` (docs/schemes.md explains the byte convention and the model).", ""]
    body = [*_measured(r), "", *_table(r), "", *_projection(r), "", *_premise(r), "",
            "![bytes per image and projected speed-up](schemes.png)"]
    return "\n".join(head + body) + "\n"


def plot(r: dict, out) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]  # wire bytes per image against K (full net, 224 px, from arch.py)
    for scheme, rows in r["bytes_per_image_by_k"].items():
        ax.plot([k for k, _ in rows], [b / 1024 for _, b in rows], marker="o", label=scheme)
    ax.set(yscale="log", xlabel="K (processes)", ylabel="wire KB per image, per process",
           title="Bytes per image (full net, 224 px, 128 per replica)")
    ax.legend()
    for ax, name in zip(axes[1:], PICTURED_LINKS):
        p = r["projection"][name]
        colors = {}
        for label, s in p["schemes"].items():
            color = colors.setdefault(s["scheme"], f"C{len(colors)}")
            ax.plot([row["k"] for row in s["rows"]], [row["speedup"] for row in s["rows"]], marker="o", color=color,
                    linestyle="-" if s["regime"] == "128 per replica" else "--", label=label)
        ks = sorted({row["k"] for s in p["schemes"].values() for row in s["rows"]})
        ax.plot(ks, ks, color="grey", linestyle=":", label="linear")
        ax.set(yscale="log", xlabel="K (devices)", ylabel="speed-up over one device", title=name)
        ax.set_yticks([1, 2, 4, 8, 16, 32, 64])
        ax.legend(fontsize=7)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, format="png", dpi=110)
    plt.close(fig)


def write(output_dir, name: str, result: dict) -> dict[str, Path]:
    """``name``.json, .md and .png in ``output_dir``, each atomically."""
    from alexnet_mp.net.arch import spec_for
    from alexnet_mp.parallel import bytes_model

    spec = spec_for("full", 1000)
    ks = sorted({row["k"] for p in result["projection"].values() for s in p["schemes"].values() for row in s["rows"]})
    result["bytes_per_image_by_k"] = {
        scheme: [(k, bytes_model.per_step(bytes_model.moves(scheme, spec, batch=(b := bytes_model.global_batch(
            scheme, spec, k, 128)), k=k))["wire"] / b) for k in ks if not (scheme == "towers" and k % spec.towers)]
        for scheme in bytes_model.SCHEMES}
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: output_dir / f"{name}.{ext}" for ext in ("json", "md", "png")}
    atomic_write(paths["json"], json.dumps(result, indent=1, default=str) + "\n")
    atomic_write(paths["md"], markdown(result))
    png = io.BytesIO()
    plot(result, png)
    atomic_write(paths["png"], png.getvalue())
    return paths
