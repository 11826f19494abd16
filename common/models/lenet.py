"""LeNet-5 as the pruning literature benchmarks it on MNIST.

DropPruning (Jia et al., arXiv 1812.02035) reports "14.3x compression of LeNet-5
on MNIST" beside Han et al. (2015, "Learning both weights and connections"),
whose LeNet-5 is Caffe's MNIST example network: 431K parameters,

    conv 5x5, 20 -> max-pool 2 -> conv 5x5, 50 -> max-pool 2 -> fc 500 -> ReLU -> fc 10

(conv1 0.5K, conv2 25K, fc1 400K, fc2 5K weights; Han et al. Table 1). DropPruning's
abstract could be checked here but not its experiment section, so we take the
network its figure is compared against. As in Caffe's definition, only fc1 is
followed by a non-linearity. LeCun et al.'s 1998 LeNet-5 (6-16-120-84-10, about
61.7K parameters) is a different, smaller network.
"""

from __future__ import annotations

import torch
from torch import nn


def lenet_feature_size(height: int, width: int) -> tuple[int, int]:
    """Spatial size after conv 5 (valid), pool 2, conv 5 (valid), pool 2."""
    return ((height - 4) // 2 - 4) // 2, ((width - 4) // 2 - 4) // 2


class LeNet5(nn.Module):
    """Caffe's LeNet: 431,080 parameters on 1x28x28 inputs with 10 classes."""

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, int, int] = (1, 28, 28)) -> None:
        super().__init__()
        channels, height, width = input_shape
        h, w = lenet_feature_size(height, width)
        if h < 1 or w < 1:
            raise ValueError(f"lenet5 needs inputs of at least 16x16 pixels, not {height}x{width}")
        self.conv1 = nn.Conv2d(channels, 20, kernel_size=5)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.fc1 = nn.Linear(50 * h * w, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(self.conv1(x), 2)
        x = torch.max_pool2d(self.conv2(x), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))
