"""The LEAF benchmark's CNNs: FEMNIST's "Conv-2" and CelebA's "Conv-4", as PruneFL trains them.

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

    Initialised as the PruneFL authors' LEAF Conv-2 (their code, public repository
    jiangyuang/PruneFL, ``bases/nn/models/leaf.py``; Jiang et al., TNNLS 2022): the
    convolutions and every bias keep torch's defaults; ``fc1`` and ``fc2`` weights are
    Kaiming-uniform with ``mode="fan_out"`` (``a = 0``, gain sqrt(2))::

        W ~ U(-b, b),   b = gain * sqrt(3 / fan_out) = sqrt(6 / out_features),
        std(W) = b / sqrt(3) = sqrt(2 / out_features)

    i.e. b = 0.054 for ``fc1`` (2048 outputs) and 0.311 for ``fc2`` (62 outputs).
    torch's default (``a = sqrt(5)``, fan-in: b = 1 / sqrt(in_features)) makes
    ``fc2`` about 14x smaller; with BCE averaged over 62 outputs at lr 0.25 (PruneFL's
    FEMNIST setting) such a model stays near 0.07 accuracy for hundreds of steps.
    """

    def __init__(
        self, num_classes: int = 62, in_channels: int = 1, height: int = 28, width: int = 28
    ) -> None:
        super().__init__()
        if height < 4 or width < 4:
            raise ValueError(f"conv2 needs inputs of at least 4x4 pixels, not {height}x{width}")
        self.conv1 = nn.Conv2d(in_channels, 32, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=5, padding=2)
        self.fc1 = nn.Linear(64 * (height // 4) * (width // 4), 2048)  # 3136 on 28x28
        self.fc2 = nn.Linear(2048, num_classes)
        for layer in (self.fc1, self.fc2):
            nn.init.kaiming_uniform_(layer.weight, a=0.0, mode="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


def _half_ceil(n: int, times: int) -> int:
    for _ in range(times):
        n = (n + 1) // 2
    return n


class Conv4(nn.Module):
    """LEAF's CelebA CNN ("Conv-4"): four [3x3 conv (32), BatchNorm, max-pool, ReLU] blocks, a linear layer.

    Convolutions and pools use TensorFlow's 'same' padding as in LEAF (a pool halves
    a side rounding up, hence ``ceil_mode``). On 3x84x84 CelebA images with 2
    classes it has 31,202 parameters (four convs 896 + 3 x 9,248, four BatchNorms
    4 x 64, linear 1,152 x 2 + 2): the "31k" of PruneFL's CelebA model. PruneFL's
    PyTorch port reaches the same 6x6 map with padding 2 in the last two convs and
    leaves out the ReLUs; we follow LEAF. The linear layer's width follows the
    input size (32 x ceil(H/16) x ceil(W/16)). Initialised with torch's defaults, as
    PruneFL's Conv4 is (their ``DenseLinear`` without arguments is torch's default).
    """

    def __init__(self, num_classes: int = 2, input_shape: tuple[int, int, int] = (3, 84, 84)) -> None:
        super().__init__()
        channels, height, width = input_shape
        blocks: list[nn.Module] = []
        for i in range(4):
            blocks += [
                nn.Conv2d(channels if i == 0 else 32, 32, kernel_size=3, padding=1),
                nn.BatchNorm2d(32),
                nn.MaxPool2d(2, ceil_mode=True),
                nn.ReLU(),
            ]
        self.features = nn.Sequential(*blocks)
        self.fc = nn.Linear(32 * _half_ceil(height, 4) * _half_ceil(width, 4), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))
