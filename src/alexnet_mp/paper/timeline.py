"""One training step of the two towers, traced: each rank's compute and every crossing's
collective from its launch to its wait, as a Chrome trace and as a two-lane picture.

    python launch/figure2.py output_dir=DIR      # also Figure 2 (alexnet_mp.paper.figure2)

Two processes are started (``torch.multiprocessing``, spawn) and placed as the trainer places
them (:func:`alexnet_mp.parallel.placement.place`): gloo on the CPU, a GPU per rank under NCCL where
there are GPUs. Each builds the net from the seed, keeps its tower
(:func:`alexnet_mp.parallel.towers.parallelize`), runs ``warmup_steps`` untraced SGD steps on one
fixed random batch, then one traced step.

The collectives' times come from the project's collective tracer (:mod:`alexnet_mp.parallel.comm_trace`,
its ``timeline``): for each collective the host's launch and its wait, on ``time.perf_counter``,
which the processes of one machine share. The step's three phase boundaries (forward, backward,
optimizer step) are the only other readings, taken on the same clock; a rank's compute is the host time in each phase
outside the collectives' launch and wait calls, named by the layers that run there. On a GPU
the tracer's ``sync`` mode (``profile=true``'s) synchronises the device around each collective,
so the compute before a launch is finished there when it is read; what a tower enqueues between
a launch and its wait (its own block, its weight gradient) runs on the device during the wait,
so there the dark "waited" part holds that compute too.

``step-timeline.json`` is Chrome's trace format (``traceEvents``, one process per rank, a
"compute" and a "collectives" thread each): open it in https://ui.perfetto.dev or
chrome://tracing.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import torch

from alexnet_mp.errors import UserError
from alexnet_mp.parallel.placement import free_port

__all__ = ["trace_step", "chrome_trace", "compute_spans", "draw_timeline"]

_PHASES = ("forward", "backward", "optimizer step")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _one_step(tower, optimizer, images, labels, device, marks: dict | None) -> None:
    def mark(name: str) -> None:
        if marks is not None:
            _sync(device)
            marks[name] = time.perf_counter()

    mark("start")
    loss = torch.nn.functional.cross_entropy(tower(images), labels)
    mark("forward")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    mark("backward")
    optimizer.step()
    mark("optimizer step")


def _traced_step(rank: int, opts: dict) -> dict:
    """Place this rank, build its tower, warm up, trace one step; what the tracer recorded."""
    from alexnet_mp.parallel import comm_trace
    from alexnet_mp.net.arch import arch_options
    from alexnet_mp.config.train import OptimConfig
    from alexnet_mp.net.model import build_model
    from alexnet_mp.train.optim import optimizer_for
    from alexnet_mp.parallel.towers import parallelize
    from alexnet_mp.parallel.placement import place

    placement = place(2, threads=opts["threads"], device=opts["device"], timeout_s=opts["timeout_s"],
                      backend=opts["backend"])
    device, model_cfg = placement.device, opts["model"]
    torch.manual_seed(opts["seed"])
    net = build_model(str(model_cfg["name"]), num_classes=int(model_cfg["num_classes"]),
                      input_size=opts["input_size"], init=str(model_cfg["init"]), **arch_options(model_cfg))
    tower = parallelize(net, group=placement.tower_group, device=device, overlap=opts["overlap"]).train()
    optimizer = optimizer_for(tower, OptimConfig())  # the trainer's, with its defaults (sec. 5)
    g = torch.Generator().manual_seed(opts["seed"])  # the same batch on both towers
    size, batch = opts["input_size"], opts["batch_size"]
    images = (torch.randn(batch, 3, size, size, generator=g) * 60.0).to(device)
    labels = torch.randint(0, int(model_cfg["num_classes"]), (batch,), generator=g).to(device)
    for _ in range(opts["warmup_steps"]):
        _one_step(tower, optimizer, images, labels, device, None)
    marks: dict = {}
    _sync(device)
    torch.distributed.barrier(group=placement.tower_group)  # both towers start the traced step together
    trace = comm_trace.start(sync=device.type == "cuda", timeline=True)
    try:
        _one_step(tower, optimizer, images, labels, device, marks)
    finally:
        comm_trace.stop()
    return {"rank": rank, "device": str(device), "backend": placement.backend, "marks": marks,
            "description": placement.description,
            "collectives": [list(t) for t in trace.timeline],
            "bytes": {f"{k[0]}.{k[1]}": v for k, v in trace.bytes.items()}}


def _worker(rank: int, port: int, out_dir: str, opts: dict) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        record = _traced_step(rank, opts)
    except UserError as err:  # said once by the parent, as one line
        Path(out_dir, f"error{rank}.txt").write_text(str(err))
        os._exit(1)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(record))
    import torch.distributed as dist

    dist.destroy_process_group()


def trace_step(opts: dict) -> list[dict]:
    """Run the traced step on two processes; each rank's record (see :func:`_traced_step`).
    ``opts``: model (a plain ``conf/model`` mapping), input_size, batch_size, warmup_steps, seed,
    overlap, device, backend, threads, timeout_s."""
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    with tempfile.TemporaryDirectory(prefix="alexnet_mp-timeline-") as out_dir:
        try:
            mp.start_processes(_worker, args=(free_port(), out_dir, opts), nprocs=2, join=True,
                               start_method="spawn")
        except ProcessException as err:
            errors = sorted(Path(out_dir).glob("error*.txt"))
            if errors:
                raise UserError(errors[0].read_text()) from None
            raise UserError(f"the traced step failed on rank {err.error_index}: "
                            f"{str(err).strip().splitlines()[-1]}") from None
        return [json.loads(Path(out_dir, f"rank{r}.json").read_text()) for r in range(2)]


# -- the records as spans --------------------------------------------------------------------
def _between(names: list[str], a: str | None, b: str | None) -> list[str]:
    """The layers strictly after ``a`` and before ``b`` (None: the net's start or end)."""
    lo = names.index(a) + 1 if a in names else 0 if a is None else len(names)
    hi = names.index(b) if b in names else len(names)
    return names[lo:hi]


def _forward_label(names: list[str], prev: tuple, nxt: tuple, overlap: bool) -> list[str]:
    if prev[0] == "launch":
        return [f"{prev[1]}: own block"] if overlap and prev[1] in names else []
    parts = []
    if prev[0] == "wait" and prev[1] in names:
        parts.append(f"{prev[1]}: other block" if overlap else prev[1])
    parts += _between(names, prev[1] if prev[0] == "wait" else None, nxt[1] if nxt[0] == "launch" else None)
    return parts + (["loss"] if nxt[0] == "end" else [])


def _backward_label(names: list[str], prev: tuple, nxt: tuple, overlap: bool) -> list[str]:
    if prev[0] == "launch":
        return [f"{prev[1]}: weight grad"] if overlap else []
    after = prev[1] if prev[0] == "wait" else None
    before = nxt[1] if nxt[0] == "launch" else None
    parts = ["loss"] if prev[0] == "start" else []
    parts += list(reversed(_between(names, before, after)))
    if before is not None:
        parts.append(f"{before}: input grad" if overlap else f"{before} grads")
    return parts


def compute_spans(record: dict, names: list[str], overlap: bool) -> list[tuple[str, str, float, float]]:
    """(phase, what ran, start, end) of a rank's compute: each phase's host time outside the
    collectives' launch and wait calls, named from the layer order ``names`` (forward order)."""
    busy = []
    for layer, direction, t0, t1, t2, t3 in record["collectives"]:
        busy += [(t0, t1, "launch", layer), (t2, t3, "wait", layer)]
    busy.sort()
    marks, spans = record["marks"], []
    bounds = [marks["start"]] + [marks[p] for p in _PHASES]
    for phase, begin, end in zip(_PHASES, bounds, bounds[1:]):
        cursor, prev = begin, ("start", None)
        inside = [b for b in busy if begin <= b[0] < end]
        for nxt in [(s, e, kind, layer) for s, e, kind, layer in inside] + [(end, end, "end", None)]:
            if nxt[0] > cursor:
                if phase == "forward":
                    parts = _forward_label(names, prev, nxt[2:], overlap)
                elif phase == "backward":
                    parts = _backward_label(names, prev, nxt[2:], overlap)
                else:
                    parts = ["SGD update"]
                if parts:  # nothing runs between the logits' launch and wait, for one
                    spans.append((phase, ", ".join(parts), cursor, nxt[0]))
            cursor, prev = max(cursor, nxt[1]), nxt[2:]
    return spans


def _collective_name(layer: str, direction: str, backend: str) -> str:
    from alexnet_mp.parallel.collectives import REDUCE_SCATTER_BACKENDS

    kind = "all-gather" if direction == "forward" else (
        "reduce-scatter" if backend in REDUCE_SCATTER_BACKENDS else "all-reduce")
    return f"{layer} {direction} {kind}"


def chrome_trace(records: list[dict], names: list[str], overlap: bool, batch: int, other: dict) -> dict:
    """Chrome's trace format: per rank a process (pid = rank) with a "compute" thread (the
    phases and the compute spans) and a "collectives" thread (each collective from its launch
    to its wait's end, the wait nested in it); times in microseconds from the first rank's start."""
    zero = min(r["marks"]["start"] for r in records)
    us = lambda t: round((t - zero) * 1e6, 3)  # noqa: E731
    events = []
    for rec in records:
        pid = rec["rank"]
        events += [{"ph": "M", "pid": pid, "tid": 0, "name": "process_name",
                    "args": {"name": f"rank {pid}: tower {pid} on {rec['device']} ({rec['backend']})"}},
                   {"ph": "M", "pid": pid, "tid": 0, "name": "process_sort_index", "args": {"sort_index": pid}},
                   {"ph": "M", "pid": pid, "tid": 0, "name": "thread_name", "args": {"name": "compute"}},
                   {"ph": "M", "pid": pid, "tid": 1, "name": "thread_name", "args": {"name": "collectives"}}]
        marks = rec["marks"]
        bounds = [marks["start"]] + [marks[p] for p in _PHASES]
        for phase, begin, end in zip(_PHASES, bounds, bounds[1:]):
            events.append({"ph": "X", "pid": pid, "tid": 0, "cat": "phase", "name": phase, "ts": us(begin),
                           "dur": us(end) - us(begin)})
        for phase, what, begin, end in compute_spans(rec, names, overlap):
            events.append({"ph": "X", "pid": pid, "tid": 0, "cat": "compute", "name": what, "ts": us(begin),
                           "dur": us(end) - us(begin), "args": {"phase": phase}})
        for layer, direction, t0, t1, t2, t3 in rec["collectives"]:
            nbytes = rec["bytes"][f"{layer}.{direction}"]
            name = _collective_name(layer, direction, rec["backend"])
            events.append({"ph": "X", "pid": pid, "tid": 1, "cat": "collective", "name": name, "ts": us(t0),
                           "dur": us(t3) - us(t0), "args": {"layer": layer, "direction": direction,
                                                             "bytes": nbytes, "bytes_per_image": nbytes / batch,
                                                             "launch_us": us(t1) - us(t0),
                                                             "waited_us": us(t3) - us(t2)}})
            events.append({"ph": "X", "pid": pid, "tid": 1, "cat": "wait", "name": f"wait: {layer} {direction}",
                           "ts": us(t2), "dur": us(t3) - us(t2)})
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": other}


_PHASE_COLOUR = {"forward": "#4a90d9", "backward": "#5cb85c", "optimizer step": "#999999"}
_LABEL_ROW = 0.2  # each collective's label on its own row, so that neighbours never overlap


def draw_timeline(trace: dict, path: Path, title: str = "") -> str:
    """The trace as two lanes (one per rank): compute on top, each collective below it from
    its launch to its wait's end, the part the tower waited for dark."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from alexnet_mp.job.metrics_log import save_png

    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    ranks = sorted({e["pid"] for e in spans})
    rows = max(sum(e["cat"] == "collective" and e["pid"] == r for e in spans) for r in ranks)
    lane_height = 1.9 + _LABEL_ROW * rows
    fig, ax = plt.subplots(figsize=(15, 1.2 + 0.85 * lane_height * len(ranks)))
    for lane, rank in enumerate(ranks):
        _draw_lane(ax, [e for e in spans if e["pid"] == rank], -lane * lane_height)
        ax.text(-0.01, -lane * lane_height + 0.35, f"rank {rank}\ncompute", ha="right", va="center", fontsize=9,
                transform=ax.get_yaxis_transform())
        ax.text(-0.01, -lane * lane_height - 0.33, "collectives", ha="right", va="center", fontsize=9,
                transform=ax.get_yaxis_transform())
    ax.set_yticks([])
    ax.set_ylim(-lane_height * len(ranks) + 1.1, 1.1)
    ax.set_xlabel("ms from the step's start (host clock, time.perf_counter)")
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(fc=_PHASE_COLOUR["forward"], label="forward compute"),
                       Patch(fc=_PHASE_COLOUR["backward"], label="backward compute"),
                       Patch(fc=_PHASE_COLOUR["optimizer step"], label="optimizer step"),
                       Patch(fc="#f5b7b1", ec="#c0392b", label="collective, launch to wait (fwd: all-gather; "
                                                               "bwd: the input gradient's reduce)"),
                       Patch(fc="#c0392b", label="the tower waits for it")],
              loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=5, fontsize=8, frameon=False)
    ax.set_title(title, fontsize=11)
    return save_png(fig, Path(path), dpi=110, bbox_inches="tight")


def _draw_lane(ax, mine: list[dict], base: float) -> None:
    step = max(e["ts"] + e["dur"] for e in mine) - min(e["ts"] for e in mine)
    collectives = 0
    for e in sorted(mine, key=lambda e: e["ts"]):
        x, w = e["ts"] / 1000.0, e["dur"] / 1000.0
        if e["cat"] == "phase":
            ax.broken_barh([(x, w)], (base + 0.75, 0.25), fc=_PHASE_COLOUR[e["name"]], alpha=0.35)
            ax.text(x + w / 2, base + 0.875, e["name"], ha="center", va="center", fontsize=8)
        elif e["cat"] == "compute":
            ax.broken_barh([(x, w)], (base + 0.1, 0.55), fc=_PHASE_COLOUR[e["args"]["phase"]], ec="white", lw=0.5)
            if e["dur"] >= 0.04 * step:  # name the spans wide enough to hold it
                ax.text(x + w / 2, base + 0.375, e["name"].replace(", ", "\n"), ha="center", va="center",
                        fontsize=6.5, color="white")
        elif e["cat"] == "collective":
            ax.broken_barh([(x, w)], (base - 0.55, 0.45), fc="#f5b7b1", ec="#c0392b", lw=0.6)
            y = base - 0.7 - _LABEL_ROW * collectives
            ax.plot([x, x], [base - 0.55, y], color="#c0392b", lw=0.5)
            ax.text(x, y, f" {e['args']['layer']} {'fwd' if e['args']['direction'] == 'forward' else 'bwd'}",
                    ha="left", va="center", fontsize=7.5, color="#922b21", zorder=3,
                    bbox=dict(fc="white", ec="none", pad=0.3))  # over the other labels' leader lines
            collectives += 1
        elif e["cat"] == "wait":
            ax.broken_barh([(x, w)], (base - 0.55, 0.45), fc="#c0392b")
