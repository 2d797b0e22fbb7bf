"""Fashion-MNIST IDX reader: round trips, hand-built bytes, and every corruption raising a named error."""

import gzip
import os
import struct

import numpy as np
import pytest

from harl.data.fashion_mnist import (
    CLASS_NAMES, DEFAULT_ROOT, find_fashion_mnist_files, read_fashion_mnist, read_idx, write_idx,
)
from harl.errors import IDXFormatError


def _write_split(root, split, images, labels, gz=True):
    prefix = "train" if split == "train" else "t10k"
    ext = ".gz" if gz else ""
    write_idx(os.path.join(root, f"{prefix}-images-idx3-ubyte{ext}"), images)
    write_idx(os.path.join(root, f"{prefix}-labels-idx1-ubyte{ext}"), labels)


@pytest.fixture
def fake(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = np.array([0, 1, 2, 9, 4, 5, 6], dtype=np.uint8)
    return tmp_path, images, labels


def test_class_names_are_filesystem_safe():
    assert len(CLASS_NAMES) == 10 and len(set(CLASS_NAMES)) == 10
    for name in CLASS_NAMES:
        assert name == name.strip() and "/" not in name and " " not in name and name.isascii()


def test_read_hand_built_bytes(tmp_path):
    # header written by hand, independent of write_idx
    pix = bytes((i * 7) % 256 for i in range(2 * 28 * 28))
    (tmp_path / "train-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, 2, 28, 28) + pix)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, 2) + bytes([3, 8]))
    x, y = read_fashion_mnist(str(tmp_path), "train")
    assert x.dtype == np.uint8 and x.shape == (2, 28, 28)
    assert y.dtype == np.int64 and y.tolist() == [3, 8]
    assert x[1, 0, 0] == (28 * 28 * 7) % 256 and x[0, 1, 2] == (30 * 7) % 256


@pytest.mark.parametrize("gz", [True, False])
def test_round_trip(fake, gz):
    root, images, labels = fake
    _write_split(str(root), "test", images, labels, gz=gz)
    x, y = read_fashion_mnist(str(root), "test")
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels.astype(np.int64))
    ipath, lpath = find_fashion_mnist_files(str(root), "test")
    assert ipath.endswith("t10k-images-idx3-ubyte" + (".gz" if gz else ""))


def test_torchvision_layout_found(fake):
    root, images, labels = fake
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    _write_split(str(raw), "train", images, labels, gz=False)
    x, _ = read_fashion_mnist(str(root), "train")
    assert x.shape == (7, 28, 28)


def test_missing_files_error_lists_paths(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        read_fashion_mnist(str(tmp_path), "train")
    assert str(tmp_path) in str(e.value) and "train-images-idx3-ubyte" in str(e.value)
    with pytest.raises(ValueError, match="split"):
        find_fashion_mnist_files(str(tmp_path), "val")


def test_truncated_gz_names_file(fake):
    root, images, labels = fake
    _write_split(str(root), "train", images, labels)
    path = os.path.join(root, "train-images-idx3-ubyte.gz")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(IDXFormatError) as e:
        read_fashion_mnist(str(root), "train")
    assert path in str(e.value)


def test_truncated_payload_names_file(fake):
    root, images, labels = fake
    _write_split(str(root), "train", images, labels, gz=False)
    path = os.path.join(root, "train-images-idx3-ubyte")
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-5])
    with pytest.raises(IDXFormatError, match="truncated") as e:
        read_fashion_mnist(str(root), "train")
    assert path in str(e.value)
    # a valid gzip stream whose payload is short is caught the same way
    gpath = os.path.join(root, "short.gz")
    with gzip.open(gpath, "wb") as f:
        f.write(data[:-5])
    with pytest.raises(IDXFormatError, match="truncated") as e:
        read_idx(gpath)
    assert gpath in str(e.value)


def test_trailing_bytes_bad_magic_and_corrupt_gzip(fake):
    root, images, labels = fake
    _write_split(str(root), "train", images, labels, gz=False)
    path = os.path.join(root, "train-labels-idx1-ubyte")
    data = open(path, "rb").read()
    open(path, "wb").write(data + b"\x00\x00")
    with pytest.raises(IDXFormatError, match="trailing") as e:
        read_fashion_mnist(str(root), "train")
    assert path in str(e.value)

    open(path, "wb").write(b"\x12\x34" + data[2:])
    with pytest.raises(IDXFormatError, match="magic") as e:
        read_fashion_mnist(str(root), "train")
    assert path in str(e.value)

    # labels file with the images' magic (3 dims)
    open(path, "wb").write(open(os.path.join(root, "train-images-idx3-ubyte"), "rb").read())
    with pytest.raises(IDXFormatError, match="dimensions"):
        read_fashion_mnist(str(root), "train")

    gz = os.path.join(root, "garbage.gz")
    open(gz, "wb").write(b"\x1f\x8b\x08\x00" + os.urandom(64))
    with pytest.raises(IDXFormatError) as e:
        read_idx(gz)
    assert gz in str(e.value)


def test_count_mismatch_and_label_range(fake):
    root, images, labels = fake
    _write_split(str(root), "train", images, labels[:5])
    with pytest.raises(IDXFormatError, match="5 labels"):
        read_fashion_mnist(str(root), "train")
    bad = labels.copy()
    bad[2] = 10
    _write_split(str(root), "train", images, bad)
    with pytest.raises(IDXFormatError, match="label 10"):
        read_fashion_mnist(str(root), "train")


@pytest.mark.skipif(not os.path.isdir(DEFAULT_ROOT), reason="Debian fashion-mnist package not installed")
def test_real_dataset():
    x, y = read_fashion_mnist(None, "test")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y, minlength=10).tolist() == [1000] * 10
    assert 60 < x.mean() < 90  # Fashion-MNIST test mean ≈ 72.9
