"""A model of one training step on real links: compute from a measured one-process step, split
over the layers in proportion to their multiply-adds, plus every collective's ring time.

    step(scheme, K) = T1 x sum over layers of (FLOP share x the part of the layer a process computes)
                      + sum over collectives of (ring steps x latency + wire bytes / bandwidth)

- ``T1``: one process's step on the global batch (measured; the split over layers is
  FLOP-proportional, :func:`alexnet_mp.net.flops.layer_macs` -- not measured per layer);
- the part of a layer a process computes: 1/K in every scheme, except fc8 under the hybrid with
  ``fc8=one`` (whole on every process);
- the collectives and their wire bytes: :mod:`alexnet_mp.parallel.bytes_model`; a ring over K
  takes K-1 steps (all-gather, reduce-scatter) or 2 (K-1) (all-reduce);
- no overlap of communication with compute: an upper bound of the step where the backend
  overlaps (DDP's buckets, the towers' crossing layers).

Links (one direction of one link; the number used and its source):
"""

from __future__ import annotations

from dataclasses import dataclass

from alexnet_mp.net.arch import NetSpec
from alexnet_mp.parallel import bytes_model
from alexnet_mp.parallel.comm_trace import ALL_REDUCE

__all__ = ["Link", "LINKS", "COMPUTE", "compute_fractions", "predict", "project", "ring_steps"]


@dataclass(frozen=True)
class Link:
    name: str
    bandwidth: float  # bytes/s, one direction
    latency: float  # seconds per ring step
    source: str


LINKS = (
    Link("PCIe 2.0 x16", 8e9, 10e-6,
         "PCI-SIG PCIe 2.0: 5 GT/s x 16 lanes, 8b/10b = 8 GB/s nominal per direction (the GTX 580s of 2012)"),
    Link("PCIe 5.0 x16", 63e9, 5e-6, "PCI-SIG PCIe 5.0: 32 GT/s x 16 lanes, 128b/130b = 63 GB/s per direction"),
    Link("NVLink 4 (H100)", 450e9, 5e-6, "NVIDIA H100 SXM: NVLink 4, 900 GB/s total = 450 GB/s per direction"),
    Link("InfiniBand NDR", 50e9, 5e-6, "InfiniBand NDR: 400 Gb/s = 50 GB/s per direction per port"),
)
__doc__ += "".join(f"\n- {link.name}: {link.bandwidth / 1e9:g} GB/s, {link.latency * 1e6:g} us a step ({link.source})"
                   for link in LINKS)

# One device's step of the whole net on 128 images, for the projections (seconds).
COMPUTE = {
    "GTX 580 (2012)": (1.13, "Krizhevsky et al. 2012, sec. 1 and 5: 5 to 6 days for about 90 epochs of 1.2M images "
                              "on two GTX 580s: 0.56 s per step of 128 on the pair, so about 1.13 s on one"),
    "H200 fp32": (0.0254, "benchmarks/results/gpu-check.json: full-1dev, batch 128, fp32, eager (25.4 ms)"),
}
# Which compute goes with which link in the projections.
PAIRS = (("PCIe 2.0 x16", "GTX 580 (2012)"), ("PCIe 5.0 x16", "H200 fp32"), ("NVLink 4 (H100)", "H200 fp32"),
         ("InfiniBand NDR", "H200 fp32"))


def ring_steps(op: str, k: int) -> int:
    return 0 if k < 2 else 2 * (k - 1) if op == ALL_REDUCE else k - 1


def compute_fractions(spec: NetSpec, macs: dict[str, int], scheme: str, k: int, fc8: str = "one") -> float:
    """The part of the one-process step's compute a process does under ``scheme`` on ``k`` processes
    (FLOP-proportional over the layers)."""
    total = sum(macs.values())
    part = 0.0
    for layer in spec.layers:
        whole = scheme == "hybrid" and fc8 == "one" and layer is spec.layers[-1]
        part += macs[layer.name] / total * (1.0 if whole or k == 1 else 1.0 / k)
    return part


def parameter_fraction(spec: NetSpec, scheme: str, k: int, fc8: str = "one", input_size: int = 224) -> float:
    """The part of the net's parameters a process updates: a tower's (towers), all (data), the convolutional
    ones and 1/K of each split fc layer (hybrid)."""
    whole = bytes_model.layer_parameters(spec, input_size)
    if k == 1:
        return 1.0
    if scheme == "towers":
        tower = bytes_model.layer_parameters(spec, input_size, tower=(0, spec.towers))
        return sum(tower.values()) / sum(whole.values())
    if scheme == "data":
        return 1.0
    split = {l.name for l in spec.fcs[:-1]} | ({spec.fcs[-1].name} if fc8 == "split" else set())
    return sum(n / k if name in split else n for name, n in whole.items()) / sum(whole.values())


def comm_seconds(moves: list, bandwidth: float, latency: float) -> float:
    return sum(m.calls * (ring_steps(m.op, m.members) * latency + m.wire_total / m.calls / bandwidth) for m in moves)


def predict(scheme: str, spec: NetSpec, macs: dict[str, int], *, one_process_s: float, batch: int, k: int,
            input_size: int, bandwidth: float, latency: float, reduce_scatter: bool, fc8: str = "one",
            oversubscribed: float = 1.0, fixed_s: float = 0.0) -> dict:
    """The modelled step of ``scheme`` on ``k`` processes and the global ``batch`` (``one_process_s``:
    one process's step on it, of which ``fixed_s`` does not grow with the batch -- reading the weights,
    the optimizer step -- and follows the parameters a process holds; the rest follows the FLOPs);
    ``oversubscribed``: how much longer a process computes beside the others than alone (shared
    cores), if above 1."""
    moves = bytes_model.moves(scheme, spec, batch=batch, k=k, input_size=input_size, reduce_scatter=reduce_scatter,
                              fc8=fc8)
    compute = ((one_process_s - fixed_s) * compute_fractions(spec, macs, scheme, k, fc8)
               + fixed_s * parameter_fraction(spec, scheme, k, fc8, input_size)) * max(oversubscribed, 1.0)
    comm = comm_seconds(moves, bandwidth, latency)
    return {"compute_s": compute, "comm_s": comm, "step_s": compute + comm}


REGIMES = {"128 per replica": "each replica takes 128 images (cuda-convnet2's setting: the global batch grows with K)",
           "128 in all": "the paper's global batch of 128, split over the replicas"}


def project(spec: NetSpec, macs: dict[str, int], *, ks=(2, 4, 8, 16, 32, 64), per_replica: int = 128,
            fc8: str = "one") -> dict:
    """Speed-up over one device on the same global batch against K, for every (link, compute) pair
    of :data:`PAIRS` and both :data:`REGIMES`; where each scheme stops scaling: the largest K whose
    parallel efficiency (speed-up / K) is at least 50%."""
    links = {link.name: link for link in LINKS}
    out = {}
    for link_name, compute_name in PAIRS:
        link, (t128, _) = links[link_name], COMPUTE[compute_name]
        per_scheme = {}
        for regime, scheme in ((r, s) for r in REGIMES for s in bytes_model.SCHEMES):
            rows = []
            for k in ks:
                if scheme == "towers" and k % spec.towers:
                    continue
                batch = bytes_model.global_batch(scheme, spec, k, per_replica) if regime == "128 per replica" \
                    else per_replica
                one = t128 * batch / per_replica  # one device on the whole global batch, linear in images
                p = predict(scheme, spec, macs, one_process_s=one, batch=batch, k=k, input_size=224,
                            bandwidth=link.bandwidth, latency=link.latency, reduce_scatter=True, fc8=fc8)
                rows.append({"k": k, "batch": batch, **p, "speedup": one / p["step_s"],
                             "efficiency": one / p["step_s"] / k})
            scaling = [r["k"] for r in rows if r["efficiency"] >= 0.5]
            per_scheme[f"{scheme}, {regime}"] = {"scheme": scheme, "regime": regime, "rows": rows,
                                                 "scales_to": max(scaling) if scaling else None}
        out[f"{link_name} / {compute_name}"] = {"link": link_name, "compute": compute_name, "schemes": per_scheme}
    return out
