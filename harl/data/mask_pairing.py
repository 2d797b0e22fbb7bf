"""Pairing an image with its mask file (docs/masks.md), lazily, one item at a time.

The mask of source item ``i`` is ``<root>/<source.mask_relpath(i, suffix)>``. Nothing is scanned
at start-up beyond checking that ``root`` is a non-empty directory, so an ImageNet-size tree is
listed once (for the images), never twice; a missing or mismatched mask is found when its item
is first loaded, and the error names the file.

Policies (``data.masks``):

- ``on_missing``: ``error`` (:class:`MissingMaskError` naming the expected mask file and the
  image), ``ones`` (all fg) or ``zeros`` (all bg); filling warns once per process.
- ``on_size_mismatch``: ``error`` (:class:`MaskSizeMismatchError` naming the mask file and both
  sizes) or ``resize`` (nearest, to the image size; warns once per process).
"""

from __future__ import annotations

import os
import warnings
from typing import Tuple

import numpy as np
from PIL import Image

from harl.data.image_io import read_mask
from harl.errors import DatasetNotFoundError
from harl.data.sources import ImageSource, check_dir
from harl.errors import MaskSizeMismatchError, MissingMaskError

ON_MISSING = ("error", "ones", "zeros")
ON_SIZE_MISMATCH = ("error", "resize")


class MaskReader:
    """Loads the mask of ``source`` item ``i`` as uint8 H×W {0, 1} at the image's size."""

    def __init__(self, root: str, suffix: str = ".png", on_missing: str = "error",
                 on_size_mismatch: str = "error", what: str = "data.masks.root"):
        if on_missing not in ON_MISSING:
            raise ValueError(f"data.masks.on_missing must be one of {ON_MISSING}, got {on_missing!r}")
        if on_size_mismatch not in ON_SIZE_MISMATCH:
            raise ValueError(f"data.masks.on_size_mismatch must be one of {ON_SIZE_MISMATCH}, got {on_size_mismatch!r}")
        self.root = check_dir(root, what)
        with os.scandir(self.root) as it:
            if next(it, None) is None:
                raise DatasetNotFoundError(f"{what} '{self.root}' is empty (no mask files)")
        self.suffix = suffix if suffix.startswith(".") else "." + suffix
        self.on_missing = on_missing
        self.on_size_mismatch = on_size_mismatch
        self._warned_missing = False
        self._warned_resize = False

    def path(self, source: ImageSource, i: int) -> str:
        return os.path.join(self.root, source.mask_relpath(i, self.suffix))

    def __call__(self, source: ImageSource, i: int, size: Tuple[int, int]) -> np.ndarray:
        """Mask of item ``i`` for an image of PIL ``size`` = (W, H) → uint8 H×W in {0, 1}."""
        width, height = size
        path = self.path(source, i)
        try:
            mask = read_mask(path)
        except FileNotFoundError:
            return self._missing(path, source.describe(i), height, width)
        if mask.shape != (height, width):
            mask = self._mismatch(path, source.describe(i), mask, height, width)
        return mask

    def _missing(self, path: str, image: str, height: int, width: int) -> np.ndarray:
        if self.on_missing == "error":
            raise MissingMaskError(
                f"mask file '{path}' not found for image '{image}' (data.masks.on_missing=error; "
                "set it to 'ones' or 'zeros' to fill missing masks)")
        if not self._warned_missing:
            self._warned_missing = True
            warnings.warn(f"mask file '{path}' not found for image '{image}'; filling with "
                          f"{self.on_missing} (data.masks.on_missing={self.on_missing}; further missing "
                          "masks are filled silently)", stacklevel=3)
        return np.full((height, width), 1 if self.on_missing == "ones" else 0, dtype=np.uint8)

    def _mismatch(self, path: str, image: str, mask: np.ndarray, height: int, width: int) -> np.ndarray:
        mh, mw = mask.shape
        msg = f"mask '{path}' is {mw}×{mh} (W×H) but its image '{image}' is {width}×{height}"
        if self.on_size_mismatch == "error":
            raise MaskSizeMismatchError(msg + " (data.masks.on_size_mismatch=error; set it to 'resize' "
                                              "to resize masks with nearest neighbour)")
        if not self._warned_resize:
            self._warned_resize = True
            warnings.warn(msg + "; resizing masks (nearest) to their images (further mismatches are "
                                "resized silently)", stacklevel=3)
        out = Image.fromarray(mask * np.uint8(255), "L").resize((width, height), Image.NEAREST)
        return (np.asarray(out) > 0).astype(np.uint8)
