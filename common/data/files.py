"""Finding, reading and verifying a data set's files in the data folder.

Every data set lives in its own sub-folder of the data folder (``data.dir`` or
``$FEDPRUNE_DATA_DIR``), with its files under their published names, gzipped or
not (``train-images-idx3-ubyte`` or ``train-images-idx3-ubyte.gz``).

Verification, in order of preference:

1. files with a **published checksum** (MNIST, Fashion-MNIST, both CIFAR-10
   versions) are checked by the md5 of their *content*, after decompression
   where the file is gzipped, so the original ``.gz`` files, re-compressed
   copies (Debian's ``dataset-fashion-mnist``, the shared folder's CIFAR-10) and
   decompressed files all verify against the same published value;
2. other files (LEAF FEMNIST, whose sample is drawn at random by LEAF's scripts
   and has no published checksum) are checked against a ``SHA256SUMS`` file
   (``sha256sum`` format) at the top of the data folder, when it lists them;
3. files with neither are read unverified, and the loader says so in the log.

A wrong checksum raises :class:`ChecksumError` naming the file and the expected
value; missing files raise :class:`DataFilesMissing` naming every file expected,
where, and where to get them. Nothing falls back to other data.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

logger = logging.getLogger("fedprune.data")

GZIP_MAGIC = b"\x1f\x8b"
SUMS_FILE = "SHA256SUMS"


class DataFilesMissing(FileNotFoundError):
    """A data set's files are not where the configuration says."""


class ChecksumError(ValueError):
    """A data file's content differs from its known checksum."""


class DataFormatError(ValueError):
    """A data file is not in the format its name says."""


@dataclass(frozen=True)
class KnownFile:
    """A file of a data set under its published name, with its published content md5.

    ``md5`` is the md5 of the file's content, uncompressed ("" when none is
    published); ``source`` says where the value comes from.
    """

    name: str
    md5: str = ""
    source: str = ""


@dataclass(frozen=True)
class DataFolder:
    """Where a data set's files are expected and where a user can get them."""

    dataset: str
    subfolder: str  # relative to the data folder
    get_from: str  # one line: where to download the files


def require_data_dir(data_dir: Path | None, folder: DataFolder, files: list[str]) -> Path:
    """The data set's folder, or :class:`DataFilesMissing` when no data folder is set."""
    if data_dir is None:
        raise DataFilesMissing(
            f"{folder.dataset}: no data folder is set; set data.dir (or $FEDPRUNE_DATA_DIR) to a folder "
            f"holding {folder.subfolder}/ with {', '.join(files)} (gzipped or not). "
            f"Get them from {folder.get_from}"
        )
    return data_dir / folder.subfolder


def locate(directory: Path, name: str) -> Path | None:
    """``directory/name``, else ``directory/name.gz``, else None."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def locate_all(directory: Path, names: list[str], folder: DataFolder) -> list[Path]:
    """Every named file (plain or gzipped), or :class:`DataFilesMissing` listing those absent."""
    found = {name: locate(directory, name) for name in names}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise DataFilesMissing(
            f"{folder.dataset}: missing in {directory}: {', '.join(missing)} (each may be gzipped, "
            f"name.gz). Expected files: {', '.join(names)}. Get them from {folder.get_from}"
        )
    return [path for path in found.values() if path is not None]


def decompressed(raw: bytes) -> bytes:
    """``raw`` gunzipped when it is gzip data (by its magic number), else as is."""
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError) as exc:
        raise DataFormatError(f"corrupt gzip data: {exc}") from exc


@lru_cache(maxsize=16)
def _sha256_sums(data_dir: Path) -> dict[Path, str]:
    """Resolved path -> sha256 of the ``SHA256SUMS`` file of ``data_dir`` (empty if none)."""
    sums_path = data_dir / SUMS_FILE
    if not sums_path.is_file():
        return {}
    sums: dict[Path, str] = {}
    for line in sums_path.read_text(encoding="utf-8").splitlines():
        digest, _, name = line.strip().partition("  ")
        if len(digest) == 64 and name:
            sums[(data_dir / name.lstrip("*")).resolve()] = digest.lower()
    return sums


def read_verified(path: Path, known: KnownFile | None, data_dir: Path | None) -> bytes:
    """The content of ``path`` (gunzipped where gzipped), verified as the module says."""
    raw = path.read_bytes()
    try:
        content = decompressed(raw)
    except DataFormatError as exc:
        raise DataFormatError(f"{path}: {exc}") from exc
    if known is not None and known.md5:
        actual = hashlib.md5(content, usedforsecurity=False).hexdigest()
        if actual != known.md5:
            raise ChecksumError(
                f"{path}: the md5 of its content is {actual}, expected {known.md5} "
                f"({known.source or 'published'} for {known.name}); the file is damaged or another file"
            )
        return content
    expected = _sha256_sums(data_dir.resolve()).get(path.resolve()) if data_dir is not None else None
    if expected is not None:
        actual = hashlib.sha256(raw).hexdigest()
        if actual != expected:
            raise ChecksumError(
                f"{path}: sha256 is {actual}, expected {expected} (listed in {data_dir / SUMS_FILE})"
            )
        return content
    logger.info("%s: no known checksum, read unverified", path)
    return content
