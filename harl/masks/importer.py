"""``harl-masks import``: bring existing masks (any format, any value range) into the canonical tree.

For every image ``IMAGES/<rel>`` the source mask is ``MASKS/<rel without extension>.<any mask
extension>`` (``.png`` first; see :func:`harl.masks.io.find_mask_file`). Its values are read as
they are stored (palette indices for palette PNGs, 16-bit and float values, the max over colour
channels for RGB) and fg = value > ``threshold`` (default 0). A mask whose size differs from the
image's is resized with nearest neighbour and the row's ``fallback`` says ``resized``; a missing
mask goes to the failures file. Only the image *header* is read (for its size).
"""

from __future__ import annotations

import os
from typing import Any, Dict, Tuple

import numpy as np

from harl.masks.io import find_mask_file, read_image_size, read_mask_values
from harl.masks.ops import count_components, resize_mask_nearest
from harl.errors import MissingSourceMaskError

FALLBACK_RESIZED = "resized"


class ImportJob:
    """``relpath -> (mask, info)`` reading ``masks_root``'s mask for ``images_root/relpath``."""

    uses_torch = False

    def __init__(self, images_root: str, masks_root: str, threshold: float = 0.0):
        if not os.path.isdir(masks_root):
            raise FileNotFoundError(f"mask folder '{masks_root}' does not exist")
        self.images_root = images_root
        self.masks_root = masks_root
        self.threshold = float(threshold)

    def setup(self) -> None:
        pass

    def __call__(self, relpath: str) -> Tuple[np.ndarray, Dict[str, Any]]:
        height, width = read_image_size(os.path.join(self.images_root, relpath))
        src = find_mask_file(self.masks_root, relpath)
        if src is None:
            stem = os.path.splitext(relpath)[0]
            raise MissingSourceMaskError(f"no mask for '{relpath}' in '{self.masks_root}' (looked for '{stem}.png' "
                                   "and other mask extensions)")
        mask = read_mask_values(src) > self.threshold
        fallback = ""
        if mask.shape != (height, width):
            mask = resize_mask_nearest(mask, height, width)
            fallback = FALLBACK_RESIZED
        return mask, {"n_segments": count_components(mask), "fallback": fallback}

    def describe(self) -> Dict[str, Any]:
        return {"generator": "import", "params": {"masks": os.path.abspath(self.masks_root),
                                                  "threshold": self.threshold}}
