"""Fashion-MNIST: a strict reader (and writer) for its IDX files.

The four files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``, each optionally ``.gz``) are looked up in a root folder; Debian's
``fashion-mnist`` package installs them at :data:`DEFAULT_ROOT`. Every structural problem (wrong
magic number, wrong dtype, truncated data, trailing bytes, a broken gzip stream, labels out of range,
image/label count mismatch) raises :class:`IDXFormatError` naming the file: a bad file is never
returned as garbage.

IDX layout (big-endian): two zero bytes, a dtype code (0x08 = uint8), the number of dimensions d,
then d uint32 sizes, then the data in C order.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from harl.errors import IDXFormatError
from harl.utils.io import atomic_write_with

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"

#: The ten classes in label order; filesystem-safe (used as ImageFolder class folder names).
CLASS_NAMES: Tuple[str, ...] = (
    "t-shirt_top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
)
NUM_CLASSES = len(CLASS_NAMES)

#: split → IDX file stem prefix
SPLIT_PREFIX: Dict[str, str] = {"train": "train", "test": "t10k", "t10k": "t10k"}
#: expected item counts of the official release (a different count is allowed, only reported)
OFFICIAL_COUNTS: Dict[str, int] = {"train": 60000, "test": 10000}

_IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09}


def _read_bytes(path: str) -> bytes:
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise
    except (EOFError, OSError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise IDXFormatError(f"{path}: cannot decompress / read ({type(err).__name__}: {err}); "
                             f"the file is truncated or corrupt") from err


def read_idx(path: str, expect_ndim: Optional[int] = None) -> np.ndarray:
    """Read one IDX file (``.gz`` or raw) into a numpy array of its native shape.

    Raises :class:`IDXFormatError` naming ``path`` on any structural problem.
    """
    data = _read_bytes(path)
    if len(data) < 4:
        raise IDXFormatError(f"{path}: {len(data)} bytes, too short for an IDX header (truncated?)")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise IDXFormatError(f"{path}: bad IDX magic number 0x{data[:4].hex()} "
                             f"(expected 0x000008{expect_ndim or 1:02x} for uint8 data); not an IDX file?")
    if expect_ndim is not None and ndim != expect_ndim:
        raise IDXFormatError(f"{path}: IDX file has {ndim} dimensions (magic 0x{data[:4].hex()}), "
                             f"expected {expect_ndim} (magic 0x000008{expect_ndim:02x})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXFormatError(f"{path}: truncated IDX header ({len(data)} of {header} bytes)")
    shape = struct.unpack(">" + "I" * ndim, data[4:header])
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    got = len(data) - header
    if got < expected:
        raise IDXFormatError(f"{path}: truncated: header says shape {tuple(shape)} = {expected} data bytes, "
                             f"file holds {got}")
    if got > expected:
        raise IDXFormatError(f"{path}: {got - expected} unexpected trailing bytes after shape {tuple(shape)} "
                             f"(corrupt or wrong header)")
    arr = np.frombuffer(data, dtype=dtype, count=int(np.prod(shape, dtype=np.int64)), offset=header)
    return arr.reshape(shape).astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str, array: np.ndarray) -> None:
    """Write ``array`` (uint8 or int8) as an IDX file, gzip-compressed when ``path`` ends in ``.gz``.

    Written atomically (:func:`harl.utils.io.atomic_write_with`, no fsync). Used to build small fixture datasets.
    """
    array = np.ascontiguousarray(array)
    if array.dtype not in _IDX_CODES:
        raise TypeError(f"write_idx supports uint8/int8 arrays, got {array.dtype}")
    header = struct.pack(">HBB", 0, _IDX_CODES[array.dtype], array.ndim)
    header += struct.pack(">" + "I" * array.ndim, *array.shape)
    payload = header + array.tobytes()

    def write(tmp: str) -> None:
        if path.endswith(".gz"):
            # mtime=0 keeps the bytes reproducible
            with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
                f.write(payload)
        else:
            with open(tmp, "wb") as f:
                f.write(payload)

    atomic_write_with(path, write, fsync=False)


def _candidate_dirs(root: str) -> Sequence[str]:
    return (root, os.path.join(root, "FashionMNIST", "raw"), os.path.join(root, "fashion-mnist"),
            os.path.join(root, "raw"))


def find_fashion_mnist_files(root: Optional[str] = None, split: str = "train") -> Tuple[str, str]:
    """Locate ``(images_path, labels_path)`` for ``split`` ∈ {train, test}.

    Looks in ``root`` (and its ``FashionMNIST/raw``, ``fashion-mnist`` and ``raw`` subfolders, which
    covers torchvision's layout); ``root=None`` uses ``$HARL_FASHION_MNIST`` if set, else
    :data:`DEFAULT_ROOT`. Both ``.gz`` and uncompressed files are accepted (uncompressed first).
    Raises ``FileNotFoundError`` listing every place tried.
    """
    if split not in SPLIT_PREFIX:
        raise ValueError(f"unknown Fashion-MNIST split '{split}'; use 'train' or 'test'")
    if root is None:
        root = os.environ.get("HARL_FASHION_MNIST") or DEFAULT_ROOT
    prefix = SPLIT_PREFIX[split]
    names = {"images": f"{prefix}-images-idx3-ubyte", "labels": f"{prefix}-labels-idx1-ubyte"}
    tried = []
    for d in _candidate_dirs(root):
        found = {}
        for kind, stem in names.items():
            for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
                p = os.path.join(d, name)
                if os.path.isfile(p):
                    found[kind] = p
                    break
            tried.append(os.path.join(d, stem + "[.gz]"))
        if len(found) == 2:
            return found["images"], found["labels"]
    raise FileNotFoundError(
        f"Fashion-MNIST '{split}' files not found under {root!r}; looked for: " + ", ".join(tried)
        + f". Install Debian's fashion-mnist package (files in {DEFAULT_ROOT}) or pass the folder "
          "holding the IDX files.")


def read_fashion_mnist(root: Optional[str] = None, split: str = "train") -> Tuple[np.ndarray, np.ndarray]:
    """Read a Fashion-MNIST split.

    Returns ``(images, labels)``: ``images`` uint8 N×28×28 (0 = background, 255 = brightest item
    pixel), ``labels`` int64 N with values in [0, 10). ``root=None`` → see
    :func:`find_fashion_mnist_files`.
    """
    img_path, lbl_path = find_fashion_mnist_files(root, split)
    images = read_idx(img_path, expect_ndim=3)
    labels = read_idx(lbl_path, expect_ndim=1)
    if images.dtype != np.uint8:
        raise IDXFormatError(f"{img_path}: expected uint8 pixels, got {images.dtype}")
    if images.shape[1:] != (28, 28):
        raise IDXFormatError(f"{img_path}: expected 28×28 images, got {images.shape[1]}×{images.shape[2]}")
    if labels.dtype != np.uint8:
        raise IDXFormatError(f"{lbl_path}: expected uint8 labels, got {labels.dtype}")
    if len(labels) != len(images):
        raise IDXFormatError(f"{lbl_path}: {len(labels)} labels but {img_path} holds {len(images)} images")
    if len(labels) and int(labels.max()) >= NUM_CLASSES:
        raise IDXFormatError(f"{lbl_path}: label {int(labels.max())} out of range [0, {NUM_CLASSES})")
    return images, labels.astype(np.int64)
