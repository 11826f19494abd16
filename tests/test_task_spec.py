"""The task a client receives is derived from the configuration, field by field."""

from __future__ import annotations

import dataclasses

from common.config import load_config
from common.task import SOURCE, TaskSpec


def test_every_sourced_task_field_is_the_configurations_value():
    config = load_config(
        None,
        [
            "data.partitioning=dirichlet",
            "data.alpha=0.3",
            "train.lr=0.05",
            "train.local-steps=7",
            "train.momentum=0.5",
            "federation.seed=11",
            "wire.values=bfloat16",
            "wire.compression-level=3",
            "pruning.method=magnitude",
        ],
    )
    task = TaskSpec.for_run(config, "fingerprint")
    flat = config.to_flat()
    sourced = [f for f in dataclasses.fields(TaskSpec) if SOURCE in f.metadata]
    assert len(sourced) == 21
    for f in sourced:
        assert getattr(task, f.name) == flat[f.metadata[SOURCE]], f.name
    assert (task.alpha, task.local_steps, task.momentum, task.seed, task.partition_seed) == (
        0.3,
        7,
        0.5,
        11,
        11,
    )
    assert task.layout == "fingerprint" and task.server_round == 0 and task.mask_version == 0
    assert task.wire == config.wire.format()
