"""The background photos of fashion-scenes: scikit-image sample data that ships inside the wheel
(no download), by name (``PHOTOS``), and the default photo sets and tint palette."""

from __future__ import annotations

from typing import Callable, Tuple

import numpy as np
from PIL import Image

from harl.registry import Registry

# ----------------------------------------------------------------------------------------------
# Background photos (scikit-image sample data that ships inside the wheel: no download needed)
# ----------------------------------------------------------------------------------------------

def _skimage_photo(name: str, pick: int = -1) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        try:
            img = getattr(skimage.data, name)()
        except Exception as err:  # a missing optional download (pooch) or a removed sample
            raise RuntimeError(f"background photo '{name}': skimage.data.{name}() failed ({err})") from err
        if pick >= 0:
            img = img[pick]
        return np.asarray(img)

    return load


#: name → loader of every photo the ``photo`` background may use (natural scenes and textures).
PHOTOS: Registry[Callable[[], np.ndarray]] = Registry("background photo")
for _name in ("astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
              "hubble_deep_field", "immunohistochemistry", "moon", "retina", "rocket"):
    PHOTOS.register(_name, _skimage_photo(_name))
PHOTOS.register("stereo_motorcycle", _skimage_photo("stereo_motorcycle", pick=0))
for _name in ("cell", "colorwheel", "page", "text"):
    PHOTOS.register(_name, _skimage_photo(_name))

#: the photos used by default: 13 colour or grayscale photos of scenes and natural textures
DEFAULT_PHOTOS: Tuple[str, ...] = (
    "astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
    "immunohistochemistry", "moon", "rocket", "stereo_motorcycle",
)
#: photos kept out of training by default: the ``unseen_photo`` test variant draws its backgrounds
#: from these, so a probe on it measures robustness to backgrounds the backbone never saw
DEFAULT_UNSEEN_PHOTOS: Tuple[str, ...] = ("cell", "colorwheel", "hubble_deep_field", "page", "retina")
#: a small class-agnostic palette for ``tint='palette'`` (each colour has a channel ≥ 128)
DEFAULT_PALETTE: Tuple[str, ...] = (
    "#ffffff", "#e6194b", "#f58231", "#ffe119", "#3cb44b", "#42d4f4", "#4363d8", "#f032e6",
)


def load_photo(name: str) -> Image.Image:
    """Load one registered background photo as an RGB PIL image (grayscale is replicated)."""
    arr = PHOTOS.get(name)()
    if arr.dtype != np.uint8:
        raise RuntimeError(f"background photo '{name}' has dtype {arr.dtype}, expected uint8")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise RuntimeError(f"background photo '{name}' has shape {arr.shape}, expected H×W or H×W×3")
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")
