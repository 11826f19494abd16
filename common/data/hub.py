"""Fetching a data set from the Hugging Face hub when its files are missing (``data.download``).

Only with ``data.download = true`` and only for a data set whose files are not in
the data folder: the hub copy is loaded with ``datasets.load_dataset`` (the
library flwr-datasets builds on; cached under ``<data dir>/huggingface`` so a
second run reads the cache) and converted to the same in-memory arrays as the
local loaders produce. Hub copies have no published checksum of their content;
the hub's own file hashes are all that protects them, and the log says which
repository was read. Nothing here runs unless asked, and a failed fetch is an
error, never a silent switch to other data.

FEMNIST on the hub (``flwrlabs/femnist``) is the *full* data set (every writer,
not LEAF's 5% sample) with no test split: fedprune holds out 10% of each writer's
samples as LEAF's ``-t sample --tf 0.9`` does (fixed seed), so the natural
partitioning and per-writer test sets work as on LEAF's files.
"""

from __future__ import annotations

import logging
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .dataset import ArrayDataset, Standardize, scale_255
from .femnist import ink_on_black
from .files import DataFilesMissing, DataFormatError

logger = logging.getLogger("fedprune.data")

# FEMNIST's 62 classes in LEAF's label order: digits, upper case, lower case.
LEAF_CLASSES = tuple(string.digits + string.ascii_uppercase + string.ascii_lowercase)
WRITER_TEST_FRACTION = 0.1
HOLDOUT_SEED = 0


@dataclass(frozen=True)
class HubSource:
    """A data set's repository on the hub and the columns fedprune reads."""

    repo: str
    image: str = "image"
    label: str = "label"
    writer: str = ""  # column naming each sample's writer, if any
    test_split: str = "test"  # "" = none on the hub: hold out a share of each writer's samples
    class_names: tuple[str, ...] = ()  # label order fedprune uses, when the hub's may differ


HUB_SOURCES: dict[str, HubSource] = {
    "mnist": HubSource("ylecun/mnist"),
    "fashion-mnist": HubSource("zalando-datasets/fashion_mnist"),
    "cifar10": HubSource("uoft-cs/cifar10", image="img"),
    "femnist": HubSource(
        "flwrlabs/femnist", label="character", writer="writer_id", test_split="", class_names=LEAF_CLASSES
    ),
}
# The hub's FEMNIST images are LEAF's (white background), fed inverted as the LEAF loader's.
INPUTS = {
    "cifar10": Standardize((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "femnist": ink_on_black,
}


def images_to_array(images: list) -> np.ndarray:
    """Decoded images (PIL or arrays, H x W or H x W x C) as N x C x H x W uint8."""
    array = np.stack([np.asarray(image, dtype=np.uint8) for image in images])
    if array.ndim == 3:
        return array[:, None, :, :]
    return np.ascontiguousarray(array.transpose(0, 3, 1, 2))


def label_mapping(features: object, column: str, class_names: tuple[str, ...]) -> np.ndarray | None:
    """Hub label id -> fedprune label id when the hub's class names are in another order."""
    names = getattr(getattr(features, "get", lambda _key: None)(column), "names", None)
    if not class_names or names is None or tuple(names) == class_names:
        return None
    missing = sorted(set(class_names) - set(names))
    if missing or len(names) != len(class_names):
        raise DataFormatError(
            f"hub labels {names[:5]}... do not match the expected classes {class_names[:5]}..."
        )
    return np.array([class_names.index(name) for name in names], dtype=np.int64)


def writer_codes(writers: list) -> np.ndarray:
    """Writer names as numbers in order of first appearance."""
    codes: dict[object, int] = {}
    return np.array([codes.setdefault(w, len(codes)) for w in writers], dtype=np.int32)


def writer_holdout(writers: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A test mask holding out ``round(fraction * n)`` of each writer's n samples (0 if n < 2)."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(writers), dtype=bool)
    order = np.argsort(writers, kind="stable")
    bounds = np.flatnonzero(np.diff(writers[order])) + 1
    for members in np.split(order, bounds):
        if len(members) >= 2:
            count = max(1, round(len(members) * fraction))
            test[rng.choice(members, size=count, replace=False)] = True
    return test


def convert(
    name: str, source: HubSource, train: object, test: object | None, num_classes: int
) -> ArrayDataset:
    """An :class:`ArrayDataset` from hub splits (``datasets.Dataset`` objects)."""
    mapping = label_mapping(getattr(train, "features", {}), source.label, source.class_names)

    def arrays(split: object) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        x = images_to_array(split[source.image])  # type: ignore[index]
        y = np.asarray(split[source.label], dtype=np.int64)  # type: ignore[index]
        if mapping is not None:
            y = mapping[y]
        writers = writer_codes(split[source.writer]) if source.writer else None  # type: ignore[index]
        return x, y, writers

    x_train, y_train, writers = arrays(train)
    if test is not None:
        x_test, y_test, test_writers = arrays(test)
    else:
        if writers is None:
            raise DataFormatError(f"{name}: the hub copy has no test split and no writers to hold out from")
        held = writer_holdout(writers, WRITER_TEST_FRACTION, HOLDOUT_SEED)
        x_test, y_test, test_writers = x_train[held], y_train[held], writers[held]
        x_train, y_train, writers = x_train[~held], y_train[~held], writers[~held]
    for labels in (y_train, y_test):
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataFormatError(f"{name}: hub labels outside 0..{num_classes - 1}")
    return ArrayDataset(
        name=name,
        x_train=torch.from_numpy(np.ascontiguousarray(x_train)),
        y_train=torch.from_numpy(y_train),
        x_test=torch.from_numpy(np.ascontiguousarray(x_test)),
        y_test=torch.from_numpy(y_test),
        num_classes=num_classes,
        to_inputs=INPUTS.get(name, scale_255),
        writers=writers,
        test_writers=test_writers,
    )


def fetch(name: str, data_dir: Path | None, num_classes: int, missing: DataFilesMissing) -> ArrayDataset:
    """Load ``name`` from the hub (``missing`` is the local loader's error, kept in the message)."""
    source = HUB_SOURCES.get(name)
    if source is None:
        raise DataFilesMissing(f"{missing}; {name} has no hub source, so data.download cannot fetch it")
    try:
        from datasets import load_dataset

        cache = str(data_dir / "huggingface") if data_dir is not None else None
        splits = load_dataset(source.repo, cache_dir=cache)
        logger.info("%s: read from the Hugging Face hub repository %s (cache %s)", name, source.repo, cache)
    except Exception as exc:  # noqa: BLE001 - network, hub and cache errors all mean "not fetched"
        raise DataFilesMissing(
            f"{missing}; fetching {source.repo} from the Hugging Face hub (data.download) failed: {exc}"
        ) from exc
    test = splits[source.test_split] if source.test_split else None
    return convert(name, source, splits["train"], test, num_classes)
