"""Each parser on small files written here in the published formats (always run)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from common.data import DataFilesMissing, DataFormatError, load_dataset
from common.data.cifar10 import BIN_FILES, PY_FILES, UnsafePickleError, load_cifar10, restricted_loads
from common.data.femnist import load_leaf_femnist
from common.data.files import ChecksumError
from common.data.hub import LEAF_CLASSES, HubSource, convert, writer_holdout
from common.data.idx import IDX_FILES, MNIST_FOLDER, load_idx_dataset, load_mnist, parse_idx


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write(path: Path, content: bytes, gzipped: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    target = path.with_name(path.name + ".gz") if gzipped else path
    target.write_bytes(gzip.compress(content) if gzipped else content)
    return target


@pytest.fixture
def idx_folder(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (6, 4, 3)),
        "train-labels-idx1-ubyte": np.array([0, 1, 2, 3, 4, 9]),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (2, 4, 3)),
        "t10k-labels-idx1-ubyte": np.array([7, 8]),
    }
    contents = {name: idx_bytes(a) for name, a in arrays.items()}
    for i, (name, content) in enumerate(contents.items()):
        write(tmp_path / "mnist" / name, content, gzipped=i % 2 == 0)  # both forms
    return tmp_path, arrays, {name: md5(c) for name, c in contents.items()}


def test_idx_files_gzipped_or_not_load_exactly(idx_folder):
    root, arrays, sums = idx_folder
    data = load_idx_dataset("mnist", root / "mnist", MNIST_FOLDER, sums, root)
    assert data.x_train.dtype == torch.uint8 and tuple(data.x_train.shape) == (6, 1, 4, 3)
    assert np.array_equal(data.x_train[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert data.y_train.tolist() == [0, 1, 2, 3, 4, 9] and data.y_test.tolist() == [7, 8]
    assert data.to_inputs(data.x_train[:1]).max() <= 1.0


def test_idx_checksum_mismatch_names_file_and_expected_value(idx_folder):
    root, _, sums = idx_folder
    wrong = {**sums, "t10k-labels-idx1-ubyte": "0" * 32}
    with pytest.raises(ChecksumError, match=r"t10k-labels-idx1-ubyte.*expected 0{32}"):
        load_idx_dataset("mnist", root / "mnist", MNIST_FOLDER, wrong, root)


def test_missing_files_are_named_with_where_to_get_them(tmp_path):
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(DataFilesMissing) as caught:
        load_mnist(tmp_path)
    message = str(caught.value)
    for name in IDX_FILES[1:]:
        assert name in message
    assert "yann.lecun.com" in message and str(tmp_path / "mnist") in message
    with pytest.raises(DataFilesMissing, match="data.dir"):
        load_dataset("mnist", None)


def test_idx_rejects_bad_magic_and_truncated_data():
    with pytest.raises(DataFormatError, match="not an IDX file"):
        parse_idx(b"\x1f\x8b\x08\x00rest")
    with pytest.raises(DataFormatError, match="data bytes"):
        parse_idx(idx_bytes(np.zeros((2, 2, 2)))[:-1])
    assert parse_idx(idx_bytes(np.arange(6).reshape(2, 3))).tolist() == [[0, 1, 2], [3, 4, 5]]


def cifar_records(labels: list[int], seed: int) -> tuple[bytes, np.ndarray]:
    pixels = np.random.default_rng(seed).integers(0, 256, (len(labels), 3072), dtype=np.uint8)
    records = np.concatenate([np.array(labels, dtype=np.uint8)[:, None], pixels], axis=1)
    return records.tobytes(), pixels


def test_cifar_binary_version_reads_labels_and_rgb_planes(tmp_path):
    folder = tmp_path / "cifar-10" / "cifar-10-batches-bin"
    known, pixels = {}, []
    for i, name in enumerate(BIN_FILES):
        content, p = cifar_records([i, 9 - i], seed=i)
        write(folder / name, content, gzipped=i % 2 == 1)
        known[name] = md5(content)
        pixels.append(p)
    data = load_cifar10(tmp_path, known={"bin": known})
    assert tuple(data.x_train.shape) == (10, 3, 32, 32) and tuple(data.x_test.shape) == (2, 3, 32, 32)
    assert data.y_train.tolist() == [0, 9, 1, 8, 2, 7, 3, 6, 4, 5] and data.y_test.tolist() == [5, 4]
    first = pixels[0][0]
    # byte 1 + c*1024 + r*32 + col of a record is channel c, row r, column col
    assert data.x_train[0, 0, 0, 1] == first[1] and data.x_train[0, 1, 0, 0] == first[1024]
    assert data.x_train[0, 2, 31, 31] == first[3071]
    with pytest.raises(ChecksumError, match="data_batch_3.bin"):
        load_cifar10(tmp_path, known={"bin": {**known, "data_batch_3.bin": "f" * 32}})


def python_batch(labels: list[int], seed: int, protocol: int = 2) -> tuple[bytes, np.ndarray]:
    data = np.random.default_rng(seed).integers(0, 256, (len(labels), 3072), dtype=np.uint8)
    batch = {
        b"batch_label": b"batch",
        b"labels": labels,
        b"data": data,
        b"filenames": [b"x.png"] * len(labels),
    }
    return pickle.dumps(batch, protocol=protocol), data


@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar_python_version_loads_through_the_restricted_unpickler(tmp_path, protocol):
    folder = tmp_path / "cifar-10-batches-py"  # extracted straight into the data folder
    known, first = {}, None
    for i, name in enumerate(PY_FILES):
        content, data = python_batch([i % 10, 3], seed=i, protocol=protocol)
        write(folder / name, content, gzipped=False)
        known[name] = md5(content)
        first = data if first is None else first
    loaded = load_cifar10(tmp_path, known={"py": known})
    assert tuple(loaded.x_train.shape) == (10, 3, 32, 32) and loaded.y_test.tolist() == [5, 3]
    assert np.array_equal(loaded.x_train[0].numpy().reshape(-1), first[0])


class RunsACommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_referencing_os_system_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "ran"
    payload = pickle.dumps({b"data": RunsACommand(marker)}, protocol=2)
    with pytest.raises(UnsafePickleError, match=r"refusing to load global (posix|nt|os)\.system"):
        restricted_loads(payload, "evil")
    assert not marker.exists()
    folder = tmp_path / "cifar-10" / "cifar-10-batches-py"
    for name in PY_FILES:
        write(folder / name, payload, gzipped=False)
    with pytest.raises(UnsafePickleError, match="data_batch_1"):
        load_cifar10(tmp_path, known={"py": {name: "" for name in PY_FILES}})
    assert not marker.exists()


def test_restricted_unpickler_refuses_other_builtins():
    payload = pickle.dumps(io.BytesIO, protocol=2)  # a class reference
    with pytest.raises(UnsafePickleError, match="_io.BytesIO"):
        restricted_loads(payload, "x")


def leaf_file(writers: dict[str, tuple[np.ndarray, list[int]]]) -> bytes:
    document = {
        "users": list(writers),
        "num_samples": [len(y) for _, y in writers.values()],
        "user_data": {w: {"x": x.tolist(), "y": y} for w, (x, y) in writers.items()},
    }
    return json.dumps(document).encode()


def pixels(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 784)) / 255.0


@pytest.fixture
def leaf_folder(tmp_path):
    root = tmp_path / "femnist"
    a, b, c = pixels(3, 1), pixels(2, 2), pixels(4, 3)
    # shard 10 sorts after shard 2, so writers come in the order w2, w3, w1
    write(
        root / "data" / "train" / "all_data_10_niid_0_keep_0_train_9.json",
        leaf_file({"w1": (a, [0, 61, 5])}),
        True,
    )
    write(
        root / "data" / "train" / "all_data_2_niid_0_keep_0_train_9.json",
        leaf_file({"w2": (b, [1, 1]), "w3": (c, [2, 3, 4, 60])}),
        False,
    )
    write(
        root / "data" / "test" / "all_data_2_niid_0_keep_0_test_9.json",
        leaf_file({"w3": (pixels(1, 4), [7]), "w1": (pixels(2, 5), [8, 9])}),
        True,
    )
    return tmp_path, (a, b, c)


def test_leaf_json_gives_samples_writers_and_8bit_pixels(leaf_folder):
    data_dir, (a, b, c) = leaf_folder
    data = load_leaf_femnist(data_dir / "femnist", data_dir)
    assert data.num_classes == 62 and data.x_train.dtype == torch.uint8
    assert data.y_train.tolist() == [1, 1, 2, 3, 4, 60, 0, 61, 5]
    assert data.writers.tolist() == [0, 0, 1, 1, 1, 1, 2, 2, 2]  # w2, w3, w1
    assert data.test_writers.tolist() == [1, 2, 2] and data.y_test.tolist() == [7, 8, 9]
    assert np.allclose(data.to_inputs(data.x_train[:2]).reshape(2, 784).numpy(), 1 - b, atol=1e-6)


def test_leaf_values_that_are_not_8bit_stay_float(tmp_path):
    x = np.full((2, 784), 0.3)
    write(tmp_path / "femnist" / "train" / "a.json", leaf_file({"w": (x, [1, 2])}), False)
    write(tmp_path / "femnist" / "test" / "a.json", leaf_file({"w": (x[:1], [3])}), False)
    data = load_leaf_femnist(tmp_path / "femnist", tmp_path)
    assert data.x_train.dtype == torch.float32 and float(
        data.to_inputs(data.x_train)[0, 0, 0, 0]
    ) == pytest.approx(0.7)  # inverted, as the 8-bit path
    assert float(data.x_train[0, 0, 0, 0]) == pytest.approx(0.3)  # the stored values are LEAF's


def test_leaf_pixels_reach_the_model_inverted_ink_one_background_zero(tmp_path):
    """A hand-made LEAF image: white background (1.0), a black stroke (0.0), one grey pixel."""
    image = np.ones((1, 784))  # LEAF: 1.0 = white background
    image[0, 28 * 14 : 28 * 14 + 28] = 0.0  # row 14: a horizontal black stroke
    image[0, 0] = 64 / 255  # dark grey in the top-left corner
    write(tmp_path / "femnist" / "train" / "a.json", leaf_file({"w": (image, [3])}), False)
    write(tmp_path / "femnist" / "test" / "a.json", leaf_file({"w": (image, [3])}), False)
    data = load_leaf_femnist(tmp_path / "femnist", tmp_path)
    inputs = data.to_inputs(data.x_train)
    assert inputs.dtype == torch.float32 and tuple(inputs.shape) == (1, 1, 28, 28)
    assert torch.all(inputs[0, 0, 14] == 1.0)  # ink is 1
    assert float(inputs[0, 0, 27, 27]) == 0.0 and float(inputs.sum()) == pytest.approx(28 + 191 / 255)
    assert float(inputs[0, 0, 0, 0]) == pytest.approx(1 - 64 / 255)
    assert torch.equal(data.to_inputs(data.x_test), inputs)  # the server's test set likewise
    assert int(data.x_train[0, 0, 0, 1]) == 255  # stored as LEAF holds it


def test_leaf_malformed_files_and_sha256sums(leaf_folder, tmp_path):
    data_dir, _ = leaf_folder
    test_file = next((data_dir / "femnist" / "data" / "test").iterdir())
    (data_dir / "SHA256SUMS").write_text(f"{'0' * 64}  ./femnist/data/test/{test_file.name}\n")
    with pytest.raises(ChecksumError, match=test_file.name):
        load_leaf_femnist(data_dir / "femnist", data_dir)
    bad = tmp_path / "bad" / "femnist"
    write(
        bad / "train" / "a.json",
        b'{"users": ["w"], "num_samples": [2], "user_data": {"w": {"x": [[0.5]], "y": [1]}}}',
        False,
    )
    write(bad / "test" / "a.json", leaf_file({"w": (pixels(1, 0), [1])}), False)
    with pytest.raises(DataFormatError, match="expected \\(2, 784\\)"):
        load_leaf_femnist(bad, None)
    with pytest.raises(DataFilesMissing, match="LEAF"):
        load_leaf_femnist(tmp_path / "nowhere", None)


def test_hub_copies_convert_to_the_same_arrays():
    from datasets import ClassLabel, Dataset, Features, Image, Value
    from PIL import Image as PILImage

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    names = list(reversed(LEAF_CLASSES))  # the hub's label order differs from LEAF's
    features = Features(
        {"image": Image(), "character": ClassLabel(names=names), "writer_id": Value("string")}
    )
    table = {
        "image": [PILImage.fromarray(im, mode="L") for im in images],
        "character": [0, 61, 1, 0, 61, 2],
        "writer_id": ["a", "a", "a", "b", "b", "c"],
    }
    hub = Dataset.from_dict(table, features=features)
    source = HubSource(
        "flwrlabs/femnist", label="character", writer="writer_id", test_split="", class_names=LEAF_CLASSES
    )
    data = convert("femnist", source, hub, None, 62)
    assert len(data.y_train) + len(data.y_test) == 6 and len(data.y_test) == 2  # one of a's 3, one of b's 2
    assert sorted(data.test_writers.tolist()) == [0, 1]
    everything = torch.cat([data.x_train, data.x_test])[:, 0].numpy()
    labels = torch.cat([data.y_train, data.y_test]).tolist()
    # hub label 0 is 'z' (LEAF 61), 61 is '0' (LEAF 0)
    assert sorted(labels) == sorted([61, 0, 60, 61, 0, 59])
    assert {im.tobytes() for im in everything} == {im.tobytes() for im in images}


def test_writer_holdout_keeps_every_writer_in_training():
    writers = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 2])
    test = writer_holdout(writers, 0.1, seed=0)
    assert test.sum() == 2 and test[:10].sum() == 1 and not test[10] and test[11:].sum() == 1
