"""The schema of the ``scheme`` group of ``launch/train.py``: how the net is split over the
processes of a launch (``conf/scheme/{towers,data,hybrid}.yaml``; docs/parallelism.md).

- ``towers``: the paper's two towers, one per process (replicas of the pair beyond two);
- ``data``: the one-process net on every process, each on its share of the global batch;
- ``hybrid``: Krizhevsky (2014): the convolutional layers data-parallel, fc6 and fc7 split
  K ways by output units, one pass through them per process's examples.
"""

from __future__ import annotations

from dataclasses import dataclass

from alexnet_mp.config.schema import setting

__all__ = ["SchemeConfig", "SCHEMES", "FC8_CHOICES", "FC_UPDATES", "LR_SCALINGS", "store"]

SCHEMES = ("towers", "data", "hybrid")
FC8_CHOICES = ("one", "split")  # hybrid: fc8 and the loss whole on every process, or fc8 split K ways too
FC_UPDATES = ("step", "pass")  # hybrid: one SGD step per global batch, or fc weights updated after every pass
LR_SCALINGS = ("none", "convnet2")  # cuda-convnet2's rates for the K-times larger batch, or the rates as given


@dataclass
class SchemeConfig:
    """How the net is split over the K processes of a launch (docs/parallelism.md).

    ``fc8``, ``fc_update`` apply to ``hybrid``; ``lr_scaling`` to ``data`` and ``hybrid``:
    ``none`` keeps ``optim.lr`` for every layer (``batch_size`` is the global batch, so the step
    is the one-process step); ``convnet2`` multiplies the rates as cuda-convnet2's parameter
    files do for K GPUs: every layer's by K (``data``, and ``hybrid`` with ``fc_update=step``),
    the convolutional layers' by K and the fully-connected layers' by 1 (``hybrid`` with
    ``fc_update=pass``, each pass carrying 1/K of the batch)."""

    name: str = setting("towers", choices=SCHEMES)
    fc8: str = setting("one", choices=FC8_CHOICES)
    fc_update: str = setting("step", choices=FC_UPDATES)
    lr_scaling: str = setting("none", choices=LR_SCALINGS)


def store(cs) -> None:
    cs.store(group="scheme", name="base_scheme", node=SchemeConfig)
