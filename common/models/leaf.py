"""The LEAF benchmark's FEMNIST CNN ("Conv-2"), as PruneFL trains it.

Reference: Caldas et al., "LEAF: A Benchmark for Federated Settings" (2018), and
Jiang et al., "Model Pruning Enables Efficient Federated Learning on Edge Devices"
(TNNLS 2022), which prunes this model on FEMNIST.
"""

from __future__ import annotations

import torch
from torch import nn


class Conv2(nn.Module):
    """5x5 conv (32) - pool - 5x5 conv (64) - pool - 2048 - classes, 'same' padding.

    With 62 classes and 1x28x28 inputs it has 6,603,710 parameters, 97% of them in
    ``fc1`` (3136 x 2048).
    """

    def __init__(self, num_classes: int = 62, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=5, padding=2)
        self.fc1 = nn.Linear(64 * 7 * 7, 2048)
        self.fc2 = nn.Linear(2048, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)
