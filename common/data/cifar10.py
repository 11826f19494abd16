"""CIFAR-10 (Krizhevsky 2009), binary version or python version.

* **Binary version** (``cifar-10-batches-bin/``): ``data_batch_1.bin`` ...
  ``data_batch_5.bin`` and ``test_batch.bin``, 10,000 records of 3,073 bytes each:
  one label byte, then 3,072 pixel bytes (the red plane, the green plane, the blue
  plane, each 32x32 row-major).
* **Python version** (``cifar-10-batches-py/``): ``data_batch_1`` ... and
  ``test_batch``, each a pickle of a dict with ``data`` (a 10000 x 3072 uint8 array,
  same pixel order) and ``labels``. A pickle can run any code on loading, so these
  files are read with :class:`RestrictedUnpickler`, which builds only plain
  containers, bytes, numbers and numpy arrays and refuses every other global.

Either folder may sit in ``<data dir>/cifar-10/`` or in the data folder itself
(where the official tarballs extract); each file may be gzipped. Images are kept
as uint8 (150 MB for the training set) and standardised per batch with the
per-channel mean and standard deviation PruneFL uses (its ``bases/vision/load.py``).
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .dataset import ArrayDataset, Standardize
from .files import (
    DataFilesMissing,
    DataFolder,
    DataFormatError,
    KnownFile,
    locate,
    locate_all,
    read_verified,
    require_data_dir,
)

RECORD_BYTES = 1 + 3 * 32 * 32
IMAGE_SHAPE = (3, 32, 32)
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)
BIN_DIR = "cifar-10-batches-bin"
PY_DIR = "cifar-10-batches-py"

# md5 of the files inside the official archives: cifar-10-binary.tar.gz (archive md5
# c32a1d4ab5d03f1284b67883e8d87530) and cifar-10-python.tar.gz (archive md5
# c58f30108f718f92721af3b95e74349a, per-file values as torchvision checks them).
BIN_FILES = {
    "data_batch_1.bin": "5dd7e06a14cb22eb9f671a540d1b7c25",
    "data_batch_2.bin": "5ea93a67294ea407fff1d09f752e9692",
    "data_batch_3.bin": "942cd6a4bcdd0dd3c604fbe906cb4421",
    "data_batch_4.bin": "ae636b3ba5c66a11e91e8cb52e771fcb",
    "data_batch_5.bin": "53f37980c15c3d472c316c40844f3f0d",
    "test_batch.bin": "803d5f7f4d78ea53de84dbe85f74fb6d",
}
PY_FILES = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
FOLDER = DataFolder(
    "cifar10",
    "cifar-10",
    "https://www.cs.toronto.edu/~kriz/cifar.html (binary or python version; extract into the "
    "data folder or its cifar-10/ sub-folder), or data.download = true",
)


class UnsafePickleError(DataFormatError):
    """A pickle asked for a global the restricted unpickler does not allow."""


def _numpy_reconstruct() -> Callable:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return _reconstruct


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles of bytes use it, for latin-1 only."""
    if encoding.lower().replace("-", "") not in ("latin1", "iso88591"):
        raise UnsafePickleError(f"pickle asks to encode text as {encoding!r}; only latin-1 is allowed")
    return text.encode("latin1")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR-10's python batches hold: dicts, lists, bytes and arrays.

    ``find_class`` resolves the few globals a pickled numpy array needs
    (``_reconstruct``, ``ndarray``, ``dtype``, and ``_codecs.encode`` for bytes in
    protocol 2) to fixed objects and refuses every other global, so a file that
    references, say, ``os.system`` raises :class:`UnsafePickleError` instead of
    running it.
    """

    ALLOWED: dict[tuple[str, str], Callable[[], object]] = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        ("_codecs", "encode"): lambda: _latin1_encode,
    }

    def find_class(self, module: str, name: str) -> object:
        resolve = self.ALLOWED.get((module, name))
        if resolve is None:
            raise UnsafePickleError(
                f"refusing to load global {module}.{name} from a pickle: only numpy arrays, dicts, "
                "lists, bytes and numbers are allowed in CIFAR-10 python batches"
            )
        return resolve()


def restricted_loads(content: bytes, where: str) -> object:
    """Unpickle ``content`` with :class:`RestrictedUnpickler` (Python 2 strings as bytes)."""
    try:
        return RestrictedUnpickler(io.BytesIO(content), encoding="bytes").load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{where}: {exc}") from exc
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DataFormatError(f"{where}: not a CIFAR-10 python batch ({exc})") from exc


def parse_binary_batch(content: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(images N x 3 x 32 x 32 uint8, labels N int64) of one binary-version file."""
    if len(content) == 0 or len(content) % RECORD_BYTES:
        raise DataFormatError(f"{where}: {len(content)} bytes is not a whole number of 3,073-byte records")
    records = np.frombuffer(content, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise DataFormatError(f"{where}: label {int(labels.max())} outside 0..9")
    return records[:, 1:].reshape(-1, *IMAGE_SHAPE), labels


def parse_python_batch(content: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of one python-version file, unpickled with the restricted unpickler."""
    batch = restricted_loads(content, where)
    if not isinstance(batch, dict):
        raise DataFormatError(f"{where}: expected a dict, found {type(batch).__name__}")
    entries = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = entries.get("data"), entries.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataFormatError(f"{where}: 'data' must be an N x 3072 uint8 array")
    label_array = np.asarray(labels, dtype=np.int64)
    if label_array.shape != (len(data),) or label_array.min() < 0 or label_array.max() > 9:
        raise DataFormatError(f"{where}: 'labels' must be {len(data)} integers in 0..9")
    return data.reshape(-1, *IMAGE_SHAPE), label_array


def _batches(
    directory: Path, files: dict[str, str], parse: Callable, data_dir: Path | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    names = list(files)
    paths = locate_all(directory, names, FOLDER)
    parts = [
        parse(
            read_verified(path, KnownFile(name, files[name], "md5 in the official archive"), data_dir),
            str(path),
        )
        for name, path in zip(names, paths, strict=True)
    ]
    train, test = parts[:-1], parts[-1]
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return x_train, y_train, test[0], test[1]


def find_version(data_dir: Path) -> tuple[Path, str]:
    """The first CIFAR-10 folder present: (folder, ``"bin"`` or ``"py"``)."""
    for parent in (data_dir / FOLDER.subfolder, data_dir):
        for sub, version, files in ((BIN_DIR, "bin", BIN_FILES), (PY_DIR, "py", PY_FILES)):
            directory = parent / sub
            if directory.is_dir() and any(locate(directory, name) for name in files):
                return directory, version
    raise DataFilesMissing(
        f"cifar10: found neither {data_dir / FOLDER.subfolder / BIN_DIR} ({', '.join(BIN_FILES)}) nor "
        f"{data_dir / FOLDER.subfolder / PY_DIR} ({', '.join(PY_FILES)}), nor either folder in {data_dir}; "
        f"each file may be gzipped. Get them from {FOLDER.get_from}"
    )


def load_cifar10(data_dir: Path | None, known: dict[str, dict[str, str]] | None = None) -> ArrayDataset:
    """CIFAR-10 from the binary version if present, else the python version.

    ``known`` replaces the published md5s per version (``{"bin": {...}, "py": {...}}``),
    for tests on small files written in the same formats.
    """
    require_data_dir(data_dir, FOLDER, [f"{BIN_DIR}/ or {PY_DIR}/"])
    assert data_dir is not None
    directory, version = find_version(data_dir)
    files = (known or {}).get(version) or (BIN_FILES if version == "bin" else PY_FILES)
    parse = parse_binary_batch if version == "bin" else parse_python_batch
    x_train, y_train, x_test, y_test = _batches(directory, files, parse, data_dir)
    return ArrayDataset(
        name="cifar10",
        x_train=torch.from_numpy(np.require(x_train, requirements=["C", "W"])),
        y_train=torch.from_numpy(np.require(y_train, requirements=["C", "W"])),
        x_test=torch.from_numpy(np.require(x_test, requirements=["C", "W"])),
        y_test=torch.from_numpy(np.require(y_test, requirements=["C", "W"])),
        num_classes=10,
        to_inputs=Standardize(MEAN, STD),
    )
