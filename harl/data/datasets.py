"""Torch datasets over an :class:`~harl.data.sources.ImageSource`.

- :class:`PretrainDataset`: items ``(index, [view_1..view_n], target)``, or with masks
  ``(index, [view_1..view_n], target, {"masks": [m_1..m_n], "coords": [c_1..c_n]})``. The default
  collate turns a list of them into ``[indexes B, [X_v B×3×S×S], targets B(, {"masks":
  [B×1×S×S uint8], "coords": [B×4 float32]})]``.
- :class:`ClassificationDataset`: items ``(image, target)`` or ``(image, target, mask 1×H×W uint8)``.

Unreadable files (``skip_corrupt``): an item whose image (or mask) cannot be decoded raises a
:class:`~harl.errors.CorruptImageError` naming the file, unless ``skip_corrupt`` is on;
then the next readable item (i+1, i+2, … cyclically) is returned in its place (its own index
and target), a warning names the file the first time a process meets it, and the file is
flagged in a shared-memory table, so the main process sees files skipped inside loader workers:
``dataset.num_skipped`` (distinct files) and ``dataset.skipped_files()`` for the training loop
to log, :func:`report_skipped` for a summary warning.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from harl.errors import CorruptImageError, DataFileError
from harl.data.mask_pairing import MaskReader
from harl.errors import MaskSizeMismatchError, MissingMaskError
from harl.data.sources import ImageSource


class SkipTable:
    """Which items were skipped as unreadable: a uint8 flag per item in shared memory."""

    def __init__(self, n: int):
        self.flags = torch.zeros(max(int(n), 1), dtype=torch.uint8).share_memory_()
        self._warned: set = set()

    def mark_quiet(self, i: int) -> None:
        """Flag item ``i`` as unreadable without a warning (found by ``data.verify``, reported there)."""
        self.flags[i] = 1
        self._warned.add(i)

    def mark(self, i: int, err: Exception) -> None:
        self.flags[i] = 1
        if i not in self._warned:
            self._warned.add(i)
            warnings.warn(f"skipping unreadable file (data.skip_corrupt=true): {err}", stacklevel=4)

    def is_skipped(self, i: int) -> bool:
        return bool(self.flags[i])

    def indices(self) -> np.ndarray:
        return np.flatnonzero(self.flags.numpy())


class _SourceDataset(Dataset):
    """Loads (image, mask, target) of an item with the corrupt-file policy."""

    def __init__(self, source: ImageSource, mask_reader: Optional[MaskReader] = None, skip_corrupt: bool = False):
        if len(source) == 0:
            raise ValueError("dataset is empty")
        self.source = source
        self.mask_reader = mask_reader
        self.skip_corrupt = bool(skip_corrupt)
        self._skips = SkipTable(len(source)) if self.skip_corrupt else None

    def __len__(self) -> int:
        return len(self.source)

    @property
    def targets(self) -> np.ndarray:
        return self.source.targets

    @property
    def classes(self) -> List[str]:
        return self.source.classes

    def _read(self, j: int) -> Tuple[Image.Image, Optional[np.ndarray]]:
        img = self.source.load_image(j)
        mask = self.mask_reader(self.source, j, img.size) if self.mask_reader is not None else None
        return img, mask

    def load(self, i: int) -> Tuple[int, Image.Image, Optional[np.ndarray], int]:
        """(index actually used, RGB image, mask uint8 H×W or None, target) for item ``i``."""
        n = len(self.source)
        i = int(i)
        if self._skips is None:
            try:
                img, mask = self._read(i)
            except (CorruptImageError, MissingMaskError, MaskSizeMismatchError) as err:
                if torch.utils.data.get_worker_info() is None:
                    raise
                raise DataFileError(str(err)) from None  # reaches the main process as this one line
            return i, img, mask, int(self.source.targets[i])
        for k in range(n):
            j = (i + k) % n
            if self._skips.is_skipped(j):
                continue
            try:
                img, mask = self._read(j)
            except CorruptImageError as err:
                self._skips.mark(j, err)
                continue
            return j, img, mask, int(self.source.targets[j])
        raise CorruptImageError(self.source.describe(i), "no readable image left in the dataset "
                                                         "(every file was skipped as unreadable)")

    def mark_unreadable(self, indices) -> None:
        """With ``skip_corrupt``: skip these items from the start (a ``data.verify`` result)."""
        if self._skips is not None:
            for i in indices:
                self._skips.mark_quiet(int(i))

    # -- reporting ------------------------------------------------------------------------------
    @property
    def num_skipped(self) -> int:
        """Distinct unreadable files met so far (in this process and its loader workers)."""
        return 0 if self._skips is None else int(self._skips.flags.sum())

    def skipped_files(self) -> List[str]:
        if self._skips is None:
            return []
        return [self.source.describe(int(j)) for j in self._skips.indices()]


class PretrainDataset(_SourceDataset):
    """Multi-view pretraining items (see module docstring). ``transform`` is a
    :class:`~harl.data.transforms.MultiViewTransform` (with masks iff ``mask_reader`` is given)."""

    def __init__(self, source: ImageSource, transform: Callable, mask_reader: Optional[MaskReader] = None,
                 skip_corrupt: bool = False):
        super().__init__(source, mask_reader, skip_corrupt)
        with_masks = bool(getattr(transform, "with_masks", False))
        if with_masks != (mask_reader is not None):
            raise ValueError("PretrainDataset: the transform and the mask reader disagree on masks")
        self.transform = transform

    @property
    def with_masks(self) -> bool:
        return self.mask_reader is not None

    def __getitem__(self, i: int):
        j, img, mask, target = self.load(i)
        if mask is None:
            return j, self.transform(img), target
        views, masks, coords = self.transform(img, mask)
        return j, views, target, {"masks": masks, "coords": coords}


class ClassificationDataset(_SourceDataset):
    """``(image, target)`` items, or ``(image, target, mask)`` with a mask reader; the transform is
    called as ``transform(img)`` or ``transform(img, mask)`` → ``(image, mask)``."""

    def __init__(self, source: ImageSource, transform: Callable, mask_reader: Optional[MaskReader] = None,
                 skip_corrupt: bool = False):
        super().__init__(source, mask_reader, skip_corrupt)
        self.transform = transform

    def __getitem__(self, i: int) -> Any:
        _, img, mask, target = self.load(i)
        if mask is None:
            return self.transform(img), target
        x, m = self.transform(img, mask)
        return x, target, m


def report_skipped(dataset: Any, max_names: int = 20) -> int:
    """Warn with the names of the files skipped so far; returns their number (0: silent)."""
    n = int(getattr(dataset, "num_skipped", 0))
    if n:
        names = dataset.skipped_files()
        shown = "\n  ".join(names[:max_names])
        more = f"\n  ... and {n - max_names} more" if n > max_names else ""
        warnings.warn(f"{n} unreadable file(s) were skipped (data.skip_corrupt=true):\n  {shown}{more}")
    return n
