"""Datasets and builders from a config: batch structure, mask pairing policies, corrupt files,
start-up errors, torchvision / Fashion-MNIST / fashion-scenes sources."""

from __future__ import annotations

import os
import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from harl.config import parse_cfg
from harl.errors import ConfigError
from harl.data import (
    ArraySource, MaskReader, SubsetSource, build_classification_dataset, build_pretrain_dataset,
    build_pretrain_loader, build_val_dataset, build_val_loader, dataset_stats, report_skipped,
)
from harl.errors import CorruptImageError, DatasetNotFoundError, MaskSizeMismatchError, MissingMaskError
from harl.data.datasets import PretrainDataset

FMNIST = "/usr/share/datasets/fashion-mnist"


def make_tree(root, classes=("cat", "dog"), per_class=6, size=(40, 36), masks=True, ext="png"):
    """ImageFolder tree under root/images with a mirror masks tree under root/masks."""
    rng = np.random.default_rng(0)
    for c in classes:
        for k in range(per_class):
            arr = rng.integers(0, 256, (size[1], size[0], 3)).astype(np.uint8)
            p = os.path.join(root, "images", c, f"{k}.{ext}")
            os.makedirs(os.path.dirname(p), exist_ok=True)
            Image.fromarray(arr).save(p)
            if masks:
                m = np.zeros((size[1], size[0]), np.uint8)
                m[5:25, 8:30] = 255
                mp = os.path.join(root, "masks", c, f"{k}.png")
                os.makedirs(os.path.dirname(mp), exist_ok=True)
                Image.fromarray(m).save(mp)
    return os.path.join(root, "images"), os.path.join(root, "masks")


def cfg_for(make_cfg, train_path, masks_root=None, **over):
    kw = {"data.dataset": "custom", "data.train_path": train_path, "optimizer.batch_size": 4,
          "augmentations": [{"crop_size": 32, "num_crops": 1, "color_jitter": {"prob": 0.8, "brightness": 0.4,
                                                                                 "contrast": 0.4, "saturation": 0.2,
                                                                                 "hue": 0.1}},
                            {"crop_size": 32, "num_crops": 1, "solarization": {"prob": 0.2}}]}
    if masks_root is not None:
        kw.update({"data.masks": {"enabled": True, "root": masks_root}})
    kw.update(over)
    return parse_cfg(make_cfg("byol", **kw))


# ------------------------------------------------------------------------------ batch structure


def test_collated_batch_with_masks(tmp_path, make_cfg):
    images, masks = make_tree(str(tmp_path))
    cfg = cfg_for(make_cfg, images, masks)
    ds = build_pretrain_dataset(cfg)
    assert len(ds) == 12 and ds.with_masks
    batch = next(iter(build_pretrain_loader(cfg, ds)))
    assert len(batch) == 4
    idx, views, targets, extras = batch
    assert idx.dtype == torch.int64 and idx.shape == (4,)
    assert targets.dtype == torch.int64 and targets.shape == (4,)
    assert isinstance(views, list) and len(views) == 2
    assert all(v.dtype == torch.float32 and v.shape == (4, 3, 32, 32) for v in views)
    assert set(extras) == {"masks", "coords"}
    assert len(extras["masks"]) == 2 and len(extras["coords"]) == 2
    for m, c in zip(extras["masks"], extras["coords"]):
        assert m.dtype == torch.uint8 and m.shape == (4, 1, 32, 32) and set(m.unique().tolist()) <= {0, 1}
        assert c.dtype == torch.float32 and c.shape == (4, 4)
    # targets are the class folder indices of the returned indexes
    assert targets.tolist() == [int(ds.targets[i]) for i in idx.tolist()]


def test_collated_batch_without_masks_and_crop_order(tmp_path, make_cfg):
    images, _ = make_tree(str(tmp_path), masks=False)
    cfg = cfg_for(make_cfg, images, augmentations=[{"crop_size": 32, "num_crops": 2},
                                                   {"crop_size": 16, "num_crops": 3}])
    ds = build_pretrain_dataset(cfg)
    loader = build_pretrain_loader(cfg, ds)
    assert loader.drop_last and loader.batch_size == 4 and not loader.persistent_workers
    assert loader.pin_memory == torch.cuda.is_available()
    batch = next(iter(loader))
    assert len(batch) == 3
    assert [v.shape[-1] for v in batch[1]] == [32, 32, 16, 16, 16]


def test_mask_view_follows_the_file(tmp_path, make_cfg):
    """With a full-image crop (rrc disabled) the view's mask is exactly the file's mask."""
    images, masks = make_tree(str(tmp_path), size=(32, 32))
    cfg = cfg_for(make_cfg, images, masks, augmentations=[
        {"crop_size": 32, "num_crops": 1, "rrc": {"enabled": False}, "horizontal_flip": {"prob": 0.0}}])
    _, _, _, extras = build_pretrain_dataset(cfg)[3]
    expected = np.zeros((32, 32), np.uint8)
    expected[5:25, 8:30] = 1
    np.testing.assert_array_equal(extras["masks"][0][0].numpy(), expected)


def test_mean_std_per_dataset_and_override(make_cfg, tmp_path):
    assert dataset_stats("cifar10") == ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    assert dataset_stats("cifar100") == ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
    assert dataset_stats("stl10") == ((0.4914, 0.4823, 0.4466), (0.247, 0.243, 0.261))
    assert dataset_stats("imagenet") == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    from harl.data.fashion_scenes import SCENES_MEAN, SCENES_STD

    assert dataset_stats("fashion_scenes") == (tuple(SCENES_MEAN), tuple(SCENES_STD))
    assert dataset_stats("cifar10", {"mean": [0.5] * 3, "std": None}) == ((0.5,) * 3, (0.2470, 0.2435, 0.2616))
    images, _ = make_tree(str(tmp_path), masks=False)
    cfg = cfg_for(make_cfg, images, augmentations=[{"crop_size": 32, "num_crops": 2, "mean": [0.1, 0.2, 0.3]}])
    ds = build_pretrain_dataset(cfg)
    assert ds.transform.pipelines[0].mean == (0.1, 0.2, 0.3)
    assert ds.transform.pipelines[0].std == (0.229, 0.224, 0.225)


def test_small_images_flags():
    from harl.data import DATASETS

    small = {n for n in DATASETS.names() if DATASETS.get(n).small_images}
    assert small == {"cifar10", "cifar100", "fashion_mnist", "fashion_scenes"}


# ------------------------------------------------------------------------------ mask pairing policies


def test_missing_mask_policies(tmp_path, make_cfg):
    images, masks = make_tree(str(tmp_path))
    gone = os.path.join(masks, "dog", "2.png")
    os.remove(gone)
    cfg = cfg_for(make_cfg, images, masks)
    ds = build_pretrain_dataset(cfg)  # lazily checked: building succeeds
    i = 6 + 2  # dog/2.png
    with pytest.raises(MissingMaskError) as ei:
        ds[i]
    assert gone in str(ei.value) and os.path.join(images, "dog", "2.png") in str(ei.value)
    for policy, value in (("ones", 1), ("zeros", 0)):
        cfg = cfg_for(make_cfg, images, None, **{"data.masks": {"enabled": True, "root": masks,
                                                                 "on_missing": policy}})
        ds = build_pretrain_dataset(cfg)
        with pytest.warns(UserWarning, match="not found"):
            _, _, mask, _ = ds.load(i)
        assert mask.shape == (36, 40) and np.all(mask == value)
        _, _, mask, _ = ds.load(0)  # the others are untouched
        assert mask.sum() == 20 * 22


def test_size_mismatch_policies(tmp_path, make_cfg):
    images, masks = make_tree(str(tmp_path))
    bad = os.path.join(masks, "cat", "1.png")
    m = np.zeros((18, 20), np.uint8)
    m[:9] = 255
    Image.fromarray(m).save(bad)
    ds = build_pretrain_dataset(cfg_for(make_cfg, images, masks))
    with pytest.raises(MaskSizeMismatchError) as ei:
        ds[1]
    msg = str(ei.value)
    assert bad in msg and "20×18" in msg and "40×36" in msg
    cfg = cfg_for(make_cfg, images, None, **{"data.masks": {"enabled": True, "root": masks,
                                                             "on_size_mismatch": "resize"}})
    ds = build_pretrain_dataset(cfg)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        _, _, mask, _ = ds.load(1)
        ds.load(1)
    assert sum("resizing masks" in str(w.message) for w in rec) == 1  # warned once
    assert mask.shape == (36, 40) and mask[:18].all() and not mask[18:].any()


def test_masks_root_errors(tmp_path, make_cfg):
    images, masks = make_tree(str(tmp_path))
    with pytest.raises(ConfigError, match="data.masks.root is not set"):
        build_pretrain_dataset(cfg_for(make_cfg, images, None, **{"data.masks": {"enabled": True}}))
    with pytest.raises(DatasetNotFoundError, match="nowhere"):
        build_pretrain_dataset(cfg_for(make_cfg, images, str(tmp_path / "nowhere")))
    (tmp_path / "emptymasks").mkdir()
    with pytest.raises(DatasetNotFoundError, match="emptymasks.*empty"):
        build_pretrain_dataset(cfg_for(make_cfg, images, str(tmp_path / "emptymasks")))


def test_index_addressed_masks_keep_full_set_index(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (10, 8, 8, 3)).astype(np.uint8)
    src = ArraySource("toy/train", imgs, np.arange(10) % 2)
    mdir = tmp_path / "m"
    mdir.mkdir()
    for i in range(10):
        Image.fromarray(np.full((8, 8), 255 * (i % 3 == 0), np.uint8)).save(mdir / f"{i:06d}.png")
    reader = MaskReader(str(mdir))
    assert reader.path(src, 7).endswith("000007.png")
    sub = SubsetSource(src, [3, 4])
    assert reader.path(sub, 0).endswith("000003.png")
    assert reader(sub, 0, (8, 8)).all() and not reader(sub, 1, (8, 8)).any()
    with pytest.raises(MissingMaskError, match=r"toy/train\[3\]"):
        MaskReader(str(mdir), suffix=".bmp")(sub, 0, (8, 8))


# ------------------------------------------------------------------------------ corrupt files


def _corrupt(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 3])


def test_corrupt_image_error_names_file(tmp_path, make_cfg):
    images, _ = make_tree(str(tmp_path), masks=False)
    bad = os.path.join(images, "cat", "3.png")
    _corrupt(bad)
    cfg = cfg_for(make_cfg, images)
    ds = build_pretrain_dataset(cfg)
    with pytest.raises(CorruptImageError, match="cat/3.png"):
        ds[3]
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    with pytest.raises(CorruptImageError, match="cat/3.png"):
        for _ in loader:
            pass


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_image_skipped_counted_and_reported(tmp_path, make_cfg, workers):
    images, masks = make_tree(str(tmp_path))
    bad = os.path.join(images, "cat", "3.png")
    _corrupt(bad)
    cfg = cfg_for(make_cfg, images, masks, **{"data.skip_corrupt": True, "data.num_workers": workers})
    ds = build_pretrain_dataset(cfg)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers, shuffle=False)
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for batch in loader:
            seen.extend(batch[0].tolist())
    # item 3 was replaced deterministically by the next readable one (4)
    assert seen == [0, 1, 2, 4, 4, 5, 6, 7, 8, 9, 10, 11]
    assert ds.num_skipped == 1  # visible in the main process even when workers skipped it
    assert ds.skipped_files() == [bad]
    with pytest.warns(UserWarning, match="cat/3.png"):
        assert report_skipped(ds) == 1


def test_skip_warns_with_file_name(tmp_path, make_cfg):
    images, _ = make_tree(str(tmp_path), masks=False)
    bad = os.path.join(images, "dog", "5.png")
    _corrupt(bad)
    ds = build_pretrain_dataset(cfg_for(make_cfg, images, **{"data.skip_corrupt": True}))
    with pytest.warns(UserWarning, match="dog/5.png"):
        j, *_ = ds.load(11)
    assert j == 0  # wraps around cyclically


def test_corrupt_mask_is_skippable_too(tmp_path, make_cfg):
    images, masks = make_tree(str(tmp_path))
    bad = os.path.join(masks, "cat", "0.png")
    _corrupt(bad)
    with pytest.raises(CorruptImageError, match="masks/cat/0.png"):
        build_pretrain_dataset(cfg_for(make_cfg, images, masks))[0]
    ds = build_pretrain_dataset(cfg_for(make_cfg, images, masks, **{"data.skip_corrupt": True}))
    with pytest.warns(UserWarning):
        assert ds[0][0] == 1
    assert ds.skipped_files() == [os.path.join(images, "cat", "0.png")]


# ------------------------------------------------------------------------------ start-up errors


def test_startup_errors_name_the_path(tmp_path, make_cfg):
    with pytest.raises(DatasetNotFoundError, match="data.train_path is not set"):
        build_pretrain_dataset(cfg_for(make_cfg, None))
    missing = str(tmp_path / "missing")
    with pytest.raises(DatasetNotFoundError, match=f"'{missing}' does not exist"):
        build_pretrain_dataset(cfg_for(make_cfg, missing, **{"data.num_classes": 2}))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetNotFoundError, match=f"'{empty}' is empty"):
        build_pretrain_dataset(cfg_for(make_cfg, str(empty)))
    with pytest.raises(DatasetNotFoundError, match=f"'{empty}' contains no images"):
        build_pretrain_dataset(cfg_for(make_cfg, str(empty), **{"data.no_labels": True}))
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py.*data.download=true"):
        build_pretrain_dataset(cfg_for(make_cfg, str(empty), **{"data.dataset": "cifar10"}))
    with pytest.raises(DatasetNotFoundError, match="stl10_binary"):
        build_val_dataset(cfg_for(make_cfg, str(empty), **{"data.dataset": "stl10", "data.val_path": str(empty)}))


def test_batch_larger_than_dataset_is_an_error(tmp_path, make_cfg):
    images, _ = make_tree(str(tmp_path), per_class=1, masks=False)
    cfg = cfg_for(make_cfg, images)
    with pytest.raises(ConfigError, match="2 samples, fewer than optimizer.batch_size=4"):
        build_pretrain_loader(cfg, build_pretrain_dataset(cfg))


def test_no_labels_flat_folder(tmp_path, make_cfg):
    images, _ = make_tree(str(tmp_path), masks=False)
    ds = build_pretrain_dataset(cfg_for(make_cfg, images, **{"data.no_labels": True}))
    assert len(ds) == 12 and set(ds.targets.tolist()) == {-1}
    assert ds[0][2] == -1


def test_fraction_is_stratified_subset(tmp_path, make_cfg):
    images, masks = make_tree(str(tmp_path), per_class=10)
    cfg = cfg_for(make_cfg, images, masks, **{"data.fraction": 0.5})
    a, b = build_pretrain_dataset(cfg), build_pretrain_dataset(cfg)
    assert len(a) == 10 and np.array_equal(a.source.indices, b.source.indices)
    assert np.bincount(a.targets).tolist() == [5, 5]
    # masks of the subset are paired with their own files
    k = int(a.source.indices[0])
    assert a.mask_reader.path(a.source, 0).endswith(os.path.join(("cat", "dog")[k // 10], f"{k % 10}.png"))
    with pytest.raises(ConfigError, match="data.fraction"):
        build_pretrain_dataset(cfg_for(make_cfg, images, **{"data.fraction": 2.0}))


# ------------------------------------------------------------------------------ validation / evaluation


def test_val_dataset_and_loader(tmp_path, make_cfg):
    images, _ = make_tree(str(tmp_path), masks=False)
    assert build_val_dataset(cfg_for(make_cfg, images)) is None
    assert build_val_dataset(cfg_for(make_cfg, images, **{"data.val_path": images, "no_validation": True})) is None
    cfg = cfg_for(make_cfg, images, **{"data.val_path": images})
    val = build_val_dataset(cfg)
    x, y = val[7]
    assert x.shape == (3, 32, 32) and y == 1  # Resize(37) + CenterCrop(32) at crop 32
    loader = build_val_loader(cfg, val)
    xb, yb = next(iter(loader))
    assert xb.shape == (4, 3, 32, 32) and yb.tolist() == [0, 0, 0, 0] and not loader.drop_last


def test_classification_dataset_with_masks(tmp_path):
    images, masks = make_tree(str(tmp_path), size=(40, 36))
    ds = build_classification_dataset("custom", images, "val", 32, masks_root=masks)
    x, y, m = ds[0]
    assert x.shape == (3, 32, 32) and y == 0 and m.shape == (1, 32, 32) and m.dtype == torch.uint8
    assert 0 < m.float().mean() < 1
    tr = build_classification_dataset("custom", images, "train", 24, train_augment=True, masks_root=masks)
    x, y, m = tr[5]
    assert x.shape == (3, 24, 24) and m.shape == (1, 24, 24)
    plain = build_classification_dataset("custom", images, "val", 32, mean=(0, 0, 0), std=(1, 1, 1))
    x, y = plain[0]
    assert x.min() >= 0 and x.max() <= 1
    half = build_classification_dataset("custom", images, "train", 32, fraction=0.5)
    assert len(half) == 6 and np.bincount(half.targets).tolist() == [3, 3]
    with pytest.raises(ValueError, match="split"):
        build_classification_dataset("custom", images, "pretrain", 32)


# ------------------------------------------------------------------------------ built-in sources


def test_cifar10_from_torchvision_files(tmp_path, monkeypatch, make_cfg):
    """A fake cifar-10-batches-py folder read through torchvision's CIFAR10 class."""
    root = tmp_path / "cifar"
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        data = rng.integers(0, 256, (4, 3072)).astype(np.uint8)
        batches[name] = data
        with open(base / name, "wb") as f:
            pickle.dump({"data": data, "labels": [1, 2, 3, 4]}, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    import torchvision.datasets.cifar as tv_cifar

    # the fake files have other md5 sums than the real ones: check presence only
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    cfg = cfg_for(make_cfg, str(root), str(tmp_path / "m"), **{"data.dataset": "cifar10", "data.val_path": str(root)})
    mroot = tmp_path / "m"
    mroot.mkdir()
    for i in range(20):
        Image.fromarray(np.full((32, 32), 255, np.uint8)).save(mroot / f"{i:06d}.png")
    ds = build_pretrain_dataset(cfg)
    assert len(ds) == 20 and ds.targets[:4].tolist() == [1, 2, 3, 4]
    img = ds.source.load_image(0)
    expected = batches["data_batch_1"][0].reshape(3, 32, 32).transpose(1, 2, 0)
    np.testing.assert_array_equal(np.asarray(img), expected)
    _, views, _, extras = ds[5]
    assert views[0].shape == (3, 32, 32) and extras["masks"][0].all()
    val = build_val_dataset(cfg)
    assert len(val) == 4 and val[0][0].shape == (3, 32, 32)


@pytest.mark.skipif(not os.path.isdir(FMNIST), reason="Debian's fashion-mnist files are not installed")
def test_fashion_mnist_source(make_cfg):
    cfg = cfg_for(make_cfg, FMNIST, **{"data.dataset": "fashion_mnist", "data.val_path": FMNIST,
                                       "data.fraction": 0.01})
    ds = build_pretrain_dataset(cfg)
    assert len(ds) == 600 and np.bincount(ds.targets).tolist() == [60] * 10
    img = ds.source.load_image(0)
    assert img.mode == "RGB" and img.size == (28, 28)
    arr = np.asarray(img)
    assert np.array_equal(arr[..., 0], arr[..., 1])
    val = build_val_dataset(cfg)
    assert len(val) == 10000 and val[0][0].shape == (3, 28, 28)
    with pytest.raises(DatasetNotFoundError, match="data.download=true"):
        build_classification_dataset("fashion_mnist", "/nonexistent-fmnist", "train", 28)


def test_fashion_scenes_layout(tmp_path, make_cfg):
    out = tmp_path / "scenes"
    make_tree(str(out / "tmp"))  # images/<cls>, masks/<cls>
    os.makedirs(out / "images")
    os.makedirs(out / "masks")
    for split in ("train", "test"):
        import shutil

        shutil.copytree(out / "tmp" / "images", out / "images" / split)
        shutil.copytree(out / "tmp" / "masks", out / "masks" / split)
    os.remove(out / "masks" / "test" / "cat" / "0.png")
    for train_path in (str(out), str(out / "images" / "train")):
        cfg = cfg_for(make_cfg, train_path, None, **{"data.dataset": "fashion_scenes", "data.val_path": str(out),
                                                     "data.masks": {"enabled": True}})
        ds = build_pretrain_dataset(cfg)
        assert ds.mask_reader.root == str(out / "masks" / "train")
        assert len(ds[0][3]["masks"]) == 2
        assert len(build_val_dataset(cfg)) == 12
    test = build_classification_dataset("fashion_scenes", str(out), "val", 32,
                                        masks_root=str(out / "masks" / "test"))
    with pytest.raises(MissingMaskError, match="test/cat/0.png"):
        test[0]


def test_pretrain_dataset_rejects_inconsistent_masks(tmp_path):
    from harl.data import JointViewTransform, MultiViewTransform

    src = ArraySource("toy", np.zeros((2, 8, 8, 3), np.uint8), [0, 1])
    t = MultiViewTransform([JointViewTransform({"crop_size": 8}, (0,) * 3, (1,) * 3)], [2])
    with pytest.raises(ValueError, match="disagree"):
        mdir = tmp_path / "m"
        mdir.mkdir()
        (mdir / "000000.png").write_bytes(b"")
        PretrainDataset(src, t, MaskReader(str(mdir)))
