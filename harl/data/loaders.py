"""Builders from a parsed config (:func:`harl.config.parse_cfg`): datasets and loaders for
pretraining and validation, and a classification dataset for evaluation code.

All start-up checks (missing / empty folders, missing torchvision files, masks root) happen
here, before training starts; per-item problems (a corrupt file, a missing mask) are reported
when the item is loaded, naming the file.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader


from harl.data.datasets import ClassificationDataset, PretrainDataset
from harl.data.eval_transforms import EvalTransform, LinearTrainTransform, resize_center_crop_geometry
from harl.data.mask_pairing import MaskReader
from harl.data.registry import DATASETS, DatasetSpec
from harl.data.sampling import EpochSeededDataset, EpochShuffleSampler
from harl.data.sources import ImageSource, SubsetSource, stratified_subset
from harl.data.transforms import JointViewTransform, MultiViewTransform
from harl.errors import ConfigError


def _config_error(msg: str) -> Exception:
    return ConfigError(msg)


def dataset_spec(name: str) -> DatasetSpec:
    return DATASETS.get(name)


def dataset_stats(name: str, aug: Optional[Any] = None) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """(mean, std) of dataset ``name``; an augmentation item's own ``mean``/``std`` override them."""
    mean, std = dataset_spec(name).stats()
    if aug is not None:
        if aug.get("mean") is not None:
            mean = tuple(float(v) for v in aug["mean"])
        if aug.get("std") is not None:
            std = tuple(float(v) for v in aug["std"])
    return mean, std


def apply_fraction(source: ImageSource, fraction: Optional[float]) -> ImageSource:
    """``data.fraction`` in (0, 1): a seeded class-stratified subset; ≤ 0, None or 1: everything."""
    if fraction is None:
        return source
    fraction = float(fraction)
    if fraction <= 0 or fraction == 1.0:
        return source
    if fraction > 1:
        raise _config_error(f"config key 'data.fraction' must be in (0, 1) (or -1 for all data), got {fraction}")
    return SubsetSource(source, stratified_subset(source.targets, fraction))


def _build_source(name: str, path: Optional[str], split: str, *, download: bool = False,
                  no_labels: bool = False, what: str = "data path") -> ImageSource:
    spec = dataset_spec(name)
    if spec.build is None:
        raise _config_error(f"dataset '{name}' has no builder")
    return spec.build(path, split, download=bool(download), no_labels=bool(no_labels), what=what)


def _masks_root(spec: DatasetSpec, root: Optional[str], images_path: Optional[str], split: str) -> str:
    if root is None and spec.default_masks_root is not None:
        root = spec.default_masks_root(images_path, split)
    if root is None:
        raise _config_error("data.masks.enabled is true but data.masks.root is not set")
    return root


# ---------------------------------------------------------------------------------------------
# pretraining
# ---------------------------------------------------------------------------------------------


def build_view_transform(cfg: Any) -> MultiViewTransform:
    """The N-crop transform of ``cfg.augmentations`` (mask-aware iff ``cfg.data.masks.enabled``)."""
    masks = cfg.data.masks if cfg.data.masks.enabled else None
    pipelines, crops = [], []
    for aug in cfg.augmentations:
        mean, std = dataset_stats(cfg.data.dataset, aug)
        pipelines.append(JointViewTransform(aug, mean, std, masks=masks))
        crops.append(int(aug.num_crops))
    return MultiViewTransform(pipelines, crops)


def build_pretrain_dataset(cfg: Any) -> PretrainDataset:
    """Items ``(index, [views], target)`` or, with ``data.masks.enabled``,
    ``(index, [views], target, {"masks": [...], "coords": [...]})``."""
    data = cfg.data
    spec = dataset_spec(data.dataset)
    source = _build_source(data.dataset, data.train_path, "pretrain", download=data.download,
                           no_labels=data.no_labels, what="data.train_path")
    source = apply_fraction(source, data.fraction)
    reader = None
    if data.masks.enabled:
        root = _masks_root(spec, data.masks.root, data.train_path, "pretrain")
        reader = MaskReader(root, data.masks.suffix, data.masks.on_missing, data.masks.on_size_mismatch,
                            what="data.masks.root")
    return PretrainDataset(source, build_view_transform(cfg), reader, skip_corrupt=data.skip_corrupt)


def _pin_memory() -> bool:
    return torch.cuda.is_available()


def build_pretrain_loader(cfg: Any, dataset) -> DataLoader:
    """Shuffled, ``drop_last`` loader of ``optimizer.batch_size`` (per device) with
    ``data.num_workers`` workers; pin_memory only with CUDA; no persistent workers.

    Order and augmentations are a function of (``seed``, epoch, index) (see
    :mod:`harl.data.sampling`), sharded across DDP ranks by the sampler itself."""
    batch_size = int(cfg.optimizer.batch_size)
    if len(dataset) < batch_size:
        raise _config_error(
            f"the training set has {len(dataset)} samples, fewer than optimizer.batch_size={batch_size} "
            f"(data.train_path='{cfg.data.train_path}'); with drop_last no batch would be formed")
    seed = int(cfg.get("seed", 0) or 0)
    sampler = EpochShuffleSampler(len(dataset), seed)
    return DataLoader(EpochSeededDataset(dataset, seed), batch_size=batch_size, sampler=sampler,
                      num_workers=int(cfg.data.num_workers), pin_memory=_pin_memory(), drop_last=True,
                      persistent_workers=False)


# ---------------------------------------------------------------------------------------------
# validation / evaluation
# ---------------------------------------------------------------------------------------------


def build_eval_transform(dataset_name: str, crop_size: int, mean: Sequence[float], std: Sequence[float]) -> EvalTransform:
    spec = dataset_spec(dataset_name)
    geometry = (spec.eval_geometry or resize_center_crop_geometry)(int(crop_size))
    return EvalTransform(geometry, mean, std)


def build_val_dataset(cfg: Any) -> Optional[ClassificationDataset]:
    """``(image, target)`` items of ``data.val_path`` with the dataset's validation transform;
    None when ``val_path`` is null or ``no_validation`` is set. Normalisation follows the first
    augmentation pipeline (its own mean/std if given, else the dataset's)."""
    if cfg.get("no_validation", False) or cfg.data.val_path is None:
        return None
    aug0 = cfg.augmentations[0]
    mean, std = dataset_stats(cfg.data.dataset, aug0)
    source = _build_source(cfg.data.dataset, cfg.data.val_path, "val", download=cfg.data.download,
                           no_labels=False, what="data.val_path")
    transform = build_eval_transform(cfg.data.dataset, int(aug0.crop_size), mean, std)
    return ClassificationDataset(source, transform, skip_corrupt=cfg.data.skip_corrupt)


def build_val_loader(cfg: Any, dataset) -> DataLoader:
    return DataLoader(dataset, batch_size=int(cfg.optimizer.batch_size), shuffle=False,
                      num_workers=int(cfg.data.num_workers), pin_memory=_pin_memory(), drop_last=False,
                      persistent_workers=False)


def build_classification_dataset(dataset_name: str, path: str, split: str, crop_size: int,
                                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                                 train_augment: bool = False, masks_root: Optional[str] = None,
                                 fraction: float = -1, skip_corrupt: bool = False, *, download: bool = False,
                                 no_labels: bool = False, mask_suffix: str = ".png", on_missing: str = "error",
                                 on_size_mismatch: str = "error") -> ClassificationDataset:
    """A labelled dataset for linear probes, kNN, dense probes and feature extraction.

    ``split``: ``train`` or ``val`` (``test`` is accepted for ``val``). ``train_augment``:
    RandomResizedCrop(crop_size, scale 0.08–1, bilinear) + horizontal flip; otherwise the
    dataset's validation geometry. Items ``(image, target)``, or ``(image, target, mask uint8
    1×H×W)`` when ``masks_root`` is given (same geometry on both). ``mean``/``std`` default to the
    dataset's.
    """
    split = {"test": "val"}.get(split, split)
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    d_mean, d_std = dataset_stats(dataset_name)
    mean = d_mean if mean is None else tuple(mean)
    std = d_std if std is None else tuple(std)
    source = _build_source(dataset_name, path, split, download=download, no_labels=no_labels, what=f"{split} path")
    source = apply_fraction(source, fraction)
    reader = None
    if masks_root is not None:
        reader = MaskReader(masks_root, mask_suffix, on_missing, on_size_mismatch, what="masks root")
    if train_augment:
        transform: Any = LinearTrainTransform(crop_size, mean, std)
    else:
        transform = build_eval_transform(dataset_name, crop_size, mean, std)
    return ClassificationDataset(source, transform, reader, skip_corrupt=skip_corrupt)
