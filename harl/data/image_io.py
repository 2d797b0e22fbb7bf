"""Reading images and masks: the one image reader and the one mask reader of the project.

- :func:`read_image` returns an RGB ``PIL.Image`` whatever the file holds: grayscale, palette
  (with or without transparency), RGBA/LA (alpha dropped, as torchvision's loader does), CMYK,
  1-bit, and 16/32-bit integer or float grayscale (rescaled to 8 bit, not clipped).
- :func:`read_mask` returns a ``uint8`` H×W array in {0, 1}: a pixel is fg ⇔ its value > 0
  (multi-channel masks: any colour channel > 0; palette masks: palette index > 0).

A file that cannot be decoded (corrupt, truncated, not an image) raises
:class:`CorruptImageError`, whose message and ``path`` name the file. The file is fully decoded
inside the reader (``Image.load``), so truncation is detected here and not later in a transform.
"""

from __future__ import annotations

import os
from typing import Union

import numpy as np
from PIL import Image

from harl.errors import CorruptImageError

PathLike = Union[str, "os.PathLike[str]"]

#: file extensions recognised as images (lower case; torchvision's ImageFolder list)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


#: format tried first for a file extension (skips PIL's format probing; others are tried after)
_FORMAT_HINTS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}


def _open_any(f, path: PathLike) -> Image.Image:
    hint = _FORMAT_HINTS.get(os.path.splitext(os.fspath(path))[1].lower())
    if hint is not None:
        try:
            return Image.open(f, formats=[hint])
        except Image.UnidentifiedImageError:
            f.seek(0)
    return Image.open(f)


def _open_decoded(path: PathLike) -> Image.Image:
    """Open and fully decode ``path``. FileNotFoundError passes through; anything else → CorruptImageError."""
    try:
        with open(path, "rb") as f:
            img = _open_any(f, path)
            img.load()
    except FileNotFoundError:
        raise
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, zlib.error, ...
        raise CorruptImageError(path, f"{type(err).__name__}: {err}") from err
    return img


def _gray_to_uint8(arr: np.ndarray, is16: bool) -> np.ndarray:
    """Integer/float grayscale → uint8 by scaling (16-bit: v/257; float in [0,1]: v·255)."""
    if arr.dtype.kind == "f":
        arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        hi = float(arr.max()) if arr.size else 0.0
        if hi <= 1.0:
            arr = arr * 255.0
        return np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    arr = arr.astype(np.int64)
    lo = int(arr.min()) if arr.size else 0
    hi = int(arr.max()) if arr.size else 0
    if is16 or (lo >= 0 and 255 < hi <= 65535):
        return ((np.clip(arr, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
    if lo >= 0 and hi <= 255:
        return arr.astype(np.uint8)
    # wider integer range: min-max stretch
    span = max(hi - lo, 1)
    return ((arr - lo) * 255 // span).astype(np.uint8)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode → "RGB" (alpha dropped; high bit depths rescaled to 8 bit)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(img)
        gray = _gray_to_uint8(arr, is16=mode.startswith("I;16"))
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        return img if img.mode == "RGB" else img.convert("RGB")
    return img.convert("RGB")


def read_image(path: PathLike) -> Image.Image:
    """Read ``path`` as an RGB ``PIL.Image``; any failure (missing included) → :class:`CorruptImageError`."""
    try:
        img = _open_decoded(path)
    except FileNotFoundError as err:
        raise CorruptImageError(path, "file not found (it was listed when the dataset was built)") from err
    try:
        return to_rgb(img)
    except Exception as err:
        raise CorruptImageError(path, f"cannot convert mode {img.mode!r} to RGB: {err}") from err


def mask_array(img: Image.Image) -> np.ndarray:
    """A decoded mask image → uint8 H×W in {0, 1} (fg ⇔ value > 0; colour masks: any channel)."""
    arr = np.asarray(img)
    if arr.ndim == 3:
        if img.mode in ("LA", "La", "PA", "RGBA", "RGBa"):
            arr = arr[..., :-1]
        arr = arr.max(axis=2)
    return (arr > 0).astype(np.uint8)


def read_mask(path: PathLike) -> np.ndarray:
    """Read a mask file → uint8 H×W in {0, 1}.

    A missing file raises ``FileNotFoundError`` (callers apply ``data.masks.on_missing``);
    an undecodable one raises :class:`CorruptImageError` naming it.
    """
    img = _open_decoded(path)
    try:
        return mask_array(img)
    except Exception as err:
        raise CorruptImageError(path, f"cannot read mode {img.mode!r} as a mask: {err}") from err
