"""Shared fixtures: tiny models and layouts with hand-checkable sizes."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from flwr.supercore.task_identity import TaskIdentity
from torch import nn

from common.layout import ModelLayout


class TinyNet(nn.Module):
    """fc1: 3x4 (12 prunable weights) + bias 3; fc2: 2x3 (6) + bias 2; 23 floats."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 3)
        self.fc2 = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class TinyBatchNormNet(nn.Module):
    """A conv, a BatchNorm (with an integer buffer) and a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


@pytest.fixture
def tiny() -> tuple[TinyNet, ModelLayout]:
    torch.manual_seed(0)
    model = TinyNet()
    return model, ModelLayout.from_model(model)


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread() -> None:
    """The test models are tiny: one intra-op thread is as fast on an idle machine and many
    times faster on a loaded, shared one (torch's thread pool spins while it waits)."""
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def quiet_flower() -> None:
    logging.getLogger("flwr").setLevel(logging.WARNING)


@pytest.fixture(autouse=True)
def flower_task_identity() -> None:
    """Messages built outside Flower's runtime need a task identity."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 1, 1


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: on a shared 2-core machine a second one mostly spins (3x the CPU time)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def warnings_logged():
    """Messages Flower's logger emits at WARNING or above during the test."""
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    logging.getLogger("flwr").addHandler(handler)
    yield records
    logging.getLogger("flwr").removeHandler(handler)
