"""The project's image and mask readers, as the data pipeline imports them.

They live in :mod:`harl.utils.image_io` (torch-free, so ``harl-masks`` shares them without
importing the data pipeline); this module re-exports them under their historical names.
"""

from harl.utils.image_io import (  # noqa: F401
    _FORMAT_HINTS,
    IMG_EXTENSIONS,
    PathLike,
    _decode,
    _gray_to_uint8,
    _open_any,
    _open_decoded,
    is_image_file,
    mask_values,
    read_image,
    read_mask,
    read_mask_values,
    to_rgb,
)
