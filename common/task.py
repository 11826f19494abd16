"""The task a server hands a client with each message, as a validated section.

Clients take everything about a round from the message (learning rate, steps,
data set, partitioning, the mask version; the pruning method's own entries beside
them), so that one ClientApp serves simulations and devices alike; only the
partition id and an optional data folder come from the SuperNode's
``--node-config``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .data import ClientSplit, client_split
from .settings import ConfigError, Section
from .wire import WireFormat

if TYPE_CHECKING:
    from .config import AppConfig


SOURCE = "config-key"  # field metadata: the configuration key a task field is taken from


def source(key: str) -> dict[str, str]:
    return {SOURCE: key}


@dataclass(frozen=True)
class TaskSpec(Section):
    """One round's instructions; every key must be present in the message.

    A field with a ``source`` is the configuration's value of that key
    (:meth:`for_run` derives them); ``data_dir`` and ``layout`` are the resolved data
    folder and the model layout's fingerprint; ``server_round``, ``lr`` (after its
    schedule) and ``mask_version`` change every round.
    """

    PREFIX = ""

    server_round: int = 0
    dataset: str = field(default="", metadata=source("data.dataset"))
    data_dir: str = ""
    partitioning: str = field(default="iid", metadata=source("data.partitioning"))
    alpha: float = field(default=1.0, metadata=source("data.alpha"))
    classes_per_client: int = field(default=2, metadata=source("data.classes-per-client"))
    shards_per_client: int = field(default=2, metadata=source("data.shards-per-client"))
    client_test_fraction: float = field(default=0.0, metadata=source("data.client-test-fraction"))
    partition_seed: int = field(default=0, metadata=source("federation.seed"))
    download: bool = field(default=False, metadata=source("data.download"))
    model: str = field(default="", metadata=source("model.name"))
    layout: str = ""  # fingerprint of the model layout both ends must share
    lr: float = field(default=0.0, metadata=source("train.lr"))
    local_steps: int = field(default=1, metadata=source("train.local-steps"))
    batch_size: int = field(default=1, metadata=source("train.batch-size"))
    loss: str = field(default="cross-entropy", metadata=source("train.loss"))
    momentum: float = field(default=0.0, metadata=source("train.momentum"))
    weight_decay: float = field(default=0.0, metadata=source("train.weight-decay"))
    weighting: Literal["samples-processed", "dataset-size"] = field(
        default="samples-processed", metadata=source("train.weighting")
    )
    method: str = field(default="none", metadata=source("pruning.method"))
    mask_version: int = 0
    seed: int = field(default=0, metadata=source("federation.seed"))
    wire_values: Literal["float32", "float16", "bfloat16"] = field(
        default="float32", metadata=source("wire.values")
    )
    wire_importance: Literal["float32", "bfloat16"] = field(
        default="float32", metadata=source("wire.importance")
    )
    wire_compression_level: int = field(default=1, metadata=source("wire.compression-level"))

    @classmethod
    def for_run(cls, config: AppConfig, layout_fingerprint: str) -> TaskSpec:
        """The task fields that stay the same through a run of ``config``."""
        flat = config.to_flat()
        sourced = {f.name: flat[f.metadata[SOURCE]] for f in dataclasses.fields(cls) if SOURCE in f.metadata}
        data_dir = config.data.resolved_dir()
        return cls(**sourced, data_dir=str(data_dir) if data_dir else "", layout=layout_fingerprint)  # type: ignore[arg-type]

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
