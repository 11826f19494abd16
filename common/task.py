"""The task a server hands a client with each message, as a validated section.

Clients take everything about a round from the message (learning rate, steps,
data set, partitioning, what to do with importance, the mask version), so that
one ClientApp serves simulations and devices alike; only the partition id and an
optional data folder come from the SuperNode's ``--node-config``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .data import ClientSplit, client_split
from .settings import ConfigError, Section
from .wire import WireFormat


@dataclass(frozen=True)
class TaskSpec(Section):
    """One round's instructions; every key must be present in the message."""

    PREFIX = ""

    server_round: int = 0
    dataset: str = ""
    data_dir: str = ""
    partitioning: str = "iid"
    alpha: float = 1.0
    classes_per_client: int = 2
    shards_per_client: int = 2
    client_test_fraction: float = 0.0
    partition_seed: int = 0
    download: bool = False
    model: str = ""
    layout: str = ""  # fingerprint of the model layout both ends must share
    lr: float = 0.0
    local_steps: int = 1
    batch_size: int = 1
    loss: str = "cross-entropy"
    momentum: float = 0.0
    weight_decay: float = 0.0
    weighting: Literal["samples-processed", "dataset-size"] = "samples-processed"
    method: str = "none"
    importance: Literal["off", "accumulate", "upload"] = "off"
    importance_scope: Literal["pruned", "all"] = "pruned"
    mask_version: int = 0
    seed: int = 0
    wire_values: Literal["float32", "float16", "bfloat16"] = "float32"
    wire_importance: Literal["float32", "bfloat16"] = "float32"
    wire_compression_level: int = 1

    @property
    def wire(self) -> WireFormat:
        """How this node writes its replies (the server's ``wire.*`` settings)."""
        return WireFormat(self.wire_values, self.wire_importance, self.wire_compression_level)

    def validate(self) -> None:
        self.require("lr", self.lr >= 0, "a learning rate >= 0")
        self.require("local_steps", self.local_steps >= 1, "an integer >= 1")
        self.require("batch_size", self.batch_size >= 1, "an integer >= 1")
        self.require("mask_version", self.mask_version >= 0, "an integer >= 0")
        level = self.wire_compression_level
        self.require("wire_compression_level", 0 <= level <= 22, "an integer in [0, 22]")

    @classmethod
    def from_message_config(cls, config: Mapping[str, object]) -> TaskSpec:
        """Parse a message's config; every task key is required."""
        missing = [key for key in cls.keys() if key not in config]
        if missing:
            raise ConfigError(missing[0], None, "a key every task message must carry")
        return cls.from_flat(config)


def client_data(spec: TaskSpec, data_dir: Path | None, num_partitions: int, partition_id: int) -> ClientSplit:
    """The training and test views of partition ``partition_id`` that ``spec`` describes."""
    return client_split(
        spec.dataset,
        data_dir,
        num_partitions,
        partition_id,
        spec.partitioning,
        spec.alpha,
        spec.partition_seed,
        spec.client_test_fraction,
        classes_per_client=spec.classes_per_client,
        shards_per_client=spec.shards_per_client,
        download=spec.download,
    )
