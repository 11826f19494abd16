"""Residual networks (He et al., "Deep residual learning for image recognition", CVPR 2016).

* ``resnet18``: the ImageNet ResNet-18 (BasicBlocks 2-2-2-2, widths 64-512,
  bias-free convolutions with BatchNorm, 1x1 projection shortcuts where the shape
  changes). PruneFL trains it on ImageNet-100 (11.2M parameters with 100 classes:
  11,227,812; 11,689,512 with 1,000). For inputs smaller than 64x64 the stem is
  the usual CIFAR one (a 3x3 stride-1 convolution, no max-pool; 11,173,962
  parameters with 10 classes), since a 7x7 stride-2 stem and a max-pool would
  shrink a 32x32 image to 8x8 before the first block.
* ``resnet20`` / ``resnet56``: the CIFAR networks of He et al. Sec. 4.2: a 3x3
  convolution (16), three stages of n BasicBlocks (16, 32, 64 channels, n = 3 or 9),
  global average pooling and a linear layer; shortcuts are identities, with
  stride-2 subsampling and zero-padded channels where the shape changes (option A),
  so they hold no parameters: 0.27M (269,722) and 0.85M (853,018) parameters with
  10 classes, as in the paper's Table 6. The zero channels follow the identity ones
  (:class:`PadShortcut`), as in the common reference implementations' ``F.pad`` form
  up to the order of the channels, which no layer depends on.

PruneFL never prunes ResNet's 1x1 downsample convolutions, so ``resnet18`` lists
them in ``never_pruned`` (module names, see :mod:`common.layout`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a shortcut: relu(F(x) + shortcut(x))."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: nn.Module) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PadShortcut(nn.Module):
    """He et al.'s option A: subsample by ``stride`` and append zero channels.

    Every stage of the CIFAR ResNets doubles the channels, so the shortcut is
    ``cat([x, 0 * x])`` along the channels: the identity in the first half, zeros in
    the second. Written with ``cat`` (not ``F.pad``) so that Torch-Pruning's dependency
    graph sees which output channel reads which input channel: it ties input channel c
    to output channels c and c + C_in, and a channel mask then removes all of them
    together, so the physically smaller model (:mod:`common.pruning.shrink`) computes
    what the masked one does. ``F.pad`` on the channel dimension is traced as if it kept
    the channel count, which ties the wrong channels and breaks the shrunk model.
    """

    def __init__(self, stride: int, extra_channels: int, in_channels: int) -> None:
        super().__init__()
        if extra_channels != in_channels:
            raise ValueError(
                f"option-A shortcuts here double the channels ({in_channels} -> {2 * in_channels}), "
                f"not {in_channels} -> {in_channels + extra_channels}"
            )
        self.stride = stride
        self.extra = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return torch.cat([x, x * 0], dim=1)


def _init_weights(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class ResNet18(nn.Module):
    """ResNet-18 with projection shortcuts; CIFAR stem for inputs under 64x64."""

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 32, 32)) -> None:
        super().__init__()
        channels, height, width = input_shape
        if min(height, width) < 8:
            raise ValueError(f"resnet18 needs inputs of at least 8x8 pixels, not {height}x{width}")
        imagenet_stem = min(height, width) >= 64
        if imagenet_stem:
            self.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = conv3x3(channels, 64)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(64)
        self.never_pruned: tuple[str, ...] = ()
        widths, in_channels, stages = (64, 128, 256, 512), 64, []
        for stage, width_out in enumerate(widths):
            blocks = []
            for index in range(2):
                stride = 2 if stage > 0 and index == 0 else 1
                shortcut: nn.Module = nn.Identity()
                if stride != 1 or in_channels != width_out:
                    shortcut = nn.Sequential(
                        nn.Conv2d(in_channels, width_out, kernel_size=1, stride=stride, bias=False),
                        nn.BatchNorm2d(width_out),
                    )
                    self.never_pruned += (f"layer{stage + 1}.{index}.shortcut.0",)
                blocks.append(BasicBlock(in_channels, width_out, stride, shortcut))
                in_channels = width_out
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(512, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet with 6n + 2 layers (ResNet-20: n = 3; ResNet-56: n = 9)."""

    def __init__(
        self, blocks_per_stage: int, num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 32, 32)
    ) -> None:
        super().__init__()
        channels, height, width = input_shape
        if min(height, width) < 4:
            raise ValueError(f"CIFAR ResNets need inputs of at least 4x4 pixels, not {height}x{width}")
        self.conv1 = conv3x3(channels, 16)
        self.bn1 = nn.BatchNorm2d(16)
        in_channels, stages = 16, []
        for stage, width_out in enumerate((16, 32, 64)):
            blocks = []
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                shortcut: nn.Module = nn.Identity()
                if stride != 1 or in_channels != width_out:
                    shortcut = PadShortcut(stride, width_out - in_channels, in_channels)
                blocks.append(BasicBlock(in_channels, width_out, stride, shortcut))
                in_channels = width_out
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(64, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
