"""The inputs of initial pruning, built the same way on the server and on a client."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .cost_model import CostModel
from .data import load_dataset
from .layout import ModelLayout
from .models import build_model
from .pruning import InitialData
from .task import TaskSpec, client_data
from .training import SgdSettings, load_flat, make_loss, on_device


def initial_data_for(
    spec: TaskSpec,
    num_partitions: int,
    partition_id: int,
    floats: np.ndarray,
    ints: np.ndarray,
    n_batches: int,
    batch_size: int,
    cost: CostModel,
    device: torch.device | None = None,
) -> InitialData:
    """Model and fixed batches of ``partition_id``, built the same way on either side.

    The model and the batches are put on ``device`` (default: the CPU) once, here.
    """
    data_dir = Path(spec.data_dir) if spec.data_dir else None
    dataset = load_dataset(spec.dataset, data_dir, spec.download)
    split = client_data(spec, data_dir, num_partitions, partition_id)
    model = build_model(spec.model, dataset.num_classes, dataset.input_shape)
    load_flat(model, ModelLayout.from_model(model), floats, ints)
    device = device or torch.device("cpu")
    batches = split.train.fixed_batches(n_batches, batch_size, spec.seed)
    return InitialData(
        model=model.to(device),
        batches=[on_device(batch, device) for batch in batches],
        sgd=SgdSettings(spec.lr, spec.momentum, spec.weight_decay),
        loss_fn=make_loss(spec.loss, dataset.num_classes),
        num_classes=dataset.num_classes,
        cost=cost,
    )
