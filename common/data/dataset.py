"""In-memory data sets and the per-client views of them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def scale_255(x: torch.Tensor) -> torch.Tensor:
    """8-bit pixels to floats in [0, 1] (one batch at a time)."""
    return x.to(torch.float32).div_(255.0)


@dataclass(frozen=True, eq=False)
class Standardize:
    """8-bit pixels to ``(x / 255 - mean) / std`` per channel, one batch at a time."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, len(self.mean), 1, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(shape)
        return (scale_255(x) - mean) / std


@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """A whole data set held once per process; clients hold index arrays into it.

    ``x_*`` are stored compactly (uint8 where the source is 8-bit) and turned into
    float model inputs per batch by ``to_inputs``, so 100 clients on MNIST cost 100
    index arrays, not 100 copies of the images.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    to_inputs: Callable[[torch.Tensor], torch.Tensor] = field(default=_identity)
    writers: np.ndarray | None = None  # writer (natural client) of each training sample, if any
    test_writers: np.ndarray | None = None  # writer of each test sample, if any

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)


@dataclass(frozen=True, eq=False)
class DataView:
    """A subset of one split of a data set, addressed by indices."""

    x: torch.Tensor
    y: torch.Tensor
    indices: torch.Tensor
    to_inputs: Callable[[torch.Tensor], torch.Tensor]

    def __len__(self) -> int:
        return int(self.indices.numel())

    def on(self, device: torch.device) -> DataView:
        """This view's samples gathered onto ``device`` once; the view itself on the CPU.

        A round's batches are then cut on the device, so data crosses to a GPU once
        per round rather than once per step (through pinned memory, without
        blocking). The batches are the same samples in the same order: the order is
        drawn on the CPU either way.
        """
        if device.type == "cpu":
            return self
        x, y = self.x[self.indices], self.y[self.indices]
        if device.type == "cuda":
            x, y = x.pin_memory(), y.pin_memory()
        return DataView(
            x.to(device, non_blocking=True),
            y.to(device, non_blocking=True),
            torch.arange(len(self), device=device),
            self.to_inputs,
        )

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.indices[idx]
        return self.to_inputs(self.x[rows]), self.y[rows]

    def batches(self, batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless shuffled batches; a fresh permutation each pass, fixed by ``seed``."""
        if len(self) == 0:
            raise ValueError(f"cannot draw batches from an empty subset of {len(self.x)} samples")
        generator = torch.Generator().manual_seed(seed)
        while True:
            order = torch.randperm(len(self), generator=generator)
            for start in range(0, len(self), batch_size):
                yield self.batch(order[start : start + batch_size])

    def fixed_batches(self, count: int, size: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Up to ``count`` batches of ``size`` distinct samples, drawn once with ``seed``.

        PruneFL's initial pruning reuses such fixed batches in every pass. A subset
        smaller than ``count * size`` gives fewer (or smaller) batches.
        """
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        order = order[: count * size]
        return [self.batch(order[i : i + size]) for i in range(0, len(order), size)]

    def in_order(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass in index order (for evaluation)."""
        for start in range(0, len(self), batch_size):
            yield self.batch(torch.arange(start, min(start + batch_size, len(self))))


def train_view(dataset: ArrayDataset, indices: np.ndarray) -> DataView:
    return DataView(dataset.x_train, dataset.y_train, torch.as_tensor(indices), dataset.to_inputs)


def test_view(dataset: ArrayDataset, indices: np.ndarray | None = None) -> DataView:
    if indices is None:
        indices = np.arange(len(dataset.y_test))
    return DataView(dataset.x_test, dataset.y_test, torch.as_tensor(indices), dataset.to_inputs)
