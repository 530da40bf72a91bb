"""The bytes each scheme moves per training step, per process, from the architecture table alone.

Every collective of one step is listed as a :class:`Move` under the convention of
:mod:`alexnet_mp.parallel.comm_trace`: the bytes handed to the collective per process
(all-gather: this process's share; reduce-scatter: the whole stack of K shares; all-reduce: the
tensor), and what a ring sends of them (:func:`alexnet_mp.parallel.comm_trace.wire_bytes`).
Nothing here runs a net: widths, kernels and map sides come from :mod:`alexnet_mp.net.arch`, so
the counts the tracer measures on a real step can be checked against this arithmetic
(tests/test_bytes_model.py), and the benchmark (benchmarks/schemes/) and docs/schemes.md can
show them at any K and batch.

- ``towers`` (Krizhevsky et al. 2012, sec. 3.2): forward, each crossing layer (conv3, fc6, fc7,
  fc8) all-gathers its input units and the logits are all-gathered; backward, each crossing
  layer's input gradient is summed over the towers (reduce-scatter; gloo: all-reduce, the
  slice kept). Beyond one pair, each tower's gradients are all-reduced over its replicas.
- ``data``: the one-process net on every process; every gradient is all-reduced.
- ``hybrid`` (Krizhevsky 2014, as :mod:`alexnet_mp.parallel.hybrid` runs it): the labels are
  all-gathered; the convolutional gradients are all-reduced; fc6 and fc7 are split K ways by
  output units, and one pass per process carries that process's examples through them: its
  pool5 features are broadcast from it (their gradient reduced back to it), fc6's block outputs
  all-gathered for fc7 (fc7's input gradient summed over the processes), and fc7's all-gathered
  for fc8, whole on every process (``fc8="one"``: its gradient is whole there, no move). With
  ``fc8="split"`` fc8 is a split layer as fc7 is, and its logits are all-gathered.

A float32 element is 4 bytes (``elem``); ``batch`` is the global batch of a step.
"""

from __future__ import annotations

from dataclasses import dataclass

from alexnet_mp.errors import UserError
from alexnet_mp.net.arch import NetSpec, feature_map_sizes, split_sizes
from alexnet_mp.parallel.comm_trace import ALL_GATHER, ALL_REDUCE, BROADCAST, REDUCE, REDUCE_SCATTER, wire_bytes

__all__ = ["Move", "SCHEMES", "conv_fc_shares", "global_batch", "layer_parameters", "moves", "per_step", "table"]

SCHEMES = ("towers", "data", "hybrid")
FLOAT32 = 4
LABEL = 8  # int64


@dataclass(frozen=True)
class Move:
    """``calls`` collectives ``op`` over ``members`` processes at ``layer``, each handed ``handed`` bytes."""

    layer: str
    direction: str
    op: str
    handed: int
    members: int
    calls: int = 1

    @property
    def handed_total(self) -> int:
        return self.handed * self.calls

    @property
    def wire_total(self) -> int:
        return wire_bytes(self.op, self.handed, self.members) * self.calls


def _in_units(spec: NetSpec, index: int, input_size: int, geometry: str, share=None) -> int:
    """Input units of layer ``index`` (fc6's include pool5's map); ``share(width)``: a tower's part
    of a layer it does not read whole (None: the whole net)."""
    if index == 0:
        return 3
    layer, previous = spec.layers[index], spec.layers[index - 1]
    units = previous.width if layer.crosses or share is None else share(previous.width)
    if layer.kind == "fc" and previous.kind == "conv":
        units *= _area(spec, previous.name, input_size, geometry)
    return units


def _area(spec: NetSpec, name: str, input_size: int, geometry: str) -> int:
    side = feature_map_sizes(input_size, geometry, spec).get(name, 1)
    return side * side


def layer_parameters(spec: NetSpec, input_size: int = 224, geometry: str = "224",
                     tower: tuple[int, int] | None = None) -> dict[str, int]:
    """Weights and biases of each layer: of the whole net (``tower=None``; a layer that does not
    cross reads its own tower's units only, the grouped convolution of the paper's net), or of
    tower ``(index, count)``."""
    out = {}
    for i, layer in enumerate(spec.layers):
        if tower is None:
            width, groups = layer.width, 1 if (layer.crosses or i == 0) else spec.towers
            fan_in = _in_units(spec, i, input_size, geometry) // groups
        else:
            share = lambda w: split_sizes(w, tower[1])[tower[0]]  # noqa: E731
            width, fan_in = share(layer.width), _in_units(spec, i, input_size, geometry, share)
        out[layer.name] = width * fan_in * (layer.kernel ** 2 if layer.kind == "conv" else 1) + width
    return out


def _towers(spec, batch, k, input_size, geometry, reduce_scatter, elem, rank) -> list[Move]:
    towers = spec.towers
    if towers < 2 or k % towers:
        raise UserError(f"the towers split the {spec.name} net {towers} ways: K must be a multiple of {towers}, "
                        f"got {k}")
    replicas = k // towers
    if batch % replicas:
        raise UserError(f"a batch of {batch} does not split over {replicas} replicas of the tower pair")
    b, out = batch // replicas, []
    for i, layer in enumerate(spec.layers):
        if i == 0 or not layer.crosses:
            continue
        previous = spec.layers[i - 1]
        units = b * max(split_sizes(previous.width, towers)) * _area(spec, previous.name, input_size, geometry) \
            if previous.kind == "conv" else b * max(split_sizes(previous.width, towers))
        out.append(Move(layer.name, "forward", ALL_GATHER, units * elem, towers))
        out.append(Move(layer.name, "backward", REDUCE_SCATTER if reduce_scatter else ALL_REDUCE,
                        towers * units * elem, towers))
    out.append(Move("logits", "forward", ALL_GATHER, b * max(split_sizes(spec.layers[-1].width, towers)) * elem,
                    towers))
    if replicas > 1:
        params = sum(layer_parameters(spec, input_size, geometry, (rank % towers, towers)).values())
        out.append(Move("ddp", "backward", ALL_REDUCE, params * elem, replicas))
    return out


def _data(spec, k, input_size, geometry, elem) -> list[Move]:
    return [Move("ddp", "backward", ALL_REDUCE, sum(layer_parameters(spec, input_size, geometry).values()) * elem, k)]


def _hybrid(spec, batch, k, input_size, geometry, reduce_scatter, elem, fc8) -> list[Move]:
    if batch % k:
        raise UserError(f"a batch of {batch} does not split over {k} processes")
    b = batch // k  # each pass: one process's examples
    params = layer_parameters(spec, input_size, geometry)
    backward = REDUCE_SCATTER if reduce_scatter else ALL_REDUCE
    fcs = spec.fcs
    pool5 = b * _in_units(spec, spec.layers.index(fcs[0]), input_size, geometry) * elem
    out = [Move("labels", "forward", ALL_GATHER, b * LABEL, k),  # every pass's labels, int64
           # pass j's pool5 from process j to every process; its gradient summed back to j
           Move("pool5", "forward", BROADCAST, pool5, k, calls=k),
           Move("pool5", "backward", REDUCE, pool5, k, calls=k)]
    split = fcs[:-1] if fc8 == "one" else fcs
    for layer, reader in zip(split, fcs[1:]):  # the split layers' outputs, gathered by the next one
        share = b * max(split_sizes(layer.width, k)) * elem
        out.append(Move(reader.name, "forward", ALL_GATHER, share, k, calls=k))
        if reader in split:  # a split reader sums the input gradient over the processes; a whole fc8
            out.append(Move(reader.name, "backward", backward, k * share, k, calls=k))  # has it whole
    if fc8 == "split":
        out.append(Move("logits", "forward", ALL_GATHER, b * max(split_sizes(fcs[-1].width, k)) * elem, k, calls=k))
    out.append(Move("conv", "backward", ALL_REDUCE, sum(params[l.name] for l in spec.convs) * elem, k))
    return out


def moves(scheme: str, spec: NetSpec, *, batch: int, k: int, input_size: int = 224, geometry: str = "224",
          reduce_scatter: bool = True, elem: int = FLOAT32, fc8: str = "one", rank: int = 0) -> list[Move]:
    """Every collective of one training step of ``scheme`` on ``k`` processes, on rank ``rank``.

    ``reduce_scatter``: the backend sums a gradient over the towers with a reduce-scatter (NCCL);
    False: with an all-reduce, each keeping its slice (gloo, :mod:`alexnet_mp.parallel.collectives`)."""
    if k < 1:
        raise UserError(f"K must be at least 1, got {k}")
    if k == 1:
        return []
    if scheme == "towers":
        return _towers(spec, batch, k, input_size, geometry, reduce_scatter, elem, rank)
    if scheme == "data":
        return _data(spec, k, input_size, geometry, elem)
    if scheme == "hybrid":
        return _hybrid(spec, batch, k, input_size, geometry, reduce_scatter, elem, fc8)
    raise UserError(f"unknown scheme {scheme!r}: choose one of {', '.join(SCHEMES)}")


def per_step(step_moves: list[Move]) -> dict[str, int]:
    """Bytes handed and put on the wire (ring) in one step, per process, and the collectives launched."""
    return {"handed": sum(m.handed_total for m in step_moves), "wire": sum(m.wire_total for m in step_moves),
            "calls": sum(m.calls for m in step_moves)}


def global_batch(scheme: str, spec: NetSpec, k: int, per_replica: int) -> int:
    """The global batch when each replica takes ``per_replica`` examples, as cuda-convnet2 runs the
    schemes (128 per GPU of data and hybrid; 128 per pair of towers)."""
    return per_replica * (max(k // spec.towers, 1) if scheme == "towers" else k)


def table(spec: NetSpec, *, per_replica: int = 128, ks=(2, 4, 8), input_size: int = 224, geometry: str = "224",
          reduce_scatter: bool = True, fc8: str = "one") -> list[dict]:
    """Per step and per image of the global batch (:func:`global_batch`), per process, for each scheme and K."""
    rows = []
    for scheme in SCHEMES:
        for k in ks:
            if scheme == "towers" and (spec.towers < 2 or k % spec.towers):
                continue  # the towers split a net of towers, in pairs
            batch = global_batch(scheme, spec, k, per_replica)
            count = per_step(moves(scheme, spec, batch=batch, k=k, input_size=input_size, geometry=geometry,
                                   reduce_scatter=reduce_scatter, fc8=fc8))
            rows.append({"scheme": scheme, "k": k, "batch": batch, **count,
                         "handed_per_image": count["handed"] / batch, "wire_per_image": count["wire"] / batch})
    return rows


def conv_fc_shares(spec: NetSpec, layer_macs: dict[str, int], input_size: int = 224,
                   geometry: str = "224") -> dict[str, dict[str, float]]:
    """The 2014 premise, from the table: the conv and fc layers' shares of the multiply-adds
    (``layer_macs``, :func:`alexnet_mp.net.flops.layer_macs`) and of the parameters."""
    params = layer_parameters(spec, input_size, geometry)
    out = {}
    for what, counts in (("flops", layer_macs), ("parameters", params)):
        total = sum(counts.values())
        conv = sum(counts[l.name] for l in spec.convs)
        out[what] = {"conv": conv / total, "fc": 1 - conv / total, "total": total}
    return out
