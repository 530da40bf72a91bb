"""How the one-process net becomes this device's tower, and back.

``parallelize(full_model, group)`` keeps this rank's share of every layer of the paper's
two-tower net (Krizhevsky et al. 2012, sec. 3.2), copying the weights from ``full_model``,
and wires the crossing layers to :mod:`alexnet_mp.parallel.comm`. ``full_state_dict(tower)`` puts the
shares back together into a state dict that ``build_model("full")`` loads;
``shard_state_dict`` is the way there for a state dict. Where each process runs is
:mod:`alexnet_mp.parallel.placement`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from alexnet_mp.parallel.collectives import gather_shards
from alexnet_mp.parallel.comm import TowerExchange
from alexnet_mp.errors import UserError
from alexnet_mp.net.model import AlexNet

__all__ = ["parallelize", "parallelize_towers", "full_state_dict", "shard_state_dict"]


def _check_parallelizable(full_model: AlexNet, world: int) -> None:
    if full_model.tower is not None:
        raise UserError("parallelize() takes the one-process net, not a tower")
    if full_model.spec.towers != world:
        raise UserError(
            f"the {full_model.spec.name} net has {full_model.spec.towers} tower(s) but the group has {world} "
            f"process(es); only the full net splits, one tower per process"
        )


def shard_state_dict(full_state: dict[str, torch.Tensor], tower: AlexNet) -> dict[str, torch.Tensor]:
    """This tower's share of a one-process state dict: every weight and bias is split on
    its output units (dim 0), which is exactly how the towers divide each layer."""
    out = {}
    for layer in tower.spec.layers:
        start, size = tower.local_offset(layer), tower.local_width(layer)
        for kind in ("weight", "bias"):
            out[f"{layer.name}.{kind}"] = full_state[f"{layer.name}.{kind}"].narrow(0, start, size).clone()
    return out


def parallelize(full_model: AlexNet, group=None, device: torch.device | str | None = None,
                overlap: bool = True) -> AlexNet:
    """The tower for this rank, holding its share of ``full_model``'s weights.

    Its ``forward(x)`` takes the whole batch (both towers see the same images) and
    returns the full logits on every rank. With ``overlap`` each crossing layer computes
    its own tower's block while the other tower's units are in flight, and sends its
    input gradient while it computes its weight gradient (:func:`alexnet_mp.parallel.comm.crossing_layer`);
    without, it gathers first, then computes (the same numbers up to rounding).
    """
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    _check_parallelizable(full_model, world)
    tower = AlexNet(
        full_model.spec,
        input_size=full_model.input_size,
        geometry=full_model.geometry,
        lrn=full_model.lrn_option,
        lrn_function=full_model.lrn_function,
        tower=(rank, world),
        exchange=TowerExchange(group, overlap=overlap),
        init=None,
    )
    tower.load_state_dict(shard_state_dict(full_model.state_dict(), tower))
    tower.train(full_model.training)
    return tower.to(device) if device is not None else tower


parallelize_towers = parallelize  # the towers scheme's name beside parallelize_data and parallelize_hybrid


def full_state_dict(tower: AlexNet) -> dict[str, torch.Tensor]:
    """The one-process state dict assembled from every tower (a collective: call on all ranks)."""
    state = {}
    for layer in tower.spec.layers:
        sizes = tower.shares(layer)
        for kind in ("weight", "bias"):
            local = getattr(getattr(tower, layer.name), kind)
            state[f"{layer.name}.{kind}"] = gather_shards(local, sizes, tower.exchange.group).cpu()
    return state
