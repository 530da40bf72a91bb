"""Arithmetic per image, counted from the model itself.

Multiply-adds of the convolutional and fully-connected layers in one forward pass,
read off the modules' shapes and the feature-map sides the input size implies, so
the same function counts the whole net, one tower of it and the half net:

    >>> from alexnet_mp import build_model
    >>> forward_macs(build_model("full"))            # about 724M (spec, sec. 1)
    >>> forward_macs(build_model("half"))            # about 391M (spec, sec. 2)

ReLU, LRN, pooling and dropout are left out, as in the paper's "724M" and in the
usual model-FLOPs-utilisation convention (nanoGPT, PaLM): they are a few percent of
the arithmetic and none of it is matrix multiplication. A training step costs about
three forward passes (forward, and the two products of backward: gradients of the
inputs and of the weights).
"""

from __future__ import annotations

from torch import nn

from alexnet_mp.net.model import AlexNet

__all__ = ["layer_macs", "forward_macs", "forward_flops", "train_flops", "TRAIN_PASSES"]

TRAIN_PASSES = 3  # forward + backward (input gradients) + backward (weight gradients)


def _conv_out(side: int, conv: nn.Conv2d) -> int:
    return (side + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1


def layer_macs(model: AlexNet) -> dict[str, int]:
    """Multiply-adds per image of each conv / fc layer of ``model`` (a whole net or a tower).

    A convolution costs (output elements) x (in_channels / groups x k x k); a dense layer
    in x out. A tower's crossing layers read both towers' units, which its modules'
    ``in_channels`` / ``in_features`` already say.
    """
    side = model.input_size + model.pad  # conv1 reads the image padded at the bottom/right
    macs = {}
    for layer in model.spec.layers:
        module = getattr(model, layer.name)
        if isinstance(module, nn.Conv2d):
            side = _conv_out(side, module)
            k_h, k_w = module.kernel_size
            macs[layer.name] = module.out_channels * side * side * (module.in_channels // module.groups) * k_h * k_w
            if layer.pool:
                kernel, stride = model.spec.pool
                side = (side - kernel) // stride + 1
        elif isinstance(module, nn.Linear):
            macs[layer.name] = module.in_features * module.out_features
        else:  # pragma: no cover - the spec only knows conv and fc
            raise TypeError(f"{layer.name}: cannot count {type(module).__name__}")
    return macs


def forward_macs(model: AlexNet) -> int:
    """Multiply-adds per image, one forward pass."""
    return sum(layer_macs(model).values())


def forward_flops(model: AlexNet) -> int:
    """FLOPs per image, one forward pass (a multiply-add is two FLOPs)."""
    return 2 * forward_macs(model)


def train_flops(model: AlexNet) -> int:
    """FLOPs per image, one training step (forward and backward)."""
    return TRAIN_PASSES * forward_flops(model)
