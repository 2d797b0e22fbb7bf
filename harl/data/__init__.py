"""Data pipeline: dataset registry, sources, joint image+mask transforms, datasets and loaders.

Public API (see each module for details):

- registry: :data:`DATASETS`, :class:`DatasetSpec`, :func:`register_dataset` (the built-in
  datasets are registered by :mod:`harl.data.catalog` on import);
- reading: :func:`read_image`, :func:`read_mask`, :class:`CorruptImageError`,
  :class:`DatasetNotFoundError`;
- transforms: :class:`JointViewTransform`, :class:`MultiViewTransform`, :class:`EvalTransform`,
  :class:`LinearTrainTransform`;
- datasets: :class:`PretrainDataset`, :class:`ClassificationDataset`, :func:`report_skipped`;
- builders: :func:`build_pretrain_dataset`, :func:`build_pretrain_loader`,
  :func:`build_val_dataset`, :func:`build_val_loader`, :func:`build_classification_dataset`,
  :func:`dataset_stats`.
"""

from harl.data.registry import DATASETS, IMAGENET_MEAN, IMAGENET_STD, DatasetSpec, register_dataset
from harl.data import catalog  # noqa: F401  (registers the built-in datasets)
from harl.data.datasets import ClassificationDataset, PretrainDataset, report_skipped
from harl.data.eval_transforms import EvalGeometry, EvalTransform, LinearTrainTransform
from harl.data.image_io import read_image, read_mask
from harl.errors import CorruptImageError, DatasetNotFoundError
from harl.data.loaders import (
    apply_fraction,
    build_classification_dataset,
    build_eval_transform,
    build_pretrain_dataset,
    build_pretrain_loader,
    build_val_dataset,
    build_val_loader,
    build_view_transform,
    dataset_stats,
)
from harl.data.mask_pairing import MaskReader
from harl.errors import MaskSizeMismatchError, MissingMaskError
from harl.data.sources import ArraySource, FolderSource, ImageSource, SubsetSource, list_image_folder, stratified_subset
from harl.data.transforms import (
    JointViewTransform,
    MaskCropOptions,
    MultiViewTransform,
    ViewAugmentation,
    crop_resize_flip_mask,
    resize_mask_nearest,
    rrc_params,
    sample_crop_box,
)

__all__ = [
    "DATASETS", "DatasetSpec", "register_dataset", "IMAGENET_MEAN", "IMAGENET_STD",
    "read_image", "read_mask", "CorruptImageError", "DatasetNotFoundError", "MissingMaskError",
    "MaskSizeMismatchError", "MaskReader",
    "ImageSource", "FolderSource", "ArraySource", "SubsetSource", "list_image_folder", "stratified_subset",
    "JointViewTransform", "MultiViewTransform", "ViewAugmentation", "MaskCropOptions", "resize_mask_nearest",
    "sample_crop_box", "rrc_params", "crop_resize_flip_mask", "EvalGeometry", "EvalTransform", "LinearTrainTransform",
    "PretrainDataset", "ClassificationDataset", "report_skipped",
    "build_pretrain_dataset", "build_pretrain_loader", "build_val_dataset", "build_val_loader",
    "build_classification_dataset", "build_view_transform", "build_eval_transform", "dataset_stats",
    "apply_fraction",
]
