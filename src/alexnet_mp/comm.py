"""Every move between towers, in one place.

The towers of Krizhevsky et al. (2012, sec. 3.2) talk only at the inputs of
conv3, fc6, fc7 and fc8, and where the logits are put together. Each move is a
small autograd function whose docstring states both directions. A crossing
layer can hide its move behind its own compute (:func:`crossing_layer`): it
applies its weight's block for this tower's units while the other tower's units
are in flight, and in backward sends the input gradient first and computes the
weight gradient while it travels.

Every collective is counted in :data:`STATS`: bytes sent by this process, and
seconds, by layer and direction; both the collective's whole time and the part
the tower waited for it (*waited*). On a GPU the seconds come from CUDA events
read only when the stats are read, so counting never makes the host wait;
:func:`set_profile` times each collective alone on the host instead.

A group of one member bypasses every collective.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "PROFILE",
    "STATS",
    "CommStats",
    "TowerExchange",
    "crossing_layer",
    "gather_from_towers",
    "gather_logits",
    "gather_shards",
    "is_lost_peer",
    "set_profile",
    "all_equal",
    "all_ranks",
    "barrier",
    "broadcast_object",
]

# Host timing of every collective, alone (a GPU is synchronised before and after each,
# which also serialises the overlapped ones): for profiling only. Set with set_profile().
PROFILE = False

# CUDA event pairs kept unread before the finished ones are read (without waiting).
_MAX_PENDING = 512


def set_profile(on: bool = True) -> None:
    """Time each collective on the host (synchronising a GPU around it) instead of with CUDA events."""
    global PROFILE
    PROFILE = bool(on)


@dataclass
class CommStats:
    """Bytes this process sent and seconds it spent in collectives, per (layer, direction).

    ``seconds``: each collective from its launch to its completion. ``waited_seconds``: the
    part of that the tower waited for: all of a blocking collective; of an overlapped one,
    what the tower's own compute did not hide. Never more than ``seconds``. On a GPU both are
    CUDA event pairs until :meth:`resolve` (called by the readers below) turns them into seconds.
    """

    bytes: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    seconds: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))
    waited_seconds: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))
    calls: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    # When a list (set by a benchmark), each host-timed collective appends
    # (layer, direction, launch start, launch end, wait start, wait end, cpu at wait start,
    # cpu at wait end): times in time.perf_counter seconds, CLOCK_MONOTONIC on Linux and so
    # comparable between processes of one machine; cpu: ``cpu_clock()`` read just outside the
    # wait (a benchmark's clock of the CPU time of the process's other threads), else None.
    timeline: list | None = None
    cpu_clock: Callable[[], float | None] | None = None
    _pending: list = field(default_factory=list, repr=False)

    def add(self, layer: str, direction: str, nbytes: int, seconds: float, waited: float | None = None) -> None:
        """One collective; ``waited`` defaults to ``seconds`` (the tower waited for all of it)."""
        self.count(layer, direction, nbytes)
        self.add_time(layer, direction, seconds, seconds if waited is None else waited)

    def count(self, layer: str, direction: str, nbytes: int) -> None:
        key = (layer, direction)
        self.bytes[key] += nbytes
        self.calls[key] += 1

    def add_time(self, layer: str, direction: str, seconds: float, waited: float) -> None:
        waited = max(waited, 0.0)
        # Waking up after the collective finished counts as waited; keep waited <= seconds.
        self.seconds[(layer, direction)] += max(seconds, waited)
        self.waited_seconds[(layer, direction)] += waited

    def add_events(self, layer: str, direction: str, span: tuple, waited: tuple) -> None:
        """One collective's CUDA event pairs (start, end): its whole span and the tower's wait."""
        self._pending.append((layer, direction, span, waited))
        if len(self._pending) > _MAX_PENDING:  # nobody reads the stats: keep the list short
            self.resolve(wait=False)

    def resolve(self, wait: bool = True) -> None:
        """Turn the recorded CUDA events into seconds; ``wait=False`` reads only finished ones."""
        unread = []
        for layer, direction, span, waited in self._pending:
            if not wait and not (span[1].query() and waited[1].query()):
                unread.append((layer, direction, span, waited))
                continue
            span[1].synchronize()
            waited[1].synchronize()
            self.add_time(layer, direction, span[0].elapsed_time(span[1]) / 1e3,
                          waited[0].elapsed_time(waited[1]) / 1e3)
        self._pending = unread

    def reset(self) -> None:
        self.bytes.clear()
        self.seconds.clear()
        self.waited_seconds.clear()
        self.calls.clear()
        self._pending.clear()
        if self.timeline is not None:
            self.timeline.clear()

    def total_bytes(self) -> int:
        return sum(self.bytes.values())

    def total_seconds(self) -> float:
        self.resolve()
        return sum(self.seconds.values())

    def total_waited_seconds(self) -> float:
        self.resolve()
        return sum(self.waited_seconds.values())

    def as_dict(self) -> dict[str, dict[str, float]]:
        self.resolve()
        return {
            f"{layer}.{direction}": {"bytes": self.bytes[(layer, direction)], "seconds": self.seconds[(layer, direction)],
                                     "waited_seconds": self.waited_seconds[(layer, direction)],
                                     "calls": self.calls[(layer, direction)]}
            for layer, direction in sorted(self.bytes)
        }


STATS = CommStats()

_SIDE_STREAMS: dict = {}


def _side_stream(device: torch.device):
    if device not in _SIDE_STREAMS:
        _SIDE_STREAMS[device] = torch.cuda.Stream(device)
    return _SIDE_STREAMS[device]


def _event():
    return torch.cuda.Event(enable_timing=True)


class _InFlight:
    """One collective, launched at once and finished by :meth:`wait`, counted in :data:`STATS`.

    ``launch()`` starts it with ``async_op=True``; ``result()`` is what :meth:`wait` returns.
    On a GPU it is launched from a side stream, so that an event there marks its end, and the
    compute stream waits for it only in :meth:`wait`: nothing waits on the host. On the CPU the
    host clock runs from the launch to completion (the work's future); the launch plus the
    wait are the part the tower waited for.
    """

    def __init__(self, launch: Callable, result: Callable[[], object], device: torch.device,
                 layer: str, direction: str, nbytes: int):
        self.layer, self.direction, self.result = layer, direction, result
        self.done_at: float | None = None
        self.cuda_events = device.type == "cuda" and not PROFILE
        STATS.count(layer, direction, nbytes)
        if self.cuda_events:
            self.main, self.side = torch.cuda.current_stream(device), _side_stream(device)
            self.side.wait_stream(self.main)  # the inputs are ready
            self.span = (_event(), _event())
            with torch.cuda.stream(self.side):
                self.span[0].record()
                launch().wait()  # the side stream waits for the collective, not the host
                self.span[1].record()
            # The tensors it reads were allocated on the compute stream: keep them until that
            # stream waits for the collective, or the allocator could hand them out meanwhile.
            self.work, self.launch = None, launch
            return
        if device.type == "cuda":  # PROFILE: the collective alone, on the host clock
            torch.cuda.synchronize(device)
        self.start = time.perf_counter()
        self.work = launch()
        self.launched = time.perf_counter()
        if device.type == "cuda":
            self.work.wait()
            torch.cuda.synchronize(device)
            self.work = None
            seconds = time.perf_counter() - self.start
            STATS.add_time(layer, direction, seconds, seconds)
            return
        try:
            self.work.get_future().add_done_callback(self._finished)
        except (RuntimeError, AttributeError):  # a backend without futures: completion = end of the wait
            pass

    def _finished(self, _future) -> None:
        self.done_at = time.perf_counter()

    def wait(self):
        if self.cuda_events:
            waited = (_event(), _event())
            waited[0].record(self.main)
            self.main.wait_stream(self.side)
            waited[1].record(self.main)
            STATS.add_events(self.layer, self.direction, self.span, waited)
            self.launch = None
        elif self.work is not None:
            clock = STATS.cpu_clock if STATS.timeline is not None else None
            cpu_begin = clock() if clock else None
            begin = time.perf_counter()
            self.work.wait()
            end = time.perf_counter()
            cpu_end = clock() if clock else None
            done = end if self.done_at is None else min(self.done_at, end)
            # Waited: the launch and the wait, the host time the tower spent on it.
            STATS.add_time(self.layer, self.direction, done - self.start, (self.launched - self.start) + (end - begin))
            if STATS.timeline is not None:
                STATS.timeline.append((self.layer, self.direction, self.start, self.launched, begin, end,
                                       cpu_begin, cpu_end))
            self.work = None  # the future's callback holds this object
        result, self.result = self.result(), None  # release the buffers only now (stream order)
        return result


def _start_all_gather(x: Tensor, dim: int, sizes: list[int], group, layer: str, direction: str) -> _InFlight:
    """All-gather ``x`` from every rank; ``wait()`` returns each rank's share in rank order.
    Shares may differ in size along ``dim``: the smaller ones travel padded."""
    x = x.contiguous()
    largest = max(sizes)
    if x.shape[dim] != largest:  # pad the smaller shares so every rank sends the same shape
        pad_shape = list(x.shape)
        pad_shape[dim] = largest - x.shape[dim]
        x = torch.cat([x, x.new_zeros(pad_shape)], dim=dim)
    parts = [torch.empty_like(x) for _ in sizes]
    return _InFlight(lambda: dist.all_gather(parts, x, group=group, async_op=True),
                     lambda: [p.narrow(dim, 0, n) for p, n in zip(parts, sizes)],
                     x.device, layer, direction, x.numel() * x.element_size() * (len(sizes) - 1))


def _all_gather_cat(x: Tensor, dim: int, sizes: list[int], group, layer: str, direction: str) -> Tensor:
    """All-gather ``x`` from every rank and concatenate along ``dim``; shares may differ in size."""
    return torch.cat(_start_all_gather(x, dim, sizes, group, layer, direction).wait(), dim=dim)


def is_lost_peer(err: BaseException) -> bool:
    """Whether ``err`` is how a collective reports a lost peer: torch's ``DistBackendError``,
    or gloo's transport error, a plain RuntimeError. (Under NCCL a survivor waits in a CUDA
    sync until torchrun kills it or NCCL's watchdog aborts it.)"""
    if isinstance(err, dist.DistBackendError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("gloo" in text or "connection reset" in text
                                              or "connection closed" in text)


def _offset(sizes: list[int], rank: int) -> int:
    return sum(sizes[:rank])


class _GatherFromTowers(torch.autograd.Function):
    """forward: all-gather every tower's units (concatenated in tower order);
    backward: reduce-scatter, i.e. sum the gradient over towers and keep this tower's slice
    (NCCL's reduce-scatter; an all-reduce and a slice on gloo).

    The gathered tensor feeds *different* weights on each device, so the gradient of
    this tower's units is the sum of what every tower's layer sends back (spec, sec. 7).
    """

    @staticmethod
    def forward(ctx, x: Tensor, dim: int, sizes: list[int], group, layer: str) -> Tensor:
        ctx.dim, ctx.sizes, ctx.group, ctx.layer = dim, sizes, group, layer
        return _all_gather_cat(x, dim, sizes, group, layer, "forward")

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _reduce_scatter(grad, ctx.dim, ctx.sizes, ctx.group, ctx.layer), None, None, None, None


# Backends whose reduce-scatter moves fewer bytes than an all-reduce. gloo implements
# reduce-scatter with all-reduces, and measured twice as slow as one all-reduce here
# (communication 4.7% of the step against 2.4%, make bench-1gpu-vs-2gpu on 2 CPU cores).
# An all-to-all of the slices, summed locally, sends half the bytes of the all-reduce but
# was slower still in the step, overlapped with compute on the tower's core (conv3's
# backward 0.31 s per step inside the collective against 0.08 s; communication 8.1% of the
# step against 5.4%), though faster alone (gloo's threads' CPU 8 ms against 18 ms).
REDUCE_SCATTER_BACKENDS = {"nccl"}


def _start_reduce_scatter(grad: Tensor, dim: int, sizes: list[int], group, layer: str) -> _InFlight:
    """Sum ``grad`` over ranks; ``wait()`` returns this rank's slice along ``dim``.

    NCCL's reduce-scatter sends each rank only the slices the others own, (n-1)/n of the
    tensor. Elsewhere (gloo), or when the shares differ in size, an all-reduce followed by
    a slice gives the same numbers. The choice depends only on the backend, so every rank
    makes the same one.
    """
    rank, n = dist.get_rank(group), len(sizes)
    nbytes = grad.numel() * grad.element_size()
    if len(set(sizes)) == 1 and str(dist.get_backend(group)) in REDUCE_SCATTER_BACKENDS:
        parts = [p.contiguous() for p in grad.split(sizes, dim=dim)]
        out = torch.empty_like(parts[rank])
        return _InFlight(lambda: dist.reduce_scatter(out, parts, op=dist.ReduceOp.SUM, group=group, async_op=True),
                         lambda: out, grad.device, layer, "backward", nbytes * (n - 1) // n)
    grad = grad.contiguous()
    # A ring all-reduce sends about 2 (n-1)/n of the tensor per rank.
    return _InFlight(lambda: dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=group, async_op=True),
                     lambda: grad.narrow(dim, _offset(sizes, rank), sizes[rank]).contiguous(),
                     grad.device, layer, "backward", 2 * nbytes * (n - 1) // n)


def _reduce_scatter(grad: Tensor, dim: int, sizes: list[int], group, layer: str) -> Tensor:
    """Sum ``grad`` over ranks and return this rank's slice along ``dim`` (blocking)."""
    return _start_reduce_scatter(grad, dim, sizes, group, layer).wait()


class _CrossingLayer(torch.autograd.Function):
    """A crossing layer (conv3, fc6, fc7, fc8) on every tower's units, its weight split by
    input tower: y = W_own x_own + sum of W_other x_other + b.

    forward: async all-gather of every tower's units, overlapped with this tower's block
    W_own x_own + b; the other towers' blocks are added when their units have arrived.
    backward: the gradient of the whole gathered input first, then its async reduce-scatter
    (sum over towers, keep this tower's slice; an all-reduce and a slice on gloo), overlapped
    with the weight and bias gradients.

    ``conv`` is (stride, padding, dilation) for a convolution, None for a linear layer;
    ``sizes`` are each tower's share of the input along dim 1 (for fc6, channels x 6 x 6 of
    pool5 flattened channel-major, a contiguous block per tower).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, conv: tuple | None, sizes: list[int],
                group, layer: str) -> Tensor:
        rank = dist.get_rank(group)
        gathering = _start_all_gather(x, 1, sizes, group, layer, "forward")
        dtype = _compute_dtype(x, weight)  # bf16 under autocast, as the module would compute
        w = weight.to(dtype)

        def block(units: Tensor, tower: int, b: Tensor | None = None) -> Tensor:
            w_block = w.narrow(1, _offset(sizes, tower), sizes[tower])
            if conv is None:
                return F.linear(units.to(dtype), w_block, b)
            return F.conv2d(units.to(dtype), w_block, b, *conv)

        y = block(x, rank, None if bias is None else bias.to(dtype))  # while the others' units travel
        parts = gathering.wait()
        for tower, units in enumerate(parts):
            if tower != rank:
                y.add_(block(units, tower))
        full = torch.cat([x if tower == rank else units for tower, units in enumerate(parts)], dim=1).to(dtype)
        ctx.save_for_backward(full, w)
        ctx.conv, ctx.sizes, ctx.group, ctx.layer = conv, sizes, group, layer
        ctx.x_dtype, ctx.has_bias = x.dtype, bias is not None
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        full, w = ctx.saved_tensors
        grad = grad.to(w.dtype)
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        need_b = need_b and ctx.has_bias
        conv = None if ctx.conv is None else [list(v) for v in ctx.conv]

        def conv_backward(mask: list[bool]):
            return torch.ops.aten.convolution_backward(grad, full, w, [w.shape[0]] if mask[2] else None, *conv,
                                                       False, [0] * len(conv[0]), 1, mask)

        exchange = None
        if need_x:  # first, so that its exchange travels while the weight gradient is computed
            grad_x = grad.mm(w) if conv is None else conv_backward([True, False, False])[0]
            exchange = _start_reduce_scatter(grad_x.to(ctx.x_dtype), 1, ctx.sizes, ctx.group, ctx.layer)
        grad_w = grad_b = None
        if conv is None:
            grad_w = grad.t().mm(full) if need_w else None
            grad_b = grad.sum(0) if need_b else None
        elif need_w or need_b:
            _, grad_w, grad_b = conv_backward([False, need_w, need_b])
        grad_x = exchange.wait() if exchange is not None else None
        return grad_x, grad_w, grad_b, None, None, None, None


def _compute_dtype(x: Tensor, weight: Tensor) -> torch.dtype:
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else weight.dtype


def _conv_args(module: nn.Module) -> tuple | None:
    if isinstance(module, nn.Linear):
        return None
    if isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros" \
            and not isinstance(module.padding, str):
        return module.stride, module.padding, module.dilation
    raise TypeError(f"a crossing layer is an nn.Linear or a dense, zero-padded nn.Conv2d, not {module!r}")


class _GatherLogits(torch.autograd.Function):
    """forward: all-gather every tower's share of the classes;
    backward: keep this tower's slice, no communication.

    Everything downstream of the logits (softmax, loss) is computed identically on
    every device, so each already holds the whole gradient; summing would double it.
    """

    @staticmethod
    def forward(ctx, x: Tensor, sizes: list[int], group) -> Tensor:
        ctx.sizes, ctx.group = sizes, group
        return _all_gather_cat(x, x.dim() - 1, sizes, group, "logits", "forward")

    @staticmethod
    def backward(ctx, grad: Tensor):
        rank = dist.get_rank(ctx.group)
        return grad.narrow(grad.dim() - 1, _offset(ctx.sizes, rank), ctx.sizes[rank]).contiguous(), None, None


def gather_from_towers(x: Tensor, dim: int, sizes: list[int], group=None, layer: str = "?") -> Tensor:
    """Input of a crossing layer (conv3, fc6, fc7, fc8). forward: all-gather; backward: reduce-scatter."""
    if len(sizes) == 1:
        return x
    return _GatherFromTowers.apply(x, dim, sizes, group, layer)


def crossing_layer(x: Tensor, module: nn.Module, sizes: list[int], group=None, layer: str = "?") -> Tensor:
    """``module`` (conv3, fc6, fc7, fc8) on every tower's units, of which ``x`` holds this tower's, before ReLU.
    forward: async all-gather overlapped with this tower's block; backward: async reduce-scatter of the
    input gradient overlapped with the weight gradient."""
    if len(sizes) == 1:
        return module(x)
    return _CrossingLayer.apply(x, module.weight, module.bias, _conv_args(module), sizes, group, layer)


def gather_logits(x: Tensor, sizes: list[int], group=None) -> Tensor:
    """fc8's outputs to every device. forward: all-gather; backward: local slice only."""
    if len(sizes) == 1:
        return x
    return _GatherLogits.apply(x, sizes, group)


class TowerExchange:
    """The exchange a tower uses (see :class:`alexnet_mp.model.Exchange`).

    With ``overlap`` (the default) a crossing layer computes its own tower's block while the
    other tower's units are in flight (:func:`crossing_layer`); without it, it gathers every
    tower's units first and then applies the layer (:func:`gather_from_towers`), for comparison.
    """

    def __init__(self, group=None, overlap: bool = True):
        self.group, self.overlap = group, overlap
        # Under torch.compile each move is one graph break, and the compiler never traces the
        # collectives, streams and clocks inside (wrapped here, not at import: it loads the compiler).
        disable = torch.compiler.disable
        self._crossing, self._gather, self._gather_logits = (
            disable(crossing_layer), disable(gather_from_towers), disable(gather_logits))

    def gather(self, x: Tensor, layer: str, sizes: list[int]) -> Tensor:
        return self._gather(x, 1, sizes, self.group, layer)

    def crossing(self, layer: str, module: nn.Module, x: Tensor, sizes: list[int]) -> Tensor:
        if self.overlap:
            return self._crossing(x, module, sizes, self.group, layer)
        return module(self.gather(x, layer, sizes))

    def gather_logits(self, x: Tensor, sizes: list[int]) -> Tensor:
        return self._gather_logits(x, sizes, self.group)


# -- outside the forward/backward pass ---------------------------------------------------------

def gather_shards(x: Tensor, sizes: list[int], group=None, dim: int = 0) -> Tensor:
    """Every tower's share of a parameter, concatenated along ``dim`` (no autograd)."""
    if len(sizes) == 1:
        return x
    with torch.no_grad():
        return _all_gather_cat(x.detach(), dim, sizes, group, "state_dict", "forward")


def all_equal(x: Tensor, group=None) -> bool:
    """True when ``x`` is bit-identical on every rank (used to check both towers see the same batch)."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return True
    mine = x.detach().contiguous()
    parts = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, mine, group=group)
    return all(torch.equal(parts[0], p) for p in parts[1:])


def all_ranks(flag: bool, group=None) -> bool:
    """True when ``flag`` is true on every rank; every rank gets the same answer."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    if dist.get_backend(group) == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=group)
    return bool(t.item())


def sum_over(t: Tensor, group=None) -> Tensor:
    """``t`` summed over ``group`` in place (the replicas' losses and error counts); ``t``
    lives on the group's device (the GPU under NCCL)."""
    if dist.is_initialized() and group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


def barrier(group=None) -> None:
    if dist.is_initialized() and dist.get_world_size(group) > 1:
        dist.barrier(group=group)


def broadcast_object(obj, src: int = 0, group=None):
    """Rank ``src``'s Python object on every rank (run directory, resume decision)."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=group)
    return box[0]
