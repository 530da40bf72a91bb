"""alexnet_mp: the paper's two-tower AlexNet, one tower per device.

    from alexnet_mp import build_model
    from alexnet_mp.parallel.towers import parallelize
"""

from alexnet_mp.net.model import AlexNet, build_model, count_parameters

__all__ = ["AlexNet", "build_model", "count_parameters"]
__version__ = "0.1.0"
