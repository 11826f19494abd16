"""Centralised evaluation of the global (masked) model on the server-held test set.

The server's evaluation of round t needs nothing of round t+1, and while it runs
the clients have nothing to do: with ``evaluate.overlap`` it runs in a worker
thread of its own (torch releases the interpreter lock in its kernels) on a copy
of the round's model, while round t+1 trains, and the round's row waits for it
(:meth:`server.strategy.PruningFedAvg.end_round`). Either way the figures are the
same: the same weights, the same test batches in the same order.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from common.data import ArrayDataset, test_view
from common.layout import ModelLayout
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
        self._worker: ThreadPoolExecutor | None = None  # made on the first background evaluation

    def start(self, global_model: GlobalModel, *, background: bool) -> Future[Evaluation]:
        """Evaluate ``global_model`` as it is now: at once, or in the worker thread if ``background``.

        The model's values are copied before this returns, so the caller may change
        the model at once; one evaluation runs at a time, in the order started.
        """
        layout = global_model.layout
        floats, ints = global_model.masked_floats(), global_model.ints.copy()  # masked_floats is new
        if background:
            if self._worker is None:
                self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedprune-evaluate")
            return self._worker.submit(self._evaluate, layout, floats, ints)
        done: Future[Evaluation] = Future()
        done.set_result(self._evaluate(layout, floats, ints))
        return done

    def close(self) -> None:
        """Wait for a background evaluation still running and end the worker thread."""
        if self._worker is not None:
            self._worker.shutdown(wait=True, cancel_futures=True)
            self._worker = None

    def _evaluate(self, layout: ModelLayout, floats: np.ndarray, ints: np.ndarray) -> Evaluation:
        load_flat(self.model, layout, floats, ints)
        return evaluate(self.model, self.view, self.loss_fn)
