"""Centralised evaluation of the global (masked) model on the server-held test set."""

from __future__ import annotations

import torch

from common.data import ArrayDataset, test_view
from common.models import build_model
from common.training import Evaluation, evaluate, load_flat, make_loss

from .global_model import GlobalModel


class CentralEvaluator:
    """Evaluates the effective model (pruned weights zero) on a data set's test split."""

    def __init__(
        self, model_name: str, dataset: ArrayDataset, loss: str, device: torch.device | None = None
    ) -> None:
        device = device or torch.device("cpu")
        self.model = build_model(model_name, dataset.num_classes, dataset.input_shape).to(device)
        self.view = test_view(dataset).on(device)  # the test set crosses to a GPU once
        self.loss_fn = make_loss(loss, dataset.num_classes)

    def __call__(self, global_model: GlobalModel) -> Evaluation:
        load_flat(self.model, global_model.layout, global_model.masked_floats(), global_model.ints)
        return evaluate(self.model, self.view, self.loss_fn)
