"""VGG networks for 32x32 inputs (Simonyan and Zisserman 2015), as the pruning papers use them.

* ``vgg11``: PruneFL's CIFAR-10 model (Jiang et al., TNNLS 2022; their
  ``bases/nn/models/vgg.py``): VGG-11's eight 3x3 convolutions *without*
  BatchNorm, five max-pools, and a 512-512-10 head (three linear layers, ReLU
  between, no dropout): 9,750,922 parameters with 10 classes. Initialised as
  theirs: PyTorch's default for the convolutions, Kaiming-uniform (a = 0, fan-in)
  for the hidden linear layers and (a = 1.5, fan-out) for the last one.
* ``vgg16``: the CIFAR VGG-16 of Li et al. (ICLR 2017, "Pruning filters for
  efficient ConvNets"), which Liu et al. (ICLR 2019, "Rethinking the value of
  network pruning") also prune: 13 3x3 convolutions each followed by BatchNorm,
  and a 512-512-10 head with BatchNorm after the hidden layer: 14,991,946
  parameters with 10 classes (their "1.5 x 10^7"). DropPruning's exact CIFAR
  VGG-16 could not be checked; this is the common one.

The flattened feature size is 512 x (H/32) x (W/32), so inputs must be at least 32x32.
"""

from __future__ import annotations

import math

import torch
from torch import nn

VGG11_LAYERS = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def _features(config: tuple[int | str, ...], in_channels: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = in_channels
    for entry in config:
        if entry == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        assert isinstance(entry, int)
        layers.append(nn.Conv2d(channels, entry, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(entry))
        layers.append(nn.ReLU(inplace=True))
        channels = entry
    return nn.Sequential(*layers)


def _flat_size(input_shape: tuple[int, int, int], name: str) -> int:
    _, height, width = input_shape
    if height < 32 or width < 32:
        raise ValueError(
            f"{name} needs inputs of at least 32x32 pixels (five 2x2 pools), not {height}x{width}"
        )
    return 512 * (height // 32) * (width // 32)


class VGG11(nn.Module):
    """PruneFL's VGG-11: no BatchNorm, 512-512-classes head."""

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 32, 32)) -> None:
        super().__init__()
        flat = _flat_size(input_shape, "vgg11")
        self.features = _features(VGG11_LAYERS, input_shape[0], batch_norm=False)
        self.classifier = nn.Sequential(
            nn.Linear(flat, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, num_classes),
        )
        for layer in (self.classifier[0], self.classifier[2]):
            nn.init.kaiming_uniform_(layer.weight, a=0.0)
        nn.init.kaiming_uniform_(self.classifier[4].weight, a=1.5, mode="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class VGG16(nn.Module):
    """Li et al.'s CIFAR VGG-16: BatchNorm after every conv, 512-512-classes head."""

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 32, 32)) -> None:
        super().__init__()
        flat = _flat_size(input_shape, "vgg16")
        self.features = _features(VGG16_LAYERS, input_shape[0], batch_norm=True)
        self.classifier = nn.Sequential(
            nn.Linear(flat, 512),
            nn.BatchNorm1d(512),
            nn.ReLU(inplace=True),
            nn.Linear(512, num_classes),
        )
        for module in self.features:
            if isinstance(module, nn.Conv2d):
                # He et al. (2015) initialisation for ReLU networks, as Li et al. use.
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / (9 * module.out_channels)))
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))
