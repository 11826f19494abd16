"""Model registry: one line per model in ``MODELS``.

A builder takes the number of classes and the input shape ``(channels, height,
width)`` of the data set and returns an ``nn.Module``; it raises ``ValueError``
when the input is too small for the network (VGG needs 32x32). Conv and linear ``weight``
tensors are prunable unless the module lists them in ``never_pruned`` (for example
ResNet's 1x1 downsample convolutions, which PruneFL never prunes).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .digits import DigitsCNN
from .leaf import Conv2, Conv4
from .lenet import LeNet5
from .resnet import CifarResNet, ResNet18
from .vgg import VGG11, VGG16

ModelBuilder = Callable[[int, tuple[int, int, int]], nn.Module]

MODELS: dict[str, ModelBuilder] = {
    "digits-cnn": lambda classes, shape: DigitsCNN(classes, *shape),
    "lenet5": lambda classes, shape: LeNet5(classes, shape),
    "conv2": lambda classes, shape: Conv2(classes, *shape),
    "conv4": lambda classes, shape: Conv4(classes, shape),
    "vgg11": lambda classes, shape: VGG11(classes, shape),
    "vgg16": lambda classes, shape: VGG16(classes, shape),
    "resnet18": lambda classes, shape: ResNet18(classes, shape),
    "resnet20": lambda classes, shape: CifarResNet(3, classes, shape),
    "resnet56": lambda classes, shape: CifarResNet(9, classes, shape),
}


def build_model(
    name: str, num_classes: int, input_shape: tuple[int, int, int], seed: int | None = None
) -> nn.Module:
    """Build model ``name``; with ``seed``, its initial weights depend on nothing else."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    if seed is None:
        return MODELS[name](num_classes, input_shape)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return MODELS[name](num_classes, input_shape)
