"""The hybrid scheme of Krizhevsky (2014), "One weird trick": how the one-process net becomes
this process's part of it, one training step of it, and the one-process weights back.

The convolutional layers hold most of the computation and few of the weights: every process
holds all of them (replicated) and runs them on its own share of the global batch, and their
gradients are summed over the processes after the backward pass (:func:`comm.sum_gradients`).
The fully-connected layers hold most of the weights and little of the computation: fc6 and fc7
are split K ways by output units, one block per process, as the towers split them two ways.

fc8 (``fc8=``):

- ``"one"`` (the default): fc8 and the loss whole, computed on every process from fc7's gathered
  outputs. cuda-convnet2's 4-GPU hybrid keeps fc8 and the cost on GPU 0; computing that one GPU's
  layer on every process gives every process the same logits and the same fc8 gradient (no move
  of fc8's gradient, and no scatter of fc7's: each process keeps its slice), for the bytes of
  gathering fc7's outputs to every process rather than to one;
- ``"split"``: fc8 split K ways too, its logits gathered to every process.

The passes (cuda-convnet2's MultiGPU.md): there is one pass through the fully-connected layers per
process: pass j carries process j's examples. Its pool5 features are broadcast to every process
(launched for every pass at once, so each travels while the passes before it compute), every
process applies its fc6 block, the blocks are gathered (with the next layer's own block computed
while the others travel, :func:`comm.crossing_layer`), and so on to the loss; its backward sends
pool5's gradient back to process j (a reduce). ``fc_update``:

- ``"step"``: the fully-connected gradients accumulate over the passes; one SGD step on the global
  batch, the one-process step up to rounding (loss of pass j: its rows' summed loss / global batch);
- ``"pass"``: the fully-connected weights update after every pass (cuda-convnet2's updatePeriod=1),
  each on its pass's mean loss; the convolutional ones once per step on the global batch's mean.

Dropout draws the whole global batch's mask for every layer at the start of a step, from the
generator the one-process net draws it from and in its order; each pass keeps its rows and this
process's units. :mod:`alexnet_mp.net.model` stays free of torch.distributed: the moves are
:mod:`alexnet_mp.parallel.comm`'s.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from alexnet_mp.errors import UserError
from alexnet_mp.net.arch import Layer
from alexnet_mp.net.model import AlexNet
from alexnet_mp.parallel import comm
from alexnet_mp.parallel.collectives import gather_shards

__all__ = ["HybridNet", "parallelize_hybrid", "hybrid_full_state_dict", "check_hybrid"]


def check_hybrid(spec, world: int, batch_size: int | None = None, fc8: str = "one") -> None:
    """One line, before training, when K processes cannot split this net or batch."""
    split = [l for l in spec.fcs[:-1]] + ([spec.fcs[-1]] if fc8 == "split" else [])
    for layer in split:
        if layer.width % world:
            hint = " (scheme.fc8=one keeps fc8 whole)" if layer is spec.fcs[-1] else ""
            raise UserError(f"scheme=hybrid splits {layer.name}'s {layer.width} units over the processes: "
                            f"{world} processes do not divide them{hint}")
    if batch_size is not None and batch_size % world:
        raise UserError(f"scheme=hybrid: batch_size={batch_size} is the global batch and must split evenly "
                        f"over the {world} processes")


class HybridNet(nn.Module):
    """This process's part of the hybrid net: every convolutional layer, and its block of every
    split fully-connected layer (state dict keys as the one-process net's; fc shards along dim 0).

    ``forward(x)`` (a collective) gives the logits of this process's images ``x``; training runs
    :meth:`train_step`.
    """

    def __init__(self, net: AlexNet, group=None, fc8: str = "one"):
        super().__init__()
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        self.__dict__["net"] = net  # its modules are registered here, under the same names
        self.group, self.fc8_mode, self.spec = group, fc8, net.spec
        check_hybrid(net.spec, self.world, fc8=fc8)
        self.split = {l.name for l in net.spec.fcs[:-1]} | ({net.spec.fcs[-1].name} if fc8 == "split" else set())
        for layer in net.spec.fcs:  # keep this process's block of every split layer
            if layer.name in self.split:
                whole: nn.Linear = getattr(net, layer.name)
                start, size = self.offset(layer), self.share(layer)
                block = nn.Linear(whole.in_features, size)
                with torch.no_grad():
                    block.weight.copy_(whole.weight[start:start + size])
                    block.bias.copy_(whole.bias[start:start + size])
                setattr(net, layer.name, block)
        for name, module in net.named_children():
            self.add_module(name, module)
        self.masks: dict[str, Tensor] = {}

    # -- the shares ------------------------------------------------------------------------
    def share(self, layer: Layer) -> int:
        return layer.width // self.world if layer.name in self.split else layer.width

    def offset(self, layer: Layer) -> int:
        return self.rank * self.share(layer) if layer.name in self.split else 0

    def sizes(self, layer: Layer) -> list[int]:
        return [self.share(layer)] * self.world

    def conv_parameters(self) -> list[nn.Parameter]:
        return [p for l in self.spec.convs for p in getattr(self, l.name).parameters()]

    def fc_parameters(self) -> list[nn.Parameter]:
        return [p for l in self.spec.fcs for p in getattr(self, l.name).parameters()]

    # -- forward ---------------------------------------------------------------------------
    def features(self, x: Tensor) -> Tensor:
        """pool5 of this process's images, flattened channel-major as fc6 reads it."""
        return torch.flatten(self.net(x, until=self.spec.convs[-1].name), 1)

    def draw_masks(self, rows: int, device: torch.device) -> None:
        """The dropout masks of the whole global batch (``rows``), drawn as the one-process net
        draws them (:class:`alexnet_mp.net.model.SharedMaskDropout`): same generator, order and shape."""
        self.masks = {}
        for layer in self.spec.fcs:
            if layer.dropout and self.training and self.spec.dropout_p > 0:
                keep = 1.0 - self.spec.dropout_p
                self.masks[layer.name] = torch.empty((rows, layer.width), device=device).bernoulli_(keep) / keep

    def fc_pass(self, features: Tensor, rows: slice) -> Tensor:
        """The fully-connected layers on one pass's ``features`` (on every process); returns its
        logits, whole on every process. ``rows``: the pass's rows of the global batch (dropout)."""
        h, previous = features, None
        for layer in self.spec.fcs:
            module = getattr(self, layer.name)
            if previous is None:  # fc6 reads the pass's whole pool5
                h = module(h)
            elif layer.name in self.split:  # this block on every process's units of the layer before
                h = comm.crossing_layer(h, module, self.sizes(previous), self.group, layer.name)
            else:  # replicated: the layer before gathered whole
                h = module(comm.gather_replicated(h, self.sizes(previous), self.group, layer.name))
            if layer.relu:
                h = F.relu(h)
            if layer.name in self.masks:
                start, size = self.offset(layer), self.share(layer)
                h = h * self.masks[layer.name][rows, start:start + size].to(h.device, h.dtype)
            previous = layer
        if previous.name in self.split:
            h = comm.gather_replicated(h, self.sizes(previous), self.group, "logits")
        return h

    def forward(self, x: Tensor) -> Tensor:
        """Logits of this process's images (every process calls it; batches may differ in size)."""
        mine = self.features(x)
        counts = comm.gather_labels(torch.tensor([len(x)], device=x.device), self.group).tolist()
        self.draw_masks(sum(counts), x.device)
        pending = [comm.start_pass_input(_rows_like(mine, n), j, self.group) if n else None
                   for j, n in enumerate(counts)]
        out = None
        for j, n in enumerate(counts):
            if n:
                rows = slice(sum(counts[:j]), sum(counts[:j + 1]))
                logits = self.fc_pass(comm.pass_input(_rows_like(mine, n), pending[j], j, self.group), rows)
                if j == self.rank:
                    out = logits
        return out if out is not None else mine.new_zeros((0, self.spec.fcs[-1].width))

    # -- one training step -----------------------------------------------------------------
    def train_step(self, images: Tensor, labels: Tensor, *, fc_update: str, fc_step: Callable[[], None],
                   step: Callable[[], None]) -> Tensor:
        """Forward and backward of one global batch (this process's ``images``, ``labels``: its
        equal share). ``fc_step()`` steps the optimizer after each pass (``fc_update="pass"``;
        only fc gradients are set then); ``step()`` at the end, with the gradients the scheme
        leaves (all of them, or only the convolutional ones for ``"pass"``). Returns the global
        batch's mean loss (detached), the same on every process."""
        b, k = len(labels), self.world
        every_label = comm.gather_labels(labels, self.group)
        self.draw_masks(b * k, images.device)
        pool5 = self.features(images)
        mine = pool5.detach().requires_grad_()
        pending = [comm.start_pass_input(mine, j, self.group) for j in range(k)]
        per_pass = fc_update == "pass"
        total = torch.zeros((), device=images.device)
        for j in range(k):
            rows = slice(j * b, (j + 1) * b)
            logits = self.fc_pass(comm.pass_input(mine, pending[j], j, self.group), rows)
            loss = F.cross_entropy(logits.float(), every_label[rows])
            (loss if per_pass else loss / k).backward()
            total += loss.detach() / k
            if per_pass:
                fc_step()
                for p in self.fc_parameters():
                    p.grad = None
        pool5.backward(mine.grad)
        # step: each process's share of the global mean already; pass: each a mean over its rows.
        comm.sum_gradients(self.conv_parameters(), self.group, scale=1.0 / k if per_pass else 1.0)
        step()
        return total


def _rows_like(x: Tensor, rows: int) -> Tensor:
    return x if len(x) == rows else x.new_empty((rows, *x.shape[1:]))


def parallelize_hybrid(full_model: AlexNet, group=None, device: torch.device | str | None = None,
                       fc8: str = "one") -> HybridNet:
    """This process's part of ``full_model`` (a one-process net: full, half or one_tower) in the
    hybrid scheme; ``full_model`` itself is left as it is."""
    if full_model.tower is not None:
        raise UserError("parallelize_hybrid() takes the one-process net, not a tower")
    net = HybridNet(copy.deepcopy(full_model), group, fc8)
    net.train(full_model.training)
    return net.to(device) if device is not None else net


def hybrid_full_state_dict(net: HybridNet) -> dict[str, Tensor]:
    """The one-process state dict (a collective: call on every process)."""
    state = {}
    for name, value in net.state_dict().items():
        layer = name.split(".")[0]
        if layer in net.split:
            value = gather_shards(value, [value.shape[0]] * net.world, net.group)
        state[name] = value.detach().cpu().clone()
    return state
