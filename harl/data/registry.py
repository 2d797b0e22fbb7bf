"""Dataset registry: what the training core needs to know about each ``data.dataset`` name."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Tuple

from harl.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetSpec:
    """Static facts about a dataset name.

    ``build(root, split, transform, cfg)`` returns a torch ``Dataset`` whose items are
    ``(image, target)`` with a PIL image (before ``transform``) or whatever ``transform`` returns.
    ``split`` is ``"train"`` or ``"val"``.
    """

    name: str
    num_classes: Optional[int]
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD
    small_images: bool = False  # True → ResNets get the CIFAR stem by default
    build: Optional[Callable] = field(default=None, compare=False)


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    return DATASETS.register(spec.name, spec)
