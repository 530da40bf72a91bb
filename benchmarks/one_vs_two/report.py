"""bench-1gpu-vs-2gpu, the report: the results (:mod:`.results`) as Markdown and a
figure, which :func:`benchmarks.shared.output.write_results` writes with the JSON."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from benchmarks.one_vs_two.configs import NAME, PAPER_DELTAS, TRAINED
from benchmarks.one_vs_two.results import gflops

__all__ = ["markdown", "plot", "spread_text"]


def _comm_share(comm: dict | None) -> str:
    if not comm:
        return "-"
    exposed = ("-" if comm["exposed_share_of_step"] is None  # no host timestamps (CUDA events)
               else f"{_pct(comm['exposed_mean_share_of_step'])}-{_pct(comm['exposed_share_of_step'])}")
    return f"{_pct(comm['share_of_step'])} ({_pct(comm['waited_share_of_step'])}; {exposed})"


def _rounds_text(rounds: int) -> str:
    return (f" per configuration in each of {rounds} rounds (the configurations in turn; a ratio is the median of "
            f"the rounds' ratios, the step figures are over every round's steps)") if rounds > 1 else ""


def _interval(d: dict) -> str:
    """``; 95% [low, high]`` in points, or nothing when there are too few seeds for one."""
    return "" if d.get("low") is None else f"; 95% [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]"


def spread_text(std: float | None, points: bool = False) -> str:
    """A standard deviation as a percentage, or in points; ``n/a`` for one seed."""
    if std is None:
        return "n/a"
    return f"{100 * std:.2f}" if points else _pct(std, 2)


def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def _mib(x: float | None) -> str:
    return "-" if x is None else f"{x / 2**20:.0f} MiB"


def _header(results: dict) -> list[str]:
    env, s = results["environment"], results["settings"]
    return [f"# {NAME}", "",
            f"{results['claim']}.", "",
            f"Device: {env['device_meaning']} ({', '.join(env['device_names'])}). Batch {s['batch']}, "
            f"{s['input_size']}px, {s['warmup_steps']} warm-up + {s['timed_steps']} timed steps"
            f"{_rounds_text(s.get('rounds', 1))}; "
            f"speed options {', '.join(f'{k}={v}' for k, v in s['speed'].items())}, comm.overlap={s['overlap']}; "
            f"torch {env['torch']}, "
            f"commit {(env['git_commit'] or '?')[:10]}{' (dirty)' if env['git_dirty'] else ''}, "
            f"{_timing_source(results).get('created', results['created'])}."] + _timing_note(results)


def _timing_source(results: dict) -> dict:
    return (results.get("sources") or {}).get("timing") or {}


def _commit(git: dict | None, committed_in: dict | None) -> str:
    """The code's commit as a result recorded it, or else the commit that added the result's file."""
    if git and git.get("commit"):
        return f"commit {git['commit'][:10]}{' (dirty)' if git.get('dirty') else ''}"
    if committed_in:
        return (f"the code's commit not recorded in the result; the file was committed in "
                f"{committed_in['commit'][:10]} ({committed_in['date']})")
    return "the code's commit not recorded"


def _timing_note(results: dict) -> list[str]:
    t = _timing_source(results)
    if not t:
        return []
    return ["", f"The time part was not measured again: it is the run of {t.get('created')} in `{t.get('file')}` "
                f"({_commit({'commit': t.get('commit'), 'dirty': t.get('dirty')}, t.get('committed_in'))}; "
                f"{', '.join(t.get('devices') or ['device not recorded'])}; torch {t.get('torch')}), with its "
                f"settings; this report was written {results['created']}."]


def _error_note(e: dict) -> str:
    devices = ", ".join(e["devices"]) if e.get("devices") else "device not recorded in the result"
    how = ("as two towers under torchrun" if e.get("full_processes") == 2 else
           "as one process (groups=2: the two towers' function, which the exactness tests prove)")
    return (f"From the reproduce sweep `{e['file']}`, not trained again: its full net, trained {how}, is "
            f"full-2dev, and its half net half-1dev, paired on seeds {e['seeds']}; {e['epochs']} epochs each, "
            f"data {e['data']}, recipe {' '.join(e.get('train_overrides') or [])}; {devices}; "
            f"{_commit(e.get('git'), e.get('committed_in'))}. The sweep ran its runs side by side, so no "
            f"training speed is given.")


def _time_row(name: str, t: dict) -> str:
    """One configuration's row of the time table."""
    if "skipped" in t:
        return f"| {name} | skipped: {t['skipped']} | | | | | | | | |"
    d = t["per_device"]
    st = t["step_seconds"]
    params = " / ".join(f"{x['parameters'] / 1e6:.2f}M" for x in d)
    memory = " / ".join(_mib(x["peak_memory_bytes"]) + (f" (+{_mib(x['peak_memory_bytes'] - base)})"
                                                      if (base := x["baseline_memory_bytes"]) else "") for x in d)
    mfu = " / ".join(_pct(x["mfu"]) + (f" ({_pct(x['mfu_vs_alone'])})" if t["devices"] > 1 else "") for x in d)
    peak = " / ".join(gflops(x["peak_flops_per_s"]) + (f" ({gflops(x['peak_flops_alone_per_s'])} alone)"
                                                        if t["devices"] > 1 else "") for x in d)
    comm_bytes = f"{t['comm']['bytes_per_image_per_device'] / 1024:.0f} KiB" if t["comm"] else "-"
    comm_share = _comm_share(t["comm"])
    return (f"| {name} | {st['median']:.3f} s ({st['min']:.3f}-{st['max']:.3f}) | {t['images_per_s']:.1f} "
            f"| {params} | {memory} | {mfu} | {peak} | {comm_bytes} | {comm_share} "
            f"| {_pct(t['other_processes_cpu_share'], 0)} |")


def _time_section(results: dict) -> list[str]:
    lines = ["", "## Time (one training step)", "",
             "| configuration | step median (min-max) | images/s | params / device | peak memory / device "
             "| MFU / device | peak matmul / device | comm bytes / image / device "
             "| comm share (waited; exposed: mean-bound) "
             "| other processes' CPU |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_time_row(name, c["time"]) for name, c in results["configurations"].items()]
    memory_kinds = {x["memory_kind"] for c in results["configurations"].values() if "skipped" not in c["time"]
                    for x in c["time"]["per_device"]}
    if memory_kinds:
        lines += ["", f"Peak memory: {'; '.join(sorted(memory_kinds))}; in brackets, above the process's resident "
                      "size after importing torch. MFU: model FLOPs (3 x 2 x conv/fc "
                      "multiply-adds per image, alexnet_mp.net.flops) per second over the matmul rate measured in "
                      "the same process on the same device, at the model's precision and TF32 setting, while every "
                      "process of the configuration runs one; in brackets (full-2dev), against the device's rate "
                      "when it runs alone. Comm share: from the start to the end of each collective; in brackets, "
                      "waited: the time a tower spent launching collectives and waiting for them (mean over the "
                      "towers), and exposed: the part of that before the bytes arrived but after the other tower "
                      "had launched the collective (host timestamps; the rest of the wait is for the other tower's "
                      "compute, load imbalance), as the mean over the towers and as a bound: each collective's "
                      "larger figure of the pair, plus the CPU time gloo's threads took on the towers' cores "
                      "outside the towers' waits."]
    return lines


def _ratio_row(key: str, r: dict | None) -> str:
    if r is None:
        return f"| {key} | - | - | |"
    other = []
    if "arithmetic_per_device" in r:
        other.append(f"arithmetic per device {r['arithmetic_per_device']:.3f}")
    if "train_images_per_s" in r:
        other.append(f"training images/s (error part) {r['train_images_per_s']:.3f}")
    if "per_round" in r:
        other.append(f"median of the rounds' {', '.join(f'{x:.3f}' for x in r['per_round'])}")
    return (f"| {key} | {r['step_time']:.3f} | {r['images_per_s']:.3f} | {'; '.join(other)} |"
            if "step_time" in r else f"| {key} | - | - | {'; '.join(other)} |")


def _target_row(t: dict) -> str:
    value = "-" if t["value"] is None else f"{t['value']:.3f}"
    if t.get("beside"):
        value += " (" + ", ".join(f"{k} {'-' if v is None else f'{v:.3f}'}" for k, v in t["beside"].items()) + ")"
    return f"| {t['target']} | {value} | {'-' if t['met'] is None else ('yes' if t['met'] else 'no')} |"


def _error_section(results: dict) -> list[str]:
    s = results["settings"]
    lines = ["", "## Error (validation)", ""]
    ec = {n: results["configurations"][n]["error"] for n in TRAINED}
    if any("skipped" in e for e in ec.values()):
        return lines + [f"- {n}: skipped: {e['skipped']}" for n, e in ec.items() if "skipped" in e]
    source = (results.get("sources") or {}).get("error")
    lines += ([_error_note(source), ""] if source else [])
    lines += [f"Data: {' '.join(s['data'])}; {s['epochs']} epochs; seeds {s['seeds']}. Mean (std over seeds).", "",
              "| configuration | centre top-1 | centre top-5 | ten-crop top-1 | ten-crop top-5 "
              "| training images/s |",
              "|---|---|---|---|---|---|"]
    for name, e in ec.items():
        cells = [f"{_pct(e[c][k]['mean'], 2)} ({spread_text(e[c][k]['std'])})"
                 for c in ("center", "ten_crop") for k in ("top1_err", "top5_err")]
        rate = "-" if e["train_images_per_s"] is None else f"{e['train_images_per_s']:.1f}"
        lines.append(f"| {name} | {' | '.join(cells)} | {rate} |")
    d = results["error_differences"]
    cells = [f"{100 * d[c][k]['mean']:+.2f} ({spread_text(d[c][k]['std'], points=True)}{_interval(d[c][k])})"
             for c in ("center", "ten_crop") for k in ("top1_err", "top5_err")]
    lines.append(f"| full-2dev - half-1dev (points) | {' | '.join(cells)} | |")
    paper = f"{100 * PAPER_DELTAS['top1_err']:+.1f} | {100 * PAPER_DELTAS['top5_err']:+.1f}"
    lines.append(f"| paper, sec. 3.2 fn. 2 (points) | {paper} | {paper} | |")
    return lines


def _scale_section(sc: dict) -> list[str]:
    n = sc["devices"]
    lines = ["", f"## {n} devices: the half net as {n} data-parallel replicas against the full net as "
                 f"{n // 2} replicas of the tower pair", "",
             "| configuration | replicas x towers | step median (min-max) | images/s "
             "| tower exchange share (waited; exposed: mean-bound) |",
             "|---|---|---|---|---|"]
    for name, t in sc["configurations"].items():
        st = t["step_seconds"]
        share = _comm_share(t.get("comm"))
        lines.append(f"| {name} | {t['replicas']} x {t['towers']} | {st['median']:.3f} s "
                     f"({st['min']:.3f}-{st['max']:.3f}) | {t['images_per_s']:.1f} | {share} |")
    return lines + ["", f"full-{n}dev / half-{n}dev step time: {sc['full/half step']:.3f}. The gradient all-reduce "
                        "over the replicas (DDP) is inside the step time, not in the exchange share."]


def markdown(results: dict) -> str:
    """The benchmark's results as the Markdown report: time, ratios, targets, error, notes, scale-out."""
    lines = _header(results) + _time_section(results)
    lines += ["", "| ratio | step time | images/s | other |", "|---|---|---|---|"]
    lines += [_ratio_row(key, r) for key, r in results["ratios"].items()]
    lines += ["", "| target | value | met |", "|---|---|---|"]
    lines += [_target_row(t) for t in results["targets"]]
    lines += _error_section(results)
    if results["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
    if results.get("scale"):
        lines += _scale_section(results["scale"])
    return "\n".join(lines) + "\n"


def plot(results: dict, out: BinaryIO) -> None:
    """Throughput (left) and error differences against the paper's (right), side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    _plot_throughput(left, results)
    _plot_errors(right, results)
    fig.tight_layout()
    fig.savefig(out, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def _plot_throughput(left, results: dict) -> None:
    """Images per second of each timed configuration, bars from the slowest to the fastest step."""
    names, rates, lo, hi = [], [], [], []
    for name, c in results["configurations"].items():
        t = c["time"]
        if "skipped" in t:
            continue
        names.append(name)
        rates.append(t["images_per_s"])
        lo.append(t["images_per_s"] - t["batch"] / t["step_seconds"]["max"])
        hi.append(t["batch"] / t["step_seconds"]["min"] - t["images_per_s"])
    if names:
        bars = left.bar(names, rates, yerr=[lo, hi], capsize=4, color=["#4c72b0", "#dd8452", "#8c8c8c"][: len(names)])
        for bar, rate in zip(bars, rates):
            left.text(bar.get_x() + bar.get_width() / 2, bar.get_height() / 2, f"{rate:.1f}", ha="center",
                      va="center", fontsize=10, color="white", fontweight="bold")
    env, s = results["environment"], results["settings"]
    left.set_ylabel("images / s (median step; bars: min-max)")
    left.set_ylim(0, 1.25 * max([r + h for r, h in zip(rates, hi)] or [1.0]))
    left.set_title(f"Throughput, batch {s['batch']}, {s['input_size']}px, {env['device_kind']}")
    r = results["ratios"].get("full-2dev/half-1dev") or {}
    if "images_per_s" in r:
        left.text(0.02, 0.97, f"full-2dev / half-1dev: {r['images_per_s']:.2f}x\n(paper: \"slightly faster\")",
                  transform=left.transAxes, va="top", fontsize=9)


def _plot_errors(right, results: dict) -> None:
    """full-2dev's error minus half-1dev's per crop, with the paper's difference beside it."""
    d, s = results["error_differences"], results["settings"]
    labels, x, width = ["top-1", "top-5"], [0, 1], 0.35
    values = [0.0] + [100 * v for v in PAPER_DELTAS.values()]
    right.axhline(0, color="black", linewidth=0.8)
    if d:
        for offset, crop, color in ((-width / 2, "center", "#4c72b0"), (width / 2, "ten_crop", "#55a868")):
            means = [100 * d[crop][k]["mean"] for k in ("top1_err", "top5_err")]
            stds = [100 * (d[crop][k]["std"] or 0.0) for k in ("top1_err", "top5_err")]
            right.bar([i + offset for i in x], means, width, yerr=stds, capsize=4, color=color,
                      label="centre crop" if crop == "center" else "ten-crop")
            for i, m in zip(x, means):
                right.annotate(f"{m:+.2f}", (i + offset, m), ha="center", va="top" if m < 0 else "bottom",
                               xytext=(0, -3 if m < 0 else 3), textcoords="offset points", fontsize=8)
            values += [m - sd for m, sd in zip(means, stds)] + [m + sd for m, sd in zip(means, stds)]
        source = (results.get("sources") or {}).get("error")
        right.set_title(f"Error, full-2dev minus half-1dev\n(mean and std over {len(s['seeds'])} seed(s), "
                        f"{s['epochs']} epochs{', from ' + Path(source['file']).name if source else ''})")
    else:
        right.text(0.5, 0.75, "error part skipped", ha="center", va="center", transform=right.transAxes)
        right.set_title("Error, full-2dev minus half-1dev")
    paper = [100 * PAPER_DELTAS[k] for k in ("top1_err", "top5_err")]
    right.scatter(x, paper, marker="_", s=1600, linewidths=3, color="#c44e52", zorder=3,
                  label="paper, sec. 3.2 fn. 2")
    for i, p in zip(x, paper):
        right.annotate(f"paper {p:+.1f}", (i, p), ha="left", va="top", xytext=(24, -2), textcoords="offset points",
                       color="#c44e52", fontsize=9)
    right.set_xticks(x, labels)
    span = max(values) - min(values) or 1.0
    right.set_ylim(min(values) - 0.15 * span, max(values) + 0.15 * span)
    right.set_xlim(-0.7, 1.7)
    right.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3, frameon=False,
                 markerscale=0.4)
    right.set_ylabel("percentage points (negative: two-device net better)")
