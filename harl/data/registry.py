"""Dataset registry: what the training core needs to know about each ``data.dataset`` name.

The built-in names (cifar10, cifar100, stl10, imagenet, imagenet100, custom, fashion_mnist,
fashion_scenes) are registered by :mod:`harl.data.catalog`, imported with :mod:`harl.data` or on
the first lookup in :data:`DATASETS` (the registry object lives in :mod:`harl.registry`, so that
:mod:`harl.config` can check ``data.dataset`` without importing the data package).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Tuple, Union

from harl.registry import DATASETS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Stats = Union[Tuple[float, float, float], Callable[[], Sequence[float]]]

#: splits a builder understands: the SSL training split, the labelled train split, validation
SPLITS = ("pretrain", "train", "val")


@dataclass(frozen=True)
class DatasetSpec:
    """Static facts about a dataset name.

    - ``build(root, split, *, download=False, no_labels=False)`` → an
      :class:`~harl.data.sources.ImageSource` (RGB PIL images, int targets, −1 = unlabeled) for
      ``split`` ∈ :data:`SPLITS`; it raises :class:`~harl.errors.DatasetNotFoundError`
      naming the path when the data is missing or empty.
    - ``mean``/``std``: 3-tuples, or zero-argument callables returning them (resolved lazily by
      :meth:`stats`, for constants that live in modules that must not be imported eagerly).
    - ``small_images``: ResNets get the CIFAR stem by default.
    - ``eval_geometry(crop_size)`` → :class:`~harl.data.eval_transforms.EvalGeometry` of the
      validation transform (None: ImageNet-style Resize(crop·8/7) + CenterCrop(crop)).
    - ``default_masks_root(images_path, split)`` → the masks root to use when
      ``data.masks.root`` is not set (None: it must be set).
    """

    name: str
    num_classes: Optional[int]
    mean: Stats = IMAGENET_MEAN
    std: Stats = IMAGENET_STD
    small_images: bool = False
    build: Optional[Callable] = field(default=None, compare=False)
    eval_geometry: Optional[Callable] = field(default=None, compare=False)
    default_masks_root: Optional[Callable[[str, str], Optional[str]]] = field(default=None, compare=False)

    def stats(self) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
        """(mean, std) as float tuples."""
        mean = self.mean() if callable(self.mean) else self.mean
        std = self.std() if callable(self.std) else self.std
        return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    return DATASETS.register(spec.name, spec)
