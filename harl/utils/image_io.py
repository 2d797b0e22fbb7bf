"""Reading images and masks: the one image reader and the one mask reader of the project.

Torch-free (numpy + PIL), so ``harl-masks`` reads with it without importing the data pipeline;
:mod:`harl.data.image_io` re-exports it for the training loader.

- :func:`read_image` returns an RGB ``PIL.Image`` whatever the file holds: grayscale, palette
  (with or without transparency), RGBA/LA (alpha dropped, as torchvision's loader does), CMYK,
  1-bit, and 16/32-bit integer or float grayscale (rescaled to 8 bit, not clipped).
- :func:`mask_values` turns a decoded mask image into its H×W values (palette masks: the index;
  colour masks: the maximum over the colour channels, alpha dropped).
- :func:`read_mask` (training loader) returns a ``uint8`` H×W array in {0, 1}: a pixel is fg ⇔
  its value > 0 (multi-channel masks: any stored colour channel > 0; palette masks: index > 0).
- :func:`read_mask_values` (``harl-masks import`` / ``eval``) returns the values themselves, so a
  threshold can be applied; it also reads ``.npy`` arrays, and converts the colour spaces other
  than RGB (CMYK, YCbCr, LAB, HSV, RGBX) to RGB before taking the maximum.

A file that cannot be decoded (corrupt, truncated, not an image) raises
:class:`CorruptImageError` in the training readers, whose message and ``path`` name the file
(:func:`read_mask_values` raises :class:`ImageReadError`, the ``harl-masks`` convention). The file
is fully decoded inside the reader (``Image.load``), so truncation is detected here and not later
in a transform.
"""

from __future__ import annotations

import os
from typing import Union

import numpy as np
from PIL import Image

from harl.errors import CorruptImageError, ImageReadError

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


def _decode(path: PathLike) -> Image.Image:
    """Open and fully decode ``path``; PIL's and the OS's exceptions pass through."""
    with open(path, "rb") as f:
        img = _open_any(f, path)
        img.load()
    return img


def _open_decoded(path: PathLike) -> Image.Image:
    """Open and fully decode ``path``. FileNotFoundError passes through; anything else → CorruptImageError."""
    try:
        img = _decode(path)
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


#: modes whose last channel is alpha (dropped)
_ALPHA_LAST = ("LA", "La", "PA", "RGBA", "RGBa")
#: modes converted to RGB first when ``colour="rgb"``
_TO_RGB = ("RGBA", "RGBa", "CMYK", "YCbCr", "LAB", "HSV", "RGBX")


def mask_values(img: Image.Image, colour: str = "channels") -> np.ndarray:
    """A decoded mask image → its H×W values (dtype as stored; 1-bit → uint8 {0, 1}).

    Palette masks give the palette index; multi-channel masks the maximum over the colour channels,
    alpha dropped. ``colour="channels"`` takes the stored channels as they are (the training
    loader); ``colour="rgb"`` converts the other colour spaces to RGB first (``harl-masks``).
    """
    if colour == "rgb" and img.mode in _TO_RGB:
        img = img.convert("RGB")
    elif colour not in ("channels", "rgb"):
        raise ValueError(f"colour must be 'channels' or 'rgb', got {colour!r}")
    arr = np.asarray(img)
    if img.mode == "1":
        arr = arr.astype(np.uint8)
    if arr.ndim == 3:
        if img.mode in _ALPHA_LAST:
            arr = arr[..., :-1]
        arr = arr.max(axis=2)
    return arr


def read_mask(path: PathLike) -> np.ndarray:
    """Read a mask file → uint8 H×W in {0, 1} (the training loader's reader).

    A missing file raises ``FileNotFoundError`` (callers apply ``data.masks.on_missing``);
    an undecodable one raises :class:`CorruptImageError` naming it.
    """
    img = _open_decoded(path)
    try:
        return (mask_values(img) > 0).astype(np.uint8)
    except Exception as err:
        raise CorruptImageError(path, f"cannot read mode {img.mode!r} as a mask: {err}") from err


def read_mask_values(path: str) -> np.ndarray:
    """The raw values of a mask file as an H×W array (any dtype), for ``harl-masks import`` / ``eval``.

    - ``.npy``: a 2-D array, or H×W×C (max over channels);
    - palette PNG/GIF: the palette *indices* (0 = background in VOC-style masks);
    - grayscale / 16-bit / float: the stored values;
    - RGB(A) and other colour spaces: the maximum over the RGB channels (alpha ignored).

    Any failure raises :class:`ImageReadError` naming the file. With threshold 0
    (``read_mask_values(p) > 0``) it agrees with :func:`read_mask` on every PNG/BMP mask.
    """
    try:
        if path.lower().endswith(".npy"):
            arr = np.load(path, allow_pickle=False)
        else:
            arr = mask_values(_decode(path), colour="rgb")
    except FileNotFoundError:
        raise ImageReadError(f"'{path}': file does not exist") from None
    except Exception as err:  # noqa: BLE001
        raise ImageReadError(f"'{path}': cannot read mask ({type(err).__name__}: {err})") from err
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    if arr.ndim != 2 or arr.size == 0:
        raise ImageReadError(f"'{path}': a mask must be 2-D (H×W), got shape {arr.shape}")
    return arr
