"""The paper's Figure 2 drawn from the architecture table: the two towers side by side, and
the bytes every crossing moves.

    python launch/figure2.py output_dir=DIR [+ablation=no_conv4] [image_size=N]

Everything drawn comes from :mod:`alexnet_mp.net.arch` for the configuration given: each
layer's share per tower (:func:`alexnet_mp.net.arch.split_sizes`), its kernel and stride, its
output map (:func:`alexnet_mp.net.arch.feature_map_sizes`), LRN, pooling and dropout, and which
layers cross. An ablation edits the table, so it edits the picture.

Bytes per crossing, per image, per tower, in fp32 (4 bytes an element), as
:mod:`alexnet_mp.parallel.collectives` puts them on the wire for the moves of :mod:`alexnet_mp.parallel.comm`.
A crossing layer L reads the output of the layer P before it. Each tower's share of P's
output is ``split_sizes(P.width, towers)`` units (channels of an ``side x side`` map when P is
a convolution, ``side`` from ``feature_map_sizes``; features when P is fully connected), and
every share travels padded to the largest, ``u = max(shares) * side**2`` elements:

- forward, ``start_all_gather``: each tower receives every other tower's padded share,
  ``u * 4 * (towers - 1)`` bytes (the tracer's count for the all-gather);
- backward, ``start_reduce_scatter`` of the input gradient: a stack of ``towers`` slots of
  ``u`` elements, of which a reduce-scatter (NCCL) sends ``(towers - 1) / towers``, i.e. again
  ``u * 4 * (towers - 1)`` bytes; on gloo the stack is all-reduced instead (a ring sends about
  twice that), ``2 * u * 4 * (towers - 1)`` bytes;
- the logits (fc8's outputs): forward an all-gather of each tower's share of the classes;
  backward nothing: every tower computes the loss and keeps its slice of the gradient.

A batch of B images moves B times these bytes at every crossing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alexnet_mp.net.arch import Layer, NetSpec, arch_options, crop_of, feature_map_sizes, spec_from_options, split_sizes
from alexnet_mp.errors import UserError

__all__ = ["BYTES_PER_ELEMENT", "Crossing", "crossings", "draw_figure2", "figure_input_size", "figure_spec"]

BYTES_PER_ELEMENT = 4  # fp32


@dataclass(frozen=True)
class Crossing:
    """A place the towers talk: the layer that reads every tower's units, what it reads, and
    the bytes per image each tower moves (see the module docstring)."""

    name: str  # conv3, fc6, fc7, fc8 or "logits"
    source: str  # the layer whose outputs travel
    shares: tuple[int, ...]  # each tower's units of the source layer
    area: int  # side**2 of a convolution's map; 1 for features
    towers: int

    @property
    def elements(self) -> int:
        """Elements of one padded share, per image."""
        return max(self.shares) * self.area

    @property
    def forward_bytes(self) -> int:
        return self.elements * BYTES_PER_ELEMENT * (self.towers - 1)

    @property
    def backward_bytes(self) -> int:
        """The input gradient's reduce-scatter (none for the logits)."""
        return 0 if self.name == "logits" else self.forward_bytes

    @property
    def backward_bytes_gloo(self) -> int:
        return 2 * self.backward_bytes


def figure_spec(model_cfg) -> NetSpec:
    """The table for a ``conf/model`` mapping, its ablations applied as the model applies them."""
    spec = spec_from_options(str(model_cfg["name"]), int(model_cfg["num_classes"]), **arch_options(model_cfg))
    if spec.towers < 2:
        raise UserError(f"Figure 2 draws the two-tower net; model={spec.name} has {spec.towers} tower")
    return spec


def figure_input_size(image_size: int | None, model_cfg) -> int:
    return int(image_size) if image_size else crop_of(arch_options(model_cfg)["geometry"])


def _area(spec: NetSpec, layer: Layer, sides: dict[str, int]) -> int:
    return sides[layer.name] ** 2 if layer.kind == "conv" else 1


def crossings(spec: NetSpec, input_size: int, geometry: str = "224") -> list[Crossing]:
    """Every crossing of ``spec`` at ``input_size`` px, in forward order, the logits last."""
    sides = feature_map_sizes(input_size, geometry, spec)
    out, previous = [], None
    for layer in spec.layers:
        if layer.crosses and previous is not None:
            shares = tuple(split_sizes(previous.width, spec.towers))
            out.append(Crossing(layer.name, previous.name, shares, _area(spec, previous, sides), spec.towers))
        previous = layer
    last = spec.layers[-1]
    out.append(Crossing("logits", last.name, tuple(split_sizes(last.width, spec.towers)), 1, spec.towers))
    return out


def _bytes_text(n: int) -> str:
    return f"{n:,} B"


def _layer_text(spec: NetSpec, layer: Layer, tower: int, sides: dict[str, int], input_size: int) -> str:
    units = split_sizes(layer.width, spec.towers)[tower]
    if layer.kind == "fc":
        head = f"{layer.name}: {units} of {layer.width}"
        extras = ["ReLU"] if layer.relu else []
        if layer.dropout:
            extras.append(f"dropout {spec.dropout_p:g}")
        return head + ("\n" + " · ".join(extras) if extras else "")
    head = f"{layer.name}: {units} of {layer.width}, {layer.kernel}×{layer.kernel}" + (
        f"/{layer.stride}" if layer.stride > 1 else "")
    extras = ["ReLU"] + (["LRN"] if layer.lrn else [])
    if layer.pool:
        extras.append(f"max-pool {spec.pool[0]}/{spec.pool[1]}")
    return f"{head}\n{' · '.join(extras)} → {units}×{sides[layer.name]}×{sides[layer.name]}"


def _crossing_text(c: Crossing) -> str:
    side = round(c.area ** 0.5)
    units = f"{max(c.shares)}×{side}×{side}" if c.area > 1 else f"{max(c.shares)}"
    if c.name == "logits":
        return (f"logits: all-gather of fc8's classes ({units} per tower)\n"
                f"fwd {_bytes_text(c.forward_bytes)} · bwd none (each keeps its slice)")
    return (f"{c.name} reads {c.source} of both towers ({units} per tower)\n"
            f"fwd all-gather {_bytes_text(c.forward_bytes)} · bwd reduce-scatter "
            f"{_bytes_text(c.backward_bytes)} (gloo: all-reduce {_bytes_text(c.backward_bytes_gloo)})")


def _box(ax, x: float, y: float, w: float, h: float, text: str, colour: str) -> None:
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x, y - h / 2), w, h, boxstyle="round,pad=0.004", fc=colour, ec="#333333", lw=0.8))
    ax.text(x + w / 2, y, text, ha="center", va="center", fontsize=8.5)


def _arrow(ax, start: tuple, end: tuple, colour: str, lw: float = 1.0) -> None:
    ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="-|>", color=colour, lw=lw, shrinkA=0,
                                                          shrinkB=0))


_COLS = (0.01, 0.38)  # left edge of each tower's boxes
_WIDTH = 0.27
_NOTE_X = 0.68
_OWN, _CROSS = "#555555", "#c0392b"
_FILL = {"conv": "#dbe9f6", "fc": "#e3f1df", "io": "#f2f2f2"}


def _rows(spec: NetSpec, input_size: int, geometry: str) -> list[tuple[str, list[str], str | None]]:
    """(kind, each tower's text, the crossing read into this row or None), top to bottom."""
    sides = feature_map_sizes(input_size, geometry, spec)
    by_name = {c.name: c for c in crossings(spec, input_size, geometry)}
    towers = range(spec.towers)
    rows = [("io", [f"image 3×{input_size}×{input_size}\n(the same batch on both)"] * spec.towers, None)]
    for layer in spec.layers:
        rows.append((layer.kind, [_layer_text(spec, layer, t, sides, input_size) for t in towers],
                     layer.name if layer.name in by_name else None))
    classes = spec.layers[-1].width
    rows.append(("io", [f"logits: all {classes} classes\n(own {s} + the other's)" for s in
                        split_sizes(classes, spec.towers)], "logits"))
    rows.append(("io", ["softmax and loss\n(computed alike on both)"] * spec.towers, None))
    return rows


def draw_figure2(spec: NetSpec, input_size: int, path: Path, *, geometry: str = "224", title: str = "") -> str:
    """Figure 2 of ``spec`` at ``input_size`` px as a PNG at ``path``; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from alexnet_mp.job.metrics_log import save_png

    rows = _rows(spec, input_size, geometry)
    by_name = {c.name: c for c in crossings(spec, input_size, geometry)}
    fig, ax = plt.subplots(figsize=(13, 0.78 * len(rows) + 1.6))
    ax.set_xlim(0, 1)
    ax.set_ylim(len(rows) - 0.4, -1.1)
    ax.axis("off")
    height = 0.6
    for t, x in enumerate(_COLS):
        ax.text(x + _WIDTH / 2, -0.75, f"tower {t} (rank {t}, GPU {t})", ha="center", va="center",
                fontsize=11, weight="bold")
    ax.text(_NOTE_X, -0.75, "crossing: bytes per image per tower (fp32)", ha="left", va="center",
            fontsize=11, weight="bold", color=_CROSS)
    for r, (kind, texts, crossing) in enumerate(rows):
        for t, x in enumerate(_COLS):
            _box(ax, x, r, _WIDTH, height, texts[t], _FILL[kind])
            if r:
                _arrow(ax, (x + _WIDTH / 2, r - 1 + height / 2), (x + _WIDTH / 2, r - height / 2), _OWN)
        if crossing is not None and r:
            top, bottom = r - 1 + height / 2, r - height / 2
            _arrow(ax, (_COLS[0] + _WIDTH * 0.8, top), (_COLS[1] + _WIDTH * 0.2, bottom), _CROSS, 1.6)
            _arrow(ax, (_COLS[1] + _WIDTH * 0.2, top), (_COLS[0] + _WIDTH * 0.8, bottom), _CROSS, 1.6)
            ax.text(_NOTE_X, r - 0.5, _crossing_text(by_name[crossing]), ha="left", va="center", fontsize=8.5,
                    color=_CROSS)
    fwd = sum(c.forward_bytes for c in by_name.values())
    bwd = sum(c.backward_bytes for c in by_name.values())
    gloo = sum(c.backward_bytes_gloo for c in by_name.values())
    ax.text(_NOTE_X, len(rows) - 1.5,
            f"a step, per image per tower: forward {_bytes_text(fwd)}\nbackward {_bytes_text(bwd)} "
            f"(gloo {_bytes_text(gloo)}); a batch of B moves B times that.\n"
            "Grey: a tower's own units. Red: units both towers read.", ha="left", va="center", fontsize=9)
    ax.set_title(title or f"Figure 2 from arch.py: the {spec.name} net at {input_size} px", fontsize=12)
    return save_png(fig, Path(path), dpi=110, bbox_inches="tight")


def make_figure2(cfg) -> list[str]:
    """``launch/figure2.py``: Figure 2 for ``cfg.model``, then (``cfg.timeline``) one traced step of
    the two towers as ``step-timeline.json`` and ``step-timeline.png`` in ``cfg.output_dir``."""
    import json
    import logging

    from omegaconf import OmegaConf

    from alexnet_mp.paper import timeline
    from alexnet_mp.io import atomic_write
    from alexnet_mp.parallel.placement import wants_cuda

    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    spec, size = figure_spec(model_cfg), figure_input_size(cfg.image_size, model_cfg)
    geometry = arch_options(model_cfg)["geometry"]
    table = crossings(spec, size, geometry)  # also checks the size leaves a map (one line if not)
    if cfg.timeline:
        wants_cuda(str(cfg.device), str(cfg.dist_backend))  # a bad device request as one line, before any work
    out = Path(str(cfg.output_dir))
    out.mkdir(parents=True, exist_ok=True)
    ablated = ", ".join(f"{k}={model_cfg[k]}" for k in ("lrn", "pool", "dropout", "remove")
                        if k in model_cfg and str(model_cfg[k]) != str(arch_options({})[k]))
    what = f"model={spec.name}{' (' + ablated + ')' if ablated else ''}, {size} px"
    written = [draw_figure2(spec, size, out / "figure2.png", geometry=geometry,
                            title=f"Figure 2 from arch.py: {what}, fp32 ({model_cfg['num_classes']} classes)")]
    if cfg.timeline:
        opts = dict(model=model_cfg, input_size=size, batch_size=int(cfg.batch_size), seed=int(cfg.seed),
                    warmup_steps=int(cfg.warmup_steps), overlap=bool(cfg.overlap), device=str(cfg.device),
                    backend=str(cfg.dist_backend), threads=int(cfg.threads), timeout_s=float(cfg.dist_timeout_s))
        records = timeline.trace_step(opts)
        other = {"what": what, "batch_size": opts["batch_size"], "overlap": opts["overlap"],
                 "placement": records[0]["description"], "clock": "time.perf_counter (alexnet_mp.parallel.comm_trace)",
                 "figure2_crossings": [dict(name=c.name, source=c.source, forward_bytes_per_image=c.forward_bytes,
                                            backward_bytes_per_image=c.backward_bytes,
                                            backward_bytes_per_image_gloo=c.backward_bytes_gloo) for c in table]}
        trace = timeline.chrome_trace(records, [l.name for l in spec.layers], opts["overlap"], opts["batch_size"],
                                      other)
        atomic_write(out / "step-timeline.json", json.dumps(trace, indent=1))
        written.append(str(out / "step-timeline.json"))
        written.append(timeline.draw_timeline(trace, out / "step-timeline.png", title=(
            f"one training step of the two towers: {what}, batch {opts['batch_size']}, "
            f"{records[0]['description']}")))
    for path in written:
        logging.getLogger("alexnet_mp").info("wrote %s", path)
    return written
