"""Image / mask reading, folder listing and the stratified fraction (harl.data.image_io, sources)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from harl.data import list_image_folder, read_image, read_mask, stratified_subset
from harl.errors import CorruptImageError, DatasetNotFoundError


def _save(arr, path, mode=None, **kw):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = Image.fromarray(arr, mode) if mode else Image.fromarray(arr)
    img.save(path, **kw)
    return path


# ------------------------------------------------------------------------------ read_image


def test_rgb_png_round_trip(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    img = read_image(_save(arr, str(tmp_path / "a.png")))
    assert img.mode == "RGB" and img.size == (9, 7)
    np.testing.assert_array_equal(np.asarray(img), arr)


def test_rgba_drops_alpha(tmp_path):
    arr = np.random.default_rng(1).integers(0, 256, (5, 6, 4), dtype=np.uint8)
    img = read_image(_save(arr, str(tmp_path / "a.png"), "RGBA"))
    assert img.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(img), arr[..., :3])


def test_grayscale_replicated(tmp_path):
    arr = np.arange(20, dtype=np.uint8).reshape(4, 5) * 12
    img = read_image(_save(arr, str(tmp_path / "g.png"), "L"))
    out = np.asarray(img)
    assert out.shape == (4, 5, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], arr)


def test_palette_with_transparency(tmp_path):
    pal = Image.new("P", (4, 3))
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    pal.putdata([0, 1, 2, 1] * 3)
    pal.info["transparency"] = 0
    p = str(tmp_path / "p.png")
    pal.save(p, transparency=0)
    out = np.asarray(read_image(p))
    assert out.shape == (3, 4, 3)
    np.testing.assert_array_equal(out[0, 1], [255, 0, 0])
    np.testing.assert_array_equal(out[0, 2], [0, 255, 0])


def test_16bit_grayscale_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 257, 32896], [65535, 1000, 514]], dtype=np.uint16)
    p = _save(arr, str(tmp_path / "d.png"))
    assert Image.open(p).mode in ("I;16", "I")
    out = np.asarray(read_image(p))[..., 0]
    np.testing.assert_array_equal(out, np.round(arr / 257.0).astype(np.uint8))


def test_32bit_int_and_float(tmp_path):
    arr = np.array([[0, 30000], [65535, 100]], dtype=np.int32)
    p = _save(arr, str(tmp_path / "i.tif"))
    out = np.asarray(read_image(p))[..., 0]
    np.testing.assert_array_equal(out, np.round(arr / 257.0).astype(np.uint8))
    f = np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32)
    p = _save(f, str(tmp_path / "f.tif"), "F")
    out = np.asarray(read_image(p))[..., 0]
    np.testing.assert_array_equal(out, [[0, 128], [255, 64]])


def test_truncated_and_garbage_files_name_the_file(tmp_path):
    arr = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for ext in ("png", "jpg"):
        p = _save(arr, str(tmp_path / f"ok.{ext}"))
        data = open(p, "rb").read()
        bad = str(tmp_path / f"trunc.{ext}")
        open(bad, "wb").write(data[: len(data) // 2])
        with pytest.raises(CorruptImageError) as ei:
            read_image(bad)
        assert bad in str(ei.value) and ei.value.path == bad
    junk = str(tmp_path / "junk.png")
    open(junk, "wb").write(b"this is not an image")
    with pytest.raises(CorruptImageError, match="junk.png"):
        read_image(junk)
    with pytest.raises(CorruptImageError, match="junk.png"):
        read_mask(junk)


def test_corrupt_error_survives_pickling(tmp_path):
    import pickle

    err = CorruptImageError(str(tmp_path / "x.png"), "boom")
    back = pickle.loads(pickle.dumps(err))
    assert back.path == err.path and str(back) == str(err)


# ------------------------------------------------------------------------------ read_mask


def test_mask_threshold_is_value_gt_zero(tmp_path):
    arr = np.array([[0, 1, 255], [128, 0, 2]], dtype=np.uint8)
    m = read_mask(_save(arr, str(tmp_path / "m.png"), "L"))
    assert m.dtype == np.uint8
    np.testing.assert_array_equal(m, (arr > 0).astype(np.uint8))


def test_colour_mask_any_channel_and_alpha_ignored(tmp_path):
    arr = np.zeros((2, 3, 4), dtype=np.uint8)
    arr[0, 0, 2] = 1  # blue only: fg
    arr[1, 2, 3] = 255  # alpha only: bg
    arr[..., 3] = 255
    m = read_mask(_save(arr, str(tmp_path / "m.png"), "RGBA"))
    np.testing.assert_array_equal(m, [[1, 0, 0], [0, 0, 0]])


def test_palette_and_16bit_masks(tmp_path):
    pal = Image.new("P", (3, 1))
    pal.putpalette([0, 0, 0] * 256)  # every index black: the index decides, not the colour
    pal.putdata([0, 5, 255])
    p = str(tmp_path / "p.png")
    pal.save(p)
    np.testing.assert_array_equal(read_mask(p), [[0, 1, 1]])
    m16 = np.array([[0, 1, 60000]], dtype=np.uint16)
    np.testing.assert_array_equal(read_mask(_save(m16, str(tmp_path / "d.png"))), [[0, 1, 1]])


def test_missing_mask_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_mask(str(tmp_path / "nope.png"))


# ------------------------------------------------------------------------------ folder listing


def _tree(root, spec, size=(6, 5)):
    for rel in spec:
        _save(np.zeros((size[1], size[0], 3), np.uint8), os.path.join(root, rel))


def test_image_folder_order_matches_torchvision(tmp_path):
    from torchvision.datasets import ImageFolder

    root = str(tmp_path / "tree")
    _tree(root, ["b/x2.png", "b/x1.jpg", "a/z.png", "a/sub/y.png", "c/q.JPEG"])
    (tmp_path / "tree" / "a" / "notes.txt").write_text("not an image")
    src = list_image_folder(root)
    ref = ImageFolder(root)
    assert src.classes == ref.classes
    assert [src.path(i) for i in range(len(src))] == [p for p, _ in ref.samples]
    assert src.targets.tolist() == [t for _, t in ref.samples]
    assert src.mask_relpath(1, ".png") == os.path.join("a", "sub", "y.png")
    assert src.mask_relpath(len(src) - 1, ".png") == os.path.join("c", "q.png")


def test_flat_folder_unlabeled_recursive(tmp_path):
    root = str(tmp_path / "flat")
    _tree(root, ["1.png", "deep/er/2.jpg", "3.bmp"])
    src = list_image_folder(root, labeled=False)
    assert len(src) == 3 and set(src.targets.tolist()) == {-1}


def test_listing_errors_name_the_path(tmp_path):
    missing = str(tmp_path / "missing")
    with pytest.raises(DatasetNotFoundError, match="missing.*does not exist"):
        list_image_folder(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetNotFoundError, match=f"'{empty}' is empty"):
        list_image_folder(str(empty))
    with pytest.raises(DatasetNotFoundError, match="contains no images"):
        list_image_folder(str(empty), labeled=False)
    flat = str(tmp_path / "flat")
    _tree(flat, ["1.png", "2.png"])
    with pytest.raises(DatasetNotFoundError, match="no_labels=true"):
        list_image_folder(flat)
    noimg = tmp_path / "noimg"
    (noimg / "cls").mkdir(parents=True)
    (noimg / "cls" / "readme.txt").write_text("x")
    with pytest.raises(DatasetNotFoundError, match="contains no images"):
        list_image_folder(str(noimg))
    part = str(tmp_path / "part")
    _tree(part, ["a/1.png"])
    os.makedirs(os.path.join(part, "b"))
    with pytest.raises(DatasetNotFoundError, match=r"without images: '.*part/b'"):
        list_image_folder(part)
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(DatasetNotFoundError, match="not a directory"):
        list_image_folder(str(f))


# ------------------------------------------------------------------------------ stratified fraction


def test_stratified_subset_deterministic_and_balanced():
    rng = np.random.default_rng(0)
    targets = np.repeat(np.arange(7), [50, 13, 200, 1, 77, 30, 29])
    rng.shuffle(targets)
    n = len(targets)
    for frac in (0.01, 0.1, 0.33, 0.5, 0.9):
        idx = stratified_subset(targets, frac)
        assert np.array_equal(idx, stratified_subset(targets, frac))  # deterministic
        assert len(idx) == max(1, int(np.floor(frac * n)))
        assert len(np.unique(idx)) == len(idx) and np.all(np.diff(idx) > 0)
        sub = np.bincount(targets[idx], minlength=7)
        full = np.bincount(targets, minlength=7)
        assert np.all(np.abs(sub - frac * full) < 1.0 + 1e-9), (frac, sub, frac * full)
    assert not np.array_equal(stratified_subset(targets, 0.3), stratified_subset(targets, 0.3, seed=1))


def test_stratified_subset_does_not_touch_global_rng():
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    stratified_subset(np.arange(100) % 3, 0.5)
    assert np.random.rand() == expected


def test_stratified_subset_unlabeled_and_bad_fraction():
    idx = stratified_subset(np.full(40, -1), 0.25)
    assert len(idx) == 10
    for bad in (0.0, 1.0, 1.5, -1):
        with pytest.raises(ValueError):
            stratified_subset(np.zeros(10), bad)


def test_misnamed_extension_still_read(tmp_path):
    arr = np.random.default_rng(3).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    p = str(tmp_path / "really_a_png.jpg")
    Image.fromarray(arr).save(p, format="PNG")
    np.testing.assert_array_equal(np.asarray(read_image(p)), arr)
