"""scikit-learn's bundled handwritten digits: 1,797 8x8 images, nothing to download.

The set has no official split; we hold out a stratified 20% (360 images) as the
server's test set with a fixed seed, so every run evaluates on the same images.
"""

from __future__ import annotations

import numpy as np
import torch

from .dataset import ArrayDataset

TEST_FRACTION = 0.2
SPLIT_SEED = 0


def load_digits_dataset() -> ArrayDataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    rng = np.random.default_rng(SPLIT_SEED)
    test = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        test[rng.choice(members, size=round(len(members) * TEST_FRACTION), replace=False)] = True
    return ArrayDataset(
        name="digits",
        x_train=torch.from_numpy(x[~test]),
        y_train=torch.from_numpy(y[~test]),
        x_test=torch.from_numpy(x[test]),
        y_test=torch.from_numpy(y[test]),
        num_classes=10,
    )
