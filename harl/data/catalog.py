"""The built-in datasets: registry entries and their source builders.

Every builder has the signature ``build(root, split, *, download=False, no_labels=False,
what="data path") -> ImageSource`` (``split`` ∈ pretrain / train / val; ``what`` names the
config key in error messages).

- ``cifar10``, ``cifar100``, ``stl10``: torchvision datasets rooted at the path; ``download``
  passes ``download=True``. stl10's pretrain split is ``train+unlabeled`` (solo-learn).
  Masks are addressed by index: ``<masks.root>/<index:06d><suffix>``.
- ``imagenet``, ``imagenet100``, ``custom``: ImageFolder trees (``no_labels``: every image under
  the folder, recursively, target −1). Masks mirror the tree.
- ``fashion_mnist``: Debian's IDX files in the folder (or torchvision's ``<root>/FashionMNIST/raw``
  layout, which ``download`` fills), read by :mod:`harl.data.fashion_mnist`; grayscale → RGB;
  indexed masks.
- ``fashion_scenes``: the demo set written by the scenes generator: ``<out>/images/{train,test}``
  + ``<out>/masks/{train,test}``; the path may be ``<out>`` or ``<out>/images/<split>``, and the
  masks root defaults to the mirror ``masks`` folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from harl.data.eval_transforms import native_geometry, resize_center_crop_geometry, square_resize_geometry
from harl.errors import DatasetNotFoundError
from harl.data.registry import SPLITS, DatasetSpec, register_dataset
from harl.data.sources import ArraySource, ImageSource, check_dir, list_image_folder
from harl.data.fashion_mnist import CLASS_NAMES
from harl.data.fashion_mnist import read_fashion_mnist

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
STL10_MEAN, STL10_STD = (0.4914, 0.4823, 0.4466), (0.247, 0.243, 0.261)
# measured on the 60k training images of Fashion-MNIST (grayscale, replicated to RGB)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,) * 3, (0.3530,) * 3


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def _require_root(root: Optional[str], what: str) -> str:
    if root is None or str(root) == "":
        raise DatasetNotFoundError(f"{what} is not set")
    return os.fspath(root)


# ---------------------------------------------------------------------------------------------
# torchvision array datasets
# ---------------------------------------------------------------------------------------------


def _torchvision_source(name: str, folder: str, make: Callable, root: Optional[str], split: str,
                        download: bool, no_labels: bool, what: str, channels_first: bool) -> ImageSource:
    _check_split(split)
    root = _require_root(root, what)
    try:
        ds = make(root, split, download)
    except Exception as err:
        if download:
            raise DatasetNotFoundError(f"could not download {name} into {what} '{root}': {err}") from err
        raise DatasetNotFoundError(
            f"{name} not found in {what} '{root}' (looked for '{os.path.join(root, folder)}'); "
            "set data.download=true to download it") from err
    labels = getattr(ds, "targets", None)
    if labels is None:
        labels = ds.labels
    targets = np.full(len(ds.data), -1, dtype=np.int64) if no_labels else np.asarray(labels, dtype=np.int64)
    return ArraySource(f"{name}/{split}", ds.data, targets, classes=list(getattr(ds, "classes", [])),
                       channels_first=channels_first)


def _cifar_builder(name: str, cls_name: str, folder: str):
    def make(root, split, download):
        import torchvision.datasets as tvd

        return getattr(tvd, cls_name)(root, train=split != "val", download=download)

    def build(root, split, *, download=False, no_labels=False, what="data path"):
        return _torchvision_source(name, folder, make, root, split, download, no_labels, what, channels_first=False)

    return build


_STL10_SPLITS = {"pretrain": "train+unlabeled", "train": "train", "val": "test"}


def _stl10_make(root, split, download):
    import torchvision.datasets as tvd

    return tvd.STL10(root, split=_STL10_SPLITS[split], download=download)


def build_stl10(root, split, *, download=False, no_labels=False, what="data path"):
    return _torchvision_source("stl10", "stl10_binary", _stl10_make, root, split, download, no_labels, what,
                               channels_first=True)


# ---------------------------------------------------------------------------------------------
# image folders
# ---------------------------------------------------------------------------------------------


def _folder_builder(name: str):
    def build(root, split, *, download=False, no_labels=False, what="data path"):
        _check_split(split)
        root = _require_root(root, what)
        return list_image_folder(root, labeled=not no_labels, what=f"{what} ({name})")

    return build


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST (IDX files)
# ---------------------------------------------------------------------------------------------


def read_fashion_mnist_split(root: str, split: str, download: bool = False):
    """(images uint8 N×28×28, labels int64 N) of ``split`` (train/test) found under ``root``
    (see :func:`harl.data.fashion_mnist.find_fashion_mnist_files`); ``download`` fetches the files
    with torchvision's downloader into ``<root>/FashionMNIST/raw`` when they are missing."""
    try:
        return read_fashion_mnist(root, split)
    except FileNotFoundError as err:
        if not download:
            raise DatasetNotFoundError(f"{err} Set data.download=true to download them.") from err
    import torchvision.datasets as tvd

    try:
        tvd.FashionMNIST(root, train=split == "train", download=True)
    except Exception as err:
        raise DatasetNotFoundError(f"could not download fashion_mnist into '{root}': {err}") from err
    return read_fashion_mnist(root, split)


def build_fashion_mnist(root, split, *, download=False, no_labels=False, what="data path"):
    _check_split(split)
    root = _require_root(root, what)
    fsplit = "test" if split == "val" else "train"
    images, labels = read_fashion_mnist_split(root, fsplit, download)
    targets = np.full(len(images), -1, dtype=np.int64) if no_labels else np.asarray(labels, dtype=np.int64)
    return ArraySource(f"fashion_mnist/{fsplit}", np.asarray(images, dtype=np.uint8), targets,
                       classes=list(CLASS_NAMES))


# ---------------------------------------------------------------------------------------------
# fashion scenes (demo set)
# ---------------------------------------------------------------------------------------------


def _scenes_sub(split: str) -> str:
    return "test" if split == "val" else "train"


def scenes_images_dir(root: str, split: str) -> str:
    """``<root>/images/<train|test>`` when ``root`` is the generator's output folder, else ``root``."""
    candidate = os.path.join(root, "images", _scenes_sub(split))
    return candidate if os.path.isdir(candidate) else root


def scenes_masks_root(path: str, split: str) -> Optional[str]:
    """Default masks root of a scenes split: the mirror of its ``images`` folder under ``masks``."""
    if path is None:
        return None
    if os.path.isdir(os.path.join(path, "images", _scenes_sub(split))):
        return os.path.join(path, "masks", _scenes_sub(split))
    parts = list(Path(os.path.abspath(path)).parts)
    for k in range(len(parts) - 1, -1, -1):
        if parts[k] == "images":
            parts[k] = "masks"
            return str(Path(*parts))
    return None


def build_fashion_scenes(root, split, *, download=False, no_labels=False, what="data path"):
    _check_split(split)
    root = check_dir(_require_root(root, what), f"{what} (fashion_scenes)")
    return list_image_folder(scenes_images_dir(root, split), labeled=not no_labels, what=f"{what} (fashion_scenes)")


def _scenes_mean():
    from harl.data.fashion_scenes import SCENES_MEAN  # lazy: the generator module is not needed to register

    return SCENES_MEAN


def _scenes_std():
    from harl.data.fashion_scenes import SCENES_STD  # lazy: the generator module is not needed to register

    return SCENES_STD


# ---------------------------------------------------------------------------------------------
# registrations
# ---------------------------------------------------------------------------------------------

register_dataset(DatasetSpec("cifar10", 10, CIFAR10_MEAN, CIFAR10_STD, small_images=True,
                             build=_cifar_builder("cifar10", "CIFAR10", "cifar-10-batches-py"),
                             eval_geometry=native_geometry))
register_dataset(DatasetSpec("cifar100", 100, CIFAR100_MEAN, CIFAR100_STD, small_images=True,
                             build=_cifar_builder("cifar100", "CIFAR100", "cifar-100-python"),
                             eval_geometry=native_geometry))
register_dataset(DatasetSpec("stl10", 10, STL10_MEAN, STL10_STD, small_images=False, build=build_stl10,
                             eval_geometry=square_resize_geometry(96)))
register_dataset(DatasetSpec("imagenet", 1000, build=_folder_builder("imagenet"),
                             eval_geometry=resize_center_crop_geometry))
register_dataset(DatasetSpec("imagenet100", 100, build=_folder_builder("imagenet100"),
                             eval_geometry=resize_center_crop_geometry))
register_dataset(DatasetSpec("custom", None, build=_folder_builder("custom"),
                             eval_geometry=resize_center_crop_geometry))
register_dataset(DatasetSpec("fashion_mnist", 10, FASHION_MNIST_MEAN, FASHION_MNIST_STD, small_images=True,
                             build=build_fashion_mnist, eval_geometry=native_geometry))
register_dataset(DatasetSpec("fashion_scenes", 10, _scenes_mean, _scenes_std, small_images=True,
                             build=build_fashion_scenes, eval_geometry=native_geometry,
                             default_masks_root=scenes_masks_root))
