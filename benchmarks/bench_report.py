"""bench-1gpu-vs-2gpu, the report: the results as JSON, Markdown and a figure."""

from __future__ import annotations

import datetime as _dt
import json
import platform
import statistics
import subprocess
from pathlib import Path

import torch
from omegaconf import DictConfig

from alexnet_mp.stats import paired_difference, spread

from bench_configs import (CONFIGS, DEVICES_OF, MODEL_OF, NAME, PAPER_DELTAS, PROCESSES_OF, REPO, TARGETS,
                           TRAINED)
from bench_timing import cpu_name


_spread = spread  # mean, std (None for one seed), min, max, n: shared with make reproduce


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", "--no-optional-locks", *args], cwd=REPO, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def environment(plan: dict, cfg: DictConfig) -> dict:
    status = _git("status", "--porcelain")
    return {
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "device_kind": plan["kind"], "backend": plan["backend"], "device_meaning": plan["meaning"],
        "device_names": plan["names"], "cpu": cpu_name(), "cpu_cores_available": len(plan["cores"]),
        "threads_per_device": int(cfg.threads) if plan["kind"] == "cpu" else None,
        "batch": int(cfg.batch), "input_size": int(cfg.input_size),
        "git_commit": _git("rev-parse", "HEAD"), "git_dirty": bool(status) if status is not None else None,
    }


def build_results(time_part: dict[str, dict], error_part: dict[str, dict], env: dict, settings: dict,
                  scale: dict | None = None) -> dict:
    """Every figure of the benchmark, per configuration, plus the ratios, error differences and targets.

    ``time_part`` maps a configuration to :func:`summarise_time`'s result or ``{"skipped": reason}``;
    ``error_part`` maps a trained configuration to :func:`summarise_errors`'s result or ``{"skipped": reason}``.
    """
    configs = {}
    for name in CONFIGS:
        configs[name] = {"model": MODEL_OF[name], "devices": DEVICES_OF[name],
                         "time": time_part.get(name, {"skipped": "not measured"})}
        if name in TRAINED:
            configs[name]["error"] = error_part.get(name, {"skipped": "not measured"})

    def timed(name: str) -> dict | None:
        t = configs[name]["time"]
        return None if "skipped" in t else t

    ratios = {}
    for base in ("half-1dev", "half-1dev+neighbour", "full-1dev"):
        a, b = timed("full-2dev"), timed(base)
        key = f"full-2dev/{base}"
        if a and b and len(a.get("round_medians", [])) > 1 and len(a["round_medians"]) == len(b.get("round_medians", [])):
            # Timed in rounds: the ratio within each round, then their median.
            per_round = [x / y for x, y in zip(a["round_medians"], b["round_medians"])]
            step = statistics.median(per_round)
            ratios[key] = {"step_time": step, "images_per_s": 1 / step, "per_round": per_round}
        elif a and b:
            ratios[key] = {"step_time": a["step_seconds"]["median"] / b["step_seconds"]["median"],
                           "images_per_s": a["images_per_s"] / b["images_per_s"]}
        else:
            ratios[key] = None
    if ratios["full-2dev/half-1dev"] is not None:
        # What the arithmetic alone allows: a tower's work against the half net's.
        tower = timed("full-2dev")["per_device"][0]["forward_macs_per_image"]
        half = timed("half-1dev")["per_device"][0]["forward_macs_per_image"]
        ratios["full-2dev/half-1dev"]["arithmetic_per_device"] = tower / half
    e_full, e_half = configs["full-2dev"].get("error", {}), configs["half-1dev"].get("error", {})
    if "skipped" not in e_full and "skipped" not in e_half and e_full and e_half:
        train_rate = e_full["train_images_per_s"] / e_half["train_images_per_s"]
        if ratios["full-2dev/half-1dev"] is not None:
            ratios["full-2dev/half-1dev"]["train_images_per_s"] = train_rate
        else:
            ratios["full-2dev/half-1dev"] = {"train_images_per_s": train_rate}

    differences = None
    if "skipped" not in e_full and "skipped" not in e_half and e_full and e_half:
        differences = {"definition": "full-2dev error minus half-1dev error, per seed (negative: full net better); "
                                     "low/high: the 95% Student-t interval of the mean (alexnet_mp.stats)",
                       "paper": dict(PAPER_DELTAS)}
        for crop in ("center", "ten_crop"):
            differences[crop] = {}
            for k in ("top1_err", "top5_err"):
                full, half = ({r["seed"]: r[crop][k] for r in e["runs"]} for e in (e_full, e_half))
                d = paired_difference(full, half)
                differences[crop][k] = {**d, "per_seed": [full[s] - half[s] for s in d["seeds"]]}

    targets = []
    t2 = timed("full-2dev")
    for label, key, limit in TARGETS:
        if key == "exposed_comm_share":
            value = t2["comm"]["exposed_share_of_step"] if t2 and t2.get("comm") else None
        else:
            value = ratios[key]["step_time"] if ratios.get(key) and "step_time" in ratios[key] else None
        entry = {"target": label, "value": value, "limit": limit, "met": None if value is None else bool(value <= limit)}
        if key == "exposed_comm_share" and t2 and t2.get("comm"):  # the issue asks for the total beside it
            c = t2["comm"]
            entry["beside"] = {"exposed, mean over the towers": c["exposed_mean_share_of_step"],
                               "exposed, larger of the pair": c["exposed_upper_share_of_step"],
                               "gloo threads' CPU outside the waits": c.get("helper_cpu_outside_waits_share_of_step"),
                               "gloo threads' CPU": c["helper_cpu_share_of_step"],
                               "waited": c["waited_share_of_step"], "total": c["share_of_step"]}
        targets.append(entry)
    return {"benchmark": NAME,
            "claim": "Krizhevsky et al. 2012, sec. 3.2 fn. 2: the two-GPU net has 1.7% lower top-1 and 1.2% lower "
                     "top-5 error than the one-GPU net with half the kernels, and trains slightly faster",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "settings": settings, "environment": env, "configurations": configs, "ratios": ratios,
            "error_differences": differences, "targets": targets, "notes": _notes(configs, targets, env),
            "scale": scale}


def _comm_share(comm: dict | None) -> str:
    if not comm:
        return "-"
    exposed = ("-" if comm["exposed_share_of_step"] is None  # no host timestamps (CUDA events)
               else f"{_pct(comm['exposed_mean_share_of_step'])}-{_pct(comm['exposed_share_of_step'])}")
    return f"{_pct(comm['share_of_step'])} ({_pct(comm['waited_share_of_step'])}; {exposed})"


def _gflops(x: float) -> str:
    return f"{x / 1e9:.0f} GFLOP/s"


def _notes(configs: dict, targets: list[dict], env: dict) -> list[str]:
    """What was skipped, what failed, and why a target was missed, read off the figures."""
    notes = [f"{n}: time part skipped: {c['time']['skipped']}" for n, c in configs.items() if "skipped" in c["time"]]
    notes += [f"{n}: error part skipped: {c['error']['skipped']}" for n, c in configs.items()
              if "skipped" in c.get("error", {})]
    for name, c in configs.items():
        for run in c.get("error", {}).get("runs", []):
            chance = run.get("chance_top1_err")
            if chance is not None and run["center"]["top1_err"] >= chance - 1e-9:
                notes.append(f"{name} seed {run['seed']} ended at chance level (centre top-1 error "
                             f"{100 * run['center']['top1_err']:.1f}%, chance {100 * chance:.1f}%): the net did not "
                             f"learn within the budget, so its error says nothing about the paper's claim")
    t = {n: c["time"] for n, c in configs.items() if "skipped" not in c["time"]}
    for name, c in t.items():
        if PROCESSES_OF[name] > DEVICES_OF[name]:
            continue  # its neighbour is the other process, on purpose
        if (c.get("other_processes_cpu_share") or 0.0) > 0.05:
            notes.append(f"{name}: other processes used {100 * c['other_processes_cpu_share']:.0f}% of the machine's "
                         f"CPU time during the timed steps; its step times are disturbed (rerun on a quiet machine)")
    two = t.get("full-2dev")
    if env.get("device_kind") == "cpu" and (env.get("cpu_cores_available") or 0) < 2:
        notes.append("fewer than 2 CPU cores are available: the two full-2dev processes share a core")
    if two and two.get("device_independence", 1.0) < 0.8:
        d = two["per_device"][0]
        notes.append(
            f"the two devices are not independent: a matmul runs at {_gflops(d['peak_flops_alone_per_s'])} on one "
            f"device alone but {_gflops(d['peak_flops_per_s'])} on each while both run "
            f"({100 * two['device_independence']:.0f}%): the cores are shared, with other processes (see their CPU "
            f"share) or in the hardware (SMT siblings); two devices then do little more arithmetic per second than one")
    for target in targets:
        if target["met"] is not False or not two:
            continue
        if target["target"].startswith("exposed communication"):
            comm = two["comm"]
            layers: dict[str, float] = {}
            for d in two["per_device"]:
                for k, v in d["comm_by_layer"].items():
                    layers[k] = layers.get(k, 0.0) + v["seconds"] / len(two["per_device"]) / two["timed_steps"]
            worst = ", ".join(f"{k} {v:.3f} s" for k, v in sorted(layers.items(), key=lambda kv: -kv[1])[:3])
            notes.append(
                f"missed '{target['target']}' ({100 * target['value']:.1f}%, a bound): {comm['exposed_seconds_per_step']:.3f}"
                f" s per step launching collectives, waiting for bytes in flight (the larger figure of the pair) and "
                f"in gloo's threads outside the waits, of {comm['waited_seconds_per_step']:.3f} s a tower waited "
                f"(the rest for the other tower's compute) and {comm['seconds_per_step']:.3f} s inside "
                f"collectives (largest: {worst}); moving the {comm['bytes_per_image_per_device'] / 1024:.0f} KiB per "
                f"image at the {comm['transfer_bytes_per_s'] / 1e9:.2f} GB/s an all-gather reaches without waiting "
                f"takes about {comm['transfer_seconds_per_step_estimate']:.3f} s")
            continue
        base = "half-1dev+neighbour" if "half-1dev+neighbour" in target["target"] else "full-1dev"
        if base not in t:
            continue
        other = t[base]["per_device"][0]
        work = two["per_device"][0]["forward_macs_per_image"] / other["forward_macs_per_image"]
        speed = statistics.fmean(d["achieved_flops_per_s"] for d in two["per_device"]) / other["achieved_flops_per_s"]
        share = two["comm"]["share_of_step"]
        tower = two["per_device"][0]
        notes.append(
            f"missed '{target['target']}' ({target['value']:.3f}): a full-2dev device does {work:.3f}x the arithmetic "
            f"of {base} per image but at {speed:.2f}x its FLOP/s ({_gflops(tower['achieved_flops_per_s'])} against "
            f"{_gflops(other['achieved_flops_per_s'])}; {100 * tower['mfu_vs_alone']:.0f}% "
            f"against {100 * other['mfu_vs_alone']:.0f}% of a lone device's matmul rate); the step ratio is "
            f"{work:.3f} / {speed:.2f} = {work / speed:.3f}"
            f"{' over the pooled steps of every round' if 'round_medians' in two and len(two['round_medians']) > 1 else ''}"
            f", communication included ({100 * share:.1f}% of the step)")
    return notes


def _rounds_text(rounds: int) -> str:
    return (f" per configuration in each of {rounds} rounds (the configurations in turn; a ratio is the median of "
            f"the rounds' ratios, the step figures are over every round's steps)") if rounds > 1 else ""


def _interval(d: dict) -> str:
    """``; 95% [low, high]`` in points, or nothing when there are too few seeds for one."""
    return "" if d.get("low") is None else f"; 95% [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]"


def _spread_text(std: float | None, points: bool = False) -> str:
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
            f"commit {(env['git_commit'] or '?')[:10]}{' (dirty)' if env['git_dirty'] else ''}, {results['created']}."]


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
    peak = " / ".join(_gflops(x["peak_flops_per_s"]) + (f" ({_gflops(x['peak_flops_alone_per_s'])} alone)"
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
                      "multiply-adds per image, alexnet_mp.flops) per second over the matmul rate measured in "
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
    lines += [f"Data: {' '.join(s['data'])}; {s['epochs']} epochs; seeds {s['seeds']}. Mean (std over seeds).", "",
              "| configuration | centre top-1 | centre top-5 | ten-crop top-1 | ten-crop top-5 "
              "| training images/s |",
              "|---|---|---|---|---|---|"]
    for name, e in ec.items():
        cells = [f"{_pct(e[c][k]['mean'], 2)} ({_spread_text(e[c][k]['std'])})"
                 for c in ("center", "ten_crop") for k in ("top1_err", "top5_err")]
        lines.append(f"| {name} | {' | '.join(cells)} | {e['train_images_per_s']:.1f} |")
    d = results["error_differences"]
    cells = [f"{100 * d[c][k]['mean']:+.2f} ({_spread_text(d[c][k]['std'], points=True)}{_interval(d[c][k])})"
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


def plot(results: dict, path: Path) -> None:
    """Throughput (left) and error differences against the paper's (right), side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
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

    d = results["error_differences"]
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
        right.set_title(f"Error, full-2dev minus half-1dev\n(mean and std over {len(s['seeds'])} seed(s), "
                        f"{s['epochs']} epochs)")
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
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def write_results(results: dict, output_dir: Path) -> dict[str, Path]:
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: output_dir / f"{NAME}.{ext}" for ext in ("json", "md", "png")}
    paths["json"].write_text(json.dumps(results, indent=1) + "\n")
    paths["md"].write_text(markdown(results))
    plot(results, paths["png"])
    return paths


