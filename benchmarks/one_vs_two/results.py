"""bench-1gpu-vs-2gpu, the results: every figure per configuration, the ratios between them,
the paired error differences (sec. 3.2 fn. 2), the targets, the environment, and notes read
off the figures (what was skipped, what failed, why a target was missed)."""

from __future__ import annotations

import datetime as _dt
import platform
import statistics

import torch
from omegaconf import DictConfig

from alexnet_mp.job.provenance import git_state
from alexnet_mp.paper.student_t import paired_difference

from benchmarks.shared.machine import cpu_name
from benchmarks.one_vs_two.configs import CONFIGS, DEVICES_OF, MODEL_OF, NAME, PAPER_DELTAS, PROCESSES_OF, TARGETS, TRAINED

__all__ = ["environment", "build_results", "gflops"]


def environment(plan: dict, cfg: DictConfig) -> dict:
    git = git_state()
    return {
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "device_kind": plan["kind"], "backend": plan["backend"], "device_meaning": plan["meaning"],
        "device_names": plan["names"], "cpu": cpu_name(), "cpu_cores_available": len(plan["cores"]),
        "threads_per_device": int(cfg.threads) if plan["kind"] == "cpu" else None,
        "batch": int(cfg.batch), "input_size": int(cfg.input_size),
        "git_commit": git["commit"], "git_dirty": git["dirty"],
    }


def build_results(time_part: dict[str, dict], error_part: dict[str, dict], env: dict, settings: dict,
                  scale: dict | None = None) -> dict:
    """Every figure of the benchmark, per configuration, plus the ratios, error differences and targets.

    ``time_part`` maps a configuration to :func:`~benchmarks.one_vs_two.timing_summary.summarise_time`'s
    result or ``{"skipped": reason}``; ``error_part`` maps a trained configuration to
    :func:`~benchmarks.one_vs_two.bench_1gpu_vs_2gpu.summarise_errors`'s result or ``{"skipped": reason}``.
    """
    configs = {}
    for name in CONFIGS:
        configs[name] = {"model": MODEL_OF[name], "devices": DEVICES_OF[name],
                         "time": time_part.get(name, {"skipped": "not measured"})}
        if name in TRAINED:
            configs[name]["error"] = error_part.get(name, {"skipped": "not measured"})
    ratios = _ratios(configs)
    targets = _targets(configs, ratios)
    return {"benchmark": NAME,
            "claim": "Krizhevsky et al. 2012, sec. 3.2 fn. 2: the two-GPU net has 1.7% lower top-1 and 1.2% lower "
                     "top-5 error than the one-GPU net with half the kernels, and trains slightly faster",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "settings": settings, "environment": env, "configurations": configs, "ratios": ratios,
            "error_differences": _error_differences(configs), "targets": targets,
            "notes": _notes(configs, targets, env), "scale": scale}


def _timed(configs: dict, name: str) -> dict | None:
    t = configs[name]["time"]
    return None if "skipped" in t else t


def _both_errors(configs: dict) -> tuple[dict, dict] | None:
    """The full and half nets' error parts, when both were measured."""
    e_full, e_half = configs["full-2dev"].get("error", {}), configs["half-1dev"].get("error", {})
    return (e_full, e_half) if "skipped" not in e_full and "skipped" not in e_half and e_full and e_half else None


def _ratios(configs: dict) -> dict:
    """full-2dev's step time and throughput against each one-device configuration."""
    ratios = {}
    for base in ("half-1dev", "half-1dev+neighbour", "full-1dev"):
        a, b = _timed(configs, "full-2dev"), _timed(configs, base)
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
        tower = _timed(configs, "full-2dev")["per_device"][0]["forward_macs_per_image"]
        half = _timed(configs, "half-1dev")["per_device"][0]["forward_macs_per_image"]
        ratios["full-2dev/half-1dev"]["arithmetic_per_device"] = tower / half
    both = _both_errors(configs)
    if both and both[0]["train_images_per_s"] and both[1]["train_images_per_s"]:  # none from a sweep's runs
        train_rate = both[0]["train_images_per_s"] / both[1]["train_images_per_s"]
        if ratios["full-2dev/half-1dev"] is not None:
            ratios["full-2dev/half-1dev"]["train_images_per_s"] = train_rate
        else:
            ratios["full-2dev/half-1dev"] = {"train_images_per_s": train_rate}
    return ratios


def _error_differences(configs: dict) -> dict | None:
    """full-2dev's error minus half-1dev's, paired by seed, per crop and top-k."""
    both = _both_errors(configs)
    if not both:
        return None
    differences: dict = {"definition": "full-2dev error minus half-1dev error, per seed (negative: full net better); "
                                       "low/high: the 95% Student-t interval of the mean (alexnet_mp.paper.student_t)",
                         "paper": dict(PAPER_DELTAS)}
    for crop in ("center", "ten_crop"):
        differences[crop] = {}
        for k in ("top1_err", "top5_err"):
            full, half = ({r["seed"]: r[crop][k] for r in e["runs"]} for e in both)
            d = paired_difference(full, half)
            differences[crop][k] = {**d, "per_seed": [full[s] - half[s] for s in d["seeds"]]}
    return differences


def _targets(configs: dict, ratios: dict) -> list[dict]:
    targets = []
    t2 = _timed(configs, "full-2dev")
    for label, key, limit in TARGETS:
        if key == "exposed_comm_share":
            value = t2["comm"]["exposed_share_of_step"] if t2 and t2.get("comm") else None
        else:
            value = ratios[key]["step_time"] if ratios.get(key) and "step_time" in ratios[key] else None
        entry = {"target": label, "value": value, "limit": limit, "met": None if value is None else bool(value <= limit)}
        if key == "exposed_comm_share" and t2 and t2.get("comm"):  # the bound, and what it bounds, beside it
            c = t2["comm"]
            entry["beside"] = {"exposed, mean over the towers": c["exposed_mean_share_of_step"],
                               "exposed, larger of the pair": c["exposed_upper_share_of_step"],
                               "gloo threads' CPU outside the waits": c.get("helper_cpu_outside_waits_share_of_step"),
                               "gloo threads' CPU": c["helper_cpu_share_of_step"],
                               "waited": c["waited_share_of_step"], "total": c["share_of_step"]}
        targets.append(entry)
    return targets


def gflops(x: float) -> str:
    return f"{x / 1e9:.0f} GFLOP/s"


def _notes(configs: dict, targets: list[dict], env: dict) -> list[str]:
    """What was skipped, what failed, and why a target was missed, read off the figures."""
    t = {n: c["time"] for n, c in configs.items() if "skipped" not in c["time"]}
    two = t.get("full-2dev")
    notes = _skip_notes(configs) + _machine_notes(t, env)
    for target in targets:
        if target["met"] is not False or not two:
            continue
        if target["target"].startswith("exposed communication"):
            notes.append(_comm_note(target, two))
            continue
        base = "half-1dev+neighbour" if "half-1dev+neighbour" in target["target"] else "full-1dev"
        if base in t:
            notes.append(_ratio_note(target, two, base, t[base]))
    return notes


def _skip_notes(configs: dict) -> list[str]:
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
    return notes


def _machine_notes(t: dict[str, dict], env: dict) -> list[str]:
    """When the machine disturbed the timing: other processes, too few cores, shared devices."""
    notes = []
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
            f"the two devices are not independent: a matmul runs at {gflops(d['peak_flops_alone_per_s'])} on one "
            f"device alone but {gflops(d['peak_flops_per_s'])} on each while both run "
            f"({100 * two['device_independence']:.0f}%): the cores are shared, with other processes (see their CPU "
            f"share) or in the hardware (SMT siblings); two devices then do little more arithmetic per second than one")
    return notes


def _comm_note(target: dict, two: dict) -> str:
    """Why the exposed-communication target was missed: where the collectives' time went."""
    comm = two["comm"]
    layers: dict[str, float] = {}
    for d in two["per_device"]:
        for k, v in d["comm_by_layer"].items():
            layers[k] = layers.get(k, 0.0) + v["seconds"] / len(two["per_device"]) / two["timed_steps"]
    worst = ", ".join(f"{k} {v:.3f} s" for k, v in sorted(layers.items(), key=lambda kv: -kv[1])[:3])
    return (f"missed '{target['target']}' ({100 * target['value']:.1f}%, a bound): {comm['exposed_seconds_per_step']:.3f}"
            f" s per step launching collectives, waiting for bytes in flight (the larger figure of the pair) and "
            f"in gloo's threads outside the waits, of {comm['waited_seconds_per_step']:.3f} s a tower waited "
            f"(the rest for the other tower's compute) and {comm['seconds_per_step']:.3f} s inside "
            f"collectives (largest: {worst}); moving the {comm['bytes_per_image_per_device'] / 1024:.0f} KiB per "
            f"image at the {comm['transfer_bytes_per_s'] / 1e9:.2f} GB/s an all-gather reaches without waiting "
            f"takes about {comm['transfer_seconds_per_step_estimate']:.3f} s")


def _ratio_note(target: dict, two: dict, base: str, timed: dict) -> str:
    """Why a step-ratio target was missed: the arithmetic per device against the FLOP/s reached."""
    other = timed["per_device"][0]
    work = two["per_device"][0]["forward_macs_per_image"] / other["forward_macs_per_image"]
    speed = statistics.fmean(d["achieved_flops_per_s"] for d in two["per_device"]) / other["achieved_flops_per_s"]
    share = two["comm"]["share_of_step"]
    tower = two["per_device"][0]
    return (f"missed '{target['target']}' ({target['value']:.3f}): a full-2dev device does {work:.3f}x the arithmetic "
            f"of {base} per image but at {speed:.2f}x its FLOP/s ({gflops(tower['achieved_flops_per_s'])} against "
            f"{gflops(other['achieved_flops_per_s'])}; {100 * tower['mfu_vs_alone']:.0f}% "
            f"against {100 * other['mfu_vs_alone']:.0f}% of a lone device's matmul rate); the step ratio is "
            f"{work:.3f} / {speed:.2f} = {work / speed:.3f}"
            f"{' over the pooled steps of every round' if 'round_medians' in two and len(two['round_medians']) > 1 else ''}"
            f", communication included ({100 * share:.1f}% of the step)")
