"""A small CNN for scikit-learn's 8x8 digits, the embedded default's model."""

from __future__ import annotations

import torch
from torch import nn


class DigitsCNN(nn.Module):
    """Two 3x3 convolutions and two linear layers for 1x8x8 inputs.

    38,282 parameters with 10 classes: small enough that a 10-client simulation
    runs in seconds per round on a CPU, with convolutional and linear layers to prune.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, height: int = 8, width: int = 8) -> None:
        super().__init__()
        if height < 2 or width < 2:
            raise ValueError(f"digits-cnn needs inputs of at least 2x2 pixels, not {height}x{width}")
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(32 * (height // 2) * (width // 2), 64)  # 512 on 8x8
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)
