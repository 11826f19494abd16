"""FEMNIST in LEAF's JSON format, with the writer of every sample (Caldas et al. 2018).

LEAF's preprocessing writes ``data/train/*.json`` and ``data/test/*.json`` (gzipped
or not), each ``{"users": [...], "num_samples": [...], "user_data": {writer:
{"x": [[784 floats]], "y": [labels]}}}``, with pixels in [0, 1] (1.0 = white
background) and 62 classes (10 digits, 26 upper-case, 26 lower-case letters).
With LEAF's ``-t sample`` split every writer has samples in both train and test.

What fedprune makes of it:

* training set: every writer's train samples, writers in file order (files sorted
  by their shard number, ``all_data_<k>_...``), then in each file's ``users`` order;
  ``writers[i]`` is the writer number of sample i (that order), which the
  ``natural`` partitioning uses;
* test set (the server's): every writer's test samples, with ``test_writers``,
  so that a client of the natural split can evaluate on its own writers' LEAF
  test samples;
* pixels are stored as LEAF holds them (1.0 = white background): back as uint8 (a
  quarter of the memory of float32) when every value is k/255, else float32;
* the model sees them **inverted**, ``1 - x`` (ink 1, background 0, unnormalised),
  scaled per batch by :func:`ink_on_black`: the orientation the PruneFL authors'
  loader feeds their LEAF Conv-2 (each image becomes ``uint8(255 * (1 - x))`` before
  ``ToTensor``; their public repository jiangyuang/PruneFL, ``bases/vision/datasets.py``,
  ``FEMNIST.__getitem__``; Jiang et al., TNNLS 2022), on which their FEMNIST figures
  were measured. Background-zero inputs also
  leave the ReLU network's first layer free of a constant full-image offset.

No checksums are published for LEAF's random samples; the files are verified
against the data folder's ``SHA256SUMS`` when it lists them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .dataset import ArrayDataset, scale_255
from .files import DataFilesMissing, DataFolder, DataFormatError, read_verified, require_data_dir

NUM_CLASSES = 62
PIXELS = 28 * 28
QUANTUM_TOLERANCE = 1e-6  # how far from k/255 a pixel may be and still count as 8-bit
FOLDER = DataFolder(
    "femnist",
    "femnist",
    "LEAF (github.com/TalwalkarLab/leaf, data/femnist: ./preprocess.sh -s niid --sf 0.05 -k 0 -t sample), "
    "copying its data/train and data/test folders to femnist/data/; or data.download = true "
    "(flwrlabs/femnist on the Hugging Face hub)",
)


@dataclass
class _Split:
    """Samples of one split, gathered writer by writer."""

    x: list[np.ndarray] = field(default_factory=list)
    y: list[np.ndarray] = field(default_factory=list)
    writers: list[np.ndarray] = field(default_factory=list)


def _shard_number(path: Path) -> tuple[int, str]:
    match = re.search(r"_(\d+)_", path.name)
    return (int(match.group(1)) if match else -1, path.name)


def split_files(directory: Path) -> list[Path]:
    """LEAF's JSON files of one split folder, in shard order."""
    files = [p for p in directory.iterdir() if p.is_file() and p.name.endswith((".json", ".json.gz"))]
    return sorted(files, key=_shard_number)


def find_split_dirs(root: Path) -> tuple[Path, Path]:
    """(train, test) folders: ``root/data/{train,test}`` or ``root/{train,test}``."""
    for base in (root / "data", root):
        train, test = base / "train", base / "test"
        if train.is_dir() and test.is_dir() and split_files(train) and split_files(test):
            return train, test
    raise DataFilesMissing(
        f"femnist: no LEAF JSON files (*.json or *.json.gz) in {root / 'data' / 'train'} and "
        f"{root / 'data' / 'test'} (or {root / 'train'} and {root / 'test'}). Get them from {FOLDER.get_from}"
    )


def parse_leaf_file(content: bytes, where: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(writer, x as N x 784 float32, y as N int64) for each user of one LEAF JSON file."""
    try:
        document = json.loads(content)
        users, counts, user_data = document["users"], document["num_samples"], document["user_data"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise DataFormatError(f"{where}: not a LEAF JSON file ({exc!r})") from exc
    if len(users) != len(counts):
        raise DataFormatError(f"{where}: {len(users)} users but {len(counts)} num_samples entries")
    out = []
    for user, count in zip(users, counts, strict=True):
        try:
            entry = user_data[user]
            x = np.asarray(entry["x"], dtype=np.float32)
            y = np.asarray(entry["y"], dtype=np.int64)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataFormatError(f"{where}: writer {user!r} has no valid x and y ({exc!r})") from exc
        if x.shape != (count, PIXELS) or y.shape != (count,):
            raise DataFormatError(
                f"{where}: writer {user!r} has x of shape {x.shape} and y of shape {y.shape}, "
                f"expected ({count}, {PIXELS}) and ({count},)"
            )
        if count and (y.min() < 0 or y.max() >= NUM_CLASSES or x.min() < 0 or x.max() > 1):
            raise DataFormatError(
                f"{where}: writer {user!r} has labels outside 0..61 or pixels outside [0, 1]"
            )
        out.append((str(user), x, y))
    return out


def _read_split(files: list[Path], codes: dict[str, int], data_dir: Path | None) -> _Split:
    split = _Split()
    for path in files:
        for user, x, y in parse_leaf_file(read_verified(path, None, data_dir), str(path)):
            code = codes.setdefault(user, len(codes))
            split.x.append(x)
            split.y.append(y)
            split.writers.append(np.full(len(y), code, dtype=np.int32))
    return split


def _as_pixels(x: np.ndarray) -> tuple[torch.Tensor, bool]:
    """N x 1 x 28 x 28 uint8 when every value is k/255, else float32; and whether 8-bit."""
    scaled = x * 255.0
    quantized = np.rint(scaled)
    if x.size == 0 or float(np.abs(scaled - quantized).max()) <= QUANTUM_TOLERANCE * 255:
        return torch.from_numpy(quantized.astype(np.uint8).reshape(-1, 1, 28, 28)), True
    return torch.from_numpy(np.ascontiguousarray(x).reshape(-1, 1, 28, 28)), False


def ink_on_black(x: torch.Tensor) -> torch.Tensor:
    """Model inputs from stored LEAF pixels (1 = background): ``1 - x`` (``1 - x / 255`` for uint8)."""
    if x.dtype == torch.uint8:
        return scale_255(x).neg_().add_(1.0)  # scale_255 returns a new tensor
    return 1.0 - x.to(torch.float32)


def load_leaf_femnist(directory: Path, data_dir: Path | None) -> ArrayDataset:
    """FEMNIST from a LEAF folder that holds ``data/train`` and ``data/test``."""
    train_dir, test_dir = find_split_dirs(directory)
    codes: dict[str, int] = {}
    train = _read_split(split_files(train_dir), codes, data_dir)
    test = _read_split(split_files(test_dir), codes, data_dir)
    if not train.y or not test.y:
        raise DataFormatError(f"femnist: {directory} holds no writers")
    x_train, train_8bit = _as_pixels(np.concatenate(train.x))
    x_test, test_8bit = _as_pixels(np.concatenate(test.x))
    if train_8bit != test_8bit:  # one representation for both splits
        x_train, x_test = (
            torch.from_numpy(np.concatenate(s.x).reshape(-1, 1, 28, 28)) for s in (train, test)
        )
    return ArrayDataset(
        name="femnist",
        x_train=x_train,
        y_train=torch.from_numpy(np.concatenate(train.y)),
        x_test=x_test,
        y_test=torch.from_numpy(np.concatenate(test.y)),
        num_classes=NUM_CLASSES,
        to_inputs=ink_on_black,
        writers=np.concatenate(train.writers),
        test_writers=np.concatenate(test.writers),
    )


def load_femnist(data_dir: Path | None) -> ArrayDataset:
    directory = require_data_dir(data_dir, FOLDER, ["data/train/*.json(.gz)", "data/test/*.json(.gz)"])
    return load_leaf_femnist(directory, data_dir)
