"""The paper's Figure 1 (Krizhevsky et al. 2012, sec. 3.1): a four-layer CIFAR-10 net with
ReLUs reaches 25% training error six times faster than the same net with tanh units.

- :mod:`~alexnet_mp.paper.figure1.net`: the net's two readings (``layers80sec``, the default, and
  ``four_layer``) as tables of :class:`alexnet_mp.net.arch.Layer` rows with their starts and inputs;
- :mod:`~alexnet_mp.paper.figure1.training`: one run and its running training error per epoch;
- :mod:`~alexnet_mp.paper.figure1.curves`: the epoch at 25%, the fastest rate, the ratio over seeds;
- :mod:`~alexnet_mp.paper.figure1.outputs`: ``figure1.{json,md,png}``, a row per net and training budget;
- :mod:`~alexnet_mp.paper.figure1.run`: the command (``launch/figure1.py``), resumable.

    python launch/figure1.py data.root=data/cifar10-full data.train_size=10000 [net=four_layer] [output_dir=DIR]
"""

from alexnet_mp.paper.figure1.curves import epoch_at_target, fastest_rate, ratio_summary
from alexnet_mp.paper.figure1.net import DEFAULT_READING, NEURONS, READINGS, Figure1Net, Reading, build_net, \
    figure1_spec, map_sizes
from alexnet_mp.paper.figure1.run import figure1
from alexnet_mp.paper.figure1.training import Images, Recipe, train_curve

__all__ = ["DEFAULT_READING", "NEURONS", "READINGS", "Figure1Net", "Images", "Reading", "Recipe", "build_net",
           "epoch_at_target", "fastest_rate", "figure1", "figure1_spec", "map_sizes", "ratio_summary", "train_curve"]
