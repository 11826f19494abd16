"""MNIST and Fashion-MNIST from their IDX files (LeCun et al. 1998; Xiao et al. 2017).

The IDX format: a 4-byte magic number ``0x00 0x00 <type> <ndim>`` (type 0x08 =
unsigned byte), then ``ndim`` big-endian uint32 dimensions, then the data in C
order. Images are stored as uint8 (28x28 each, 47 MB for MNIST's training set)
and scaled to [0, 1] per batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .dataset import ArrayDataset, scale_255
from .files import DataFolder, DataFormatError, KnownFile, locate_all, read_verified, require_data_dir

IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4")}
TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
IDX_FILES = [TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS]

# md5 of each file's uncompressed content. MNIST: the decompressed content of the
# published .gz files (whose own md5s, f68b3c2d..., d53e105e..., 9fb629c4...,
# ec29112d..., are LeCun's published list); Fashion-MNIST: as published with the
# data set (zalandoresearch/fashion-mnist) and used by torchvision.
MNIST_MD5 = {
    TRAIN_IMAGES: "6bbc9ace898e44ae57da46a324031adb",
    TRAIN_LABELS: "a25bea736e30d166cdddb491f175f624",
    TEST_IMAGES: "2646ac647ad5339dbf082846283269ea",
    TEST_LABELS: "27ae3e4e09519cfbb04c329615203637",
}
FASHION_MNIST_MD5 = {
    TRAIN_IMAGES: "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    TRAIN_LABELS: "9018921c3c673c538a1fc5bad174d6f9",
    TEST_IMAGES: "8181f5470baa50b63fa0f6fddb340f0a",
    TEST_LABELS: "15d484375f8d13e6eb1aabb0c3f46965",
}

MNIST_FOLDER = DataFolder("mnist", "mnist", "http://yann.lecun.com/exdb/mnist/ (or data.download = true)")
FASHION_MNIST_FOLDER = DataFolder(
    "fashion-mnist",
    "fashion-mnist",
    "https://github.com/zalandoresearch/fashion-mnist, or Debian's dataset-fashion-mnist package "
    "(data.dir = /usr/share/datasets), or data.download = true",
)


def parse_idx(content: bytes, where: str = "IDX data") -> np.ndarray:
    """Parse one IDX file's (uncompressed) content into an array of its shape."""
    if len(content) < 4 or content[0] != 0 or content[1] != 0:
        raise DataFormatError(f"{where}: not an IDX file (magic number {content[:4].hex() or 'missing'})")
    type_code, ndim = content[2], content[3]
    if type_code not in IDX_TYPES or ndim == 0:
        raise DataFormatError(f"{where}: unsupported IDX type 0x{type_code:02x} or {ndim} dimensions")
    header = 4 + 4 * ndim
    if len(content) < header:
        raise DataFormatError(f"{where}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(content, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(IDX_TYPES[type_code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(content) - header != expected:
        raise DataFormatError(
            f"{where}: {len(content) - header} data bytes, expected {expected} for shape {shape}"
        )
    return np.frombuffer(content, dtype=dtype, offset=header).reshape(shape)


def load_idx_dataset(
    name: str, directory: Path, folder: DataFolder, md5: dict[str, str], data_dir: Path | None
) -> ArrayDataset:
    """An IDX data set (images N x H x W uint8, labels N uint8) from ``directory``."""
    paths = locate_all(directory, IDX_FILES, folder)
    arrays = [
        parse_idx(
            read_verified(path, KnownFile(base, md5.get(base, ""), f"published md5 of {name}"), data_dir),
            str(path),
        )
        for base, path in zip(IDX_FILES, paths, strict=True)
    ]
    x_train, y_train, x_test, y_test = arrays
    for images, labels, split in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataFormatError(
                f"{name} {split}: images of shape {images.shape} do not match labels of shape {labels.shape}"
            )
    return ArrayDataset(
        name=name,
        x_train=torch.from_numpy(x_train.copy()).unsqueeze(1),
        y_train=torch.from_numpy(y_train.astype(np.int64)),
        x_test=torch.from_numpy(x_test.copy()).unsqueeze(1),
        y_test=torch.from_numpy(y_test.astype(np.int64)),
        num_classes=10,
        to_inputs=scale_255,
    )


def load_mnist(data_dir: Path | None) -> ArrayDataset:
    directory = require_data_dir(data_dir, MNIST_FOLDER, IDX_FILES)
    return load_idx_dataset("mnist", directory, MNIST_FOLDER, MNIST_MD5, data_dir)


def load_fashion_mnist(data_dir: Path | None) -> ArrayDataset:
    directory = require_data_dir(data_dir, FASHION_MNIST_FOLDER, IDX_FILES)
    return load_idx_dataset("fashion-mnist", directory, FASHION_MNIST_FOLDER, FASHION_MNIST_MD5, data_dir)
