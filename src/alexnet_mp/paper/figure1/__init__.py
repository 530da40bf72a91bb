"""The paper's Figure 1 (Krizhevsky et al. 2012, sec. 3.1): a four-layer CIFAR-10 net with
ReLUs reaches 25% training error six times faster than the same net with tanh units.

- :mod:`~alexnet_mp.paper.figure1.net`: the four-layer net as a table of :class:`alexnet_mp.net.arch.Layer` rows;
- :mod:`~alexnet_mp.paper.figure1.training`: one run and its running training error per epoch;
- :mod:`~alexnet_mp.paper.figure1.curves`: the epoch at 25%, the fastest rate, the ratio over seeds;
- :mod:`~alexnet_mp.paper.figure1.outputs`: ``figure1.{json,md,png}``;
- :mod:`~alexnet_mp.paper.figure1.run`: the command (``launch/figure1.py``), resumable.

    python launch/figure1.py data.root=data/cifar10 data.train_size=10000 epochs=12 'seeds=[0,1,2]'
"""

from alexnet_mp.paper.figure1.curves import epoch_at_target, fastest_rate, ratio_summary
from alexnet_mp.paper.figure1.net import NEURONS, Figure1Net, figure1_spec, map_sizes
from alexnet_mp.paper.figure1.run import figure1
from alexnet_mp.paper.figure1.training import Images, Recipe, train_curve

__all__ = ["NEURONS", "Figure1Net", "Images", "Recipe", "epoch_at_target", "fastest_rate", "figure1", "figure1_spec",
           "map_sizes", "ratio_summary", "train_curve"]
