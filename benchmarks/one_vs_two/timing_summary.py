"""bench-1gpu-vs-2gpu, the time part's summary: the ranks' figures of one configuration (from
:func:`.timing.time_worker`, one or several rounds) as one row: step times, throughput,
memory, MFU, and the communication, with how much of it was exposed."""

from __future__ import annotations

import os
import statistics

from alexnet_mp.net.flops import TRAIN_PASSES

__all__ = ["merge_rounds", "exposed_waits", "summarise_time"]


def _foreign_share(ranks: list[dict]) -> float | None:
    """Share of the machine's CPU time that processes other than the benchmark's used during the timed steps."""
    busy = ranks[0]["machine_busy_seconds"]
    if busy is None:
        return None
    mine = sum(r["timed_cpu_seconds"] for r in ranks)
    return max(busy - mine, 0.0) / (ranks[0]["timed_wall_seconds"] * (os.cpu_count() or 1))


def merge_rounds(rounds: list[list[dict]]) -> list[dict]:
    """One configuration timed in several rounds, as if its timed steps had run in one: per
    rank, the step and collective times joined, the counts and busy times summed, the matmul
    peaks averaged, the peak memory (with its own round's baseline) the largest."""
    merged = []
    for per_round in zip(*rounds):
        r = dict(per_round[-1])
        for key in ("step_seconds", "comm_seconds", "waited_by_step"):
            r[key] = [x for one in per_round for x in one[key]]
        for key in ("timeline_by_step", "helper_cpu_by_step"):
            values = [one.get(key) for one in per_round]
            r[key] = None if None in values else [x for one in values for x in one]
        for key in ("comm_bytes", "timed_wall_seconds", "timed_cpu_seconds", "machine_busy_seconds"):
            values = [one[key] for one in per_round]
            r[key] = None if None in values else sum(values)
        for key in ("peak_flops_per_s", "peak_flops_alone_per_s", "transfer_bytes_per_s"):
            values = [one[key] for one in per_round]
            r[key] = values[0] if None in values or not all(values) else statistics.fmean(values)
        highest = max(per_round, key=lambda one: one["peak_memory_bytes"])  # its peak and its baseline
        r["peak_memory_bytes"], r["baseline_memory_bytes"] = highest["peak_memory_bytes"], highest["baseline_memory_bytes"]
        layers: dict[str, dict] = {}
        for one in per_round:
            for layer, figures in one["comm_by_layer"].items():
                total = layers.setdefault(layer, dict.fromkeys(figures, 0))
                for k, v in figures.items():
                    total[k] += v
        r["comm_by_layer"] = layers
        merged.append(r)
    return merged


def exposed_waits(ranks: list[dict], towers: int) -> dict | None:
    """The seconds each tower waited for bytes in flight, from the collectives' host timestamps
    (``timeline_by_step``); None without them (CUDA events).

    A collective's transfer can start only once every tower of the pair has launched it. The
    part of a tower's wait before its partner's launch is a wait for the partner's compute
    (load imbalance); the launch itself and the rest of the wait, until the bytes arrived, are
    *exposed* communication. Per step: ``mean``, over the towers; ``upper``, each collective's
    larger figure of its pair, summed (the slowest pair's): the most the waits can have added to
    the step whichever tower was behind. ``by_collective``: seconds per step, per collective,
    per rank. Rank r
    is tower ``r % towers`` of replica ``r // towers`` (``alexnet_mp.parallel.placement``); a pair's
    towers run the same collectives in the same order.
    """
    if any(not r.get("timeline_by_step") for r in ranks):
        return None
    pairs: dict[int, list[dict]] = {}
    for r in ranks:
        pairs.setdefault(r["rank"] // towers, []).append(r)
    steps = len(ranks[0]["timeline_by_step"])
    mean, upper, by_collective = [], [], {}
    for i in range(steps):
        per_tower, per_pair = [], []
        for members in pairs.values():
            lines = [m["timeline_by_step"][i] for m in members]
            if len({tuple((e[0], e[1]) for e in line) for line in lines}) != 1:
                raise RuntimeError(f"step {i}: the towers of a pair ran different collectives")
            exposed, larger = [0.0] * len(members), 0.0
            for entries in zip(*lines):  # one collective, as each tower saw it
                partners_launched = max(e[2] for e in entries)
                each = [(launched - start) + max(0.0, end - max(begin, partners_launched))
                        for _, _, start, launched, begin, end, *_ in entries]
                larger += max(each)
                totals = by_collective.setdefault(f"{entries[0][0]}.{entries[0][1]}", {})
                for t, (m, x) in enumerate(zip(members, each)):
                    exposed[t] += x
                    totals[m["rank"]] = totals.get(m["rank"], 0.0) + x / steps
            per_tower += exposed
            per_pair.append(larger)
        mean.append(statistics.fmean(per_tower))
        upper.append(max(per_pair))
    return {"mean": mean, "upper": upper, "by_collective": by_collective}


def summarise_time(ranks: list[dict], batch: int, input_size: int, replicas: int = 1) -> dict:
    """Step-time statistics, images/s, and per-device parameters, memory, MFU and communication.
    ``batch`` is the global batch; each of ``replicas`` replicas computes its share of it."""
    local = batch / replicas
    # A step ends when the slowest tower ends it.
    steps = [max(r["step_seconds"][i] for r in ranks) for i in range(len(ranks[0]["step_seconds"]))]
    median = statistics.median(steps)
    per_device = []
    for r in ranks:
        flops_per_image = 2 * TRAIN_PASSES * r["forward_macs_per_image"]
        achieved = flops_per_image * local / median
        comm_s, step_s = sum(r["comm_seconds"]), sum(r["step_seconds"])
        waited_s = sum(sum(w.values()) for w in r["waited_by_step"])
        per_device.append({
            "rank": r["rank"], "device": r["device"], "threads": r["threads"],
            "parameters": r["parameters"],
            "peak_memory_bytes": r["peak_memory_bytes"], "baseline_memory_bytes": r["baseline_memory_bytes"],
            "memory_kind": r["memory_kind"],
            "forward_macs_per_image": r["forward_macs_per_image"],
            "train_flops_per_image": flops_per_image,
            "achieved_flops_per_s": achieved,
            "peak_flops_per_s": r["peak_flops_per_s"],
            "peak_flops_alone_per_s": r["peak_flops_alone_per_s"],
            "mfu": achieved / r["peak_flops_per_s"],
            "mfu_vs_alone": achieved / r["peak_flops_alone_per_s"],
            "comm_bytes_per_image": r["comm_bytes"] / (local * len(r["step_seconds"])),
            "comm_share": comm_s / step_s if step_s else 0.0,
            "waited_comm_share": waited_s / step_s if step_s else 0.0,
            "comm_by_layer": r["comm_by_layer"],
            # Below 1 when the process waited: for a peer in a collective, or for a core another process held.
            "on_cpu_share": r["timed_cpu_seconds"] / r["timed_wall_seconds"],
        })
    out = {
        "devices": len(ranks), "batch": batch, "input_size": input_size, "timed_steps": len(steps),
        "step_seconds": {"median": median, "min": min(steps), "max": max(steps),
                         "mean": statistics.fmean(steps), "all": steps},
        "images_per_s": batch / median,
        "per_device": per_device,
        "comm": None,
        "other_processes_cpu_share": _foreign_share(ranks),
    }
    if len(ranks) > 1 and all(r["transfer_bytes_per_s"] for r in ranks):  # towers exchanged
        out["comm"] = _comm_summary(ranks, per_device, steps, local, replicas)
        # Below 1 when the devices slow each other down (a shared core, memory bandwidth).
        out["device_independence"] = statistics.fmean(d["peak_flops_per_s"] / d["peak_flops_alone_per_s"]
                                                      for d in per_device)
    return out


def _comm_summary(ranks: list[dict], per_device: list[dict], steps: list[float], local: float,
                  replicas: int) -> dict:
    """The towers' exchange per step: bytes, seconds, waits, the exposed part and its bound."""
    per_image = statistics.fmean(d["comm_bytes_per_image"] for d in per_device)
    seconds = statistics.fmean(sum(r["comm_seconds"]) / len(r["comm_seconds"]) for r in ranks)
    rate = statistics.fmean(r["transfer_bytes_per_s"] for r in ranks)
    wire = per_image * local / rate
    exposed = exposed_waits(ranks, len(ranks) // replicas)
    helper = {r["rank"]: r.get("helper_cpu_by_step") for r in ranks}
    # gloo's threads share the tower's core: all of their CPU time is counted as taken from
    # the compute (an upper bound: what they take while the tower waits takes nothing).
    helper_steps = None
    if None not in helper.values():
        helper_steps = [max(h[i] for h in helper.values()) for i in range(len(steps))]
    bound = (None if exposed is None or helper_steps is None
             else [u + h for u, h in zip(exposed["upper"], helper_steps)])
    return {
        "bytes_per_image_per_device": per_image,
        "share_of_step": statistics.fmean(d["comm_share"] for d in per_device),
        "seconds_per_step": seconds,
        "note": "seconds from the start of each collective to its end, including any wait for the slower tower "
                "(alexnet_mp.parallel.comm_trace); waited: the part a tower waited for, not hidden behind its own compute "
                "(mean over the towers); exposed: the part of that spent launching and waiting for bytes in "
                "flight, after the partner tower had launched the collective (host timestamps; None with CUDA "
                "events), the rest being a wait for the partner's compute (load imbalance): mean over the "
                "towers, and upper: each collective's larger figure of the pair; helper CPU: the CPU time of "
                "the processes' other threads (gloo's, moving the bytes on the tower's core; the larger of the "
                "pair per step); exposed bound: upper plus helper CPU, the most communication can have added "
                "to the step",
        "waited_share_of_step": statistics.fmean(d["waited_comm_share"] for d in per_device),
        "waited_seconds_per_step": statistics.fmean(sum(sum(w.values()) for w in r["waited_by_step"])
                                                    / len(r["waited_by_step"]) for r in ranks),
        "exposed_mean_share_of_step": None if exposed is None else sum(exposed["mean"]) / sum(steps),
        "exposed_upper_share_of_step": None if exposed is None else sum(exposed["upper"]) / sum(steps),
        "helper_cpu_share_of_step": None if helper_steps is None else sum(helper_steps) / sum(steps),
        "exposed_share_of_step": None if bound is None else sum(bound) / sum(steps),
        "exposed_seconds_per_step": None if bound is None else statistics.fmean(bound),
        "exposed_seconds_by_step": bound,
        "exposed_by_collective": None if exposed is None else exposed["by_collective"],
        # The same bytes at the rate an all-gather reaches when no rank waits for another.
        "transfer_bytes_per_s": rate,
        "transfer_seconds_per_step_estimate": wire,
    }


