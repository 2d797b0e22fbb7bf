"""Mask-generation jobs: what one image's mask is made from, and the run's options.

A job is a picklable callable ``relpath -> (mask, info)`` with ``setup()`` (built once per worker);
:func:`process_one` makes, writes (atomically, no fsync) and describes one image's mask, turning
errors into failure records. Used by :mod:`harl.masks.runner`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np

from harl.errors import ImageReadError, MissingSourceMaskError
from harl.masks.io import encode_mask_png, mask_relpath, read_image_rgb
from harl.masks.registry import GENERATORS, load_builtin_generators
from harl.utils.io import atomic_write_bytes


# ---------------------------------------------------------------------------------------------
# jobs: relpath -> (mask, info)
# ---------------------------------------------------------------------------------------------


class ImageGeneratorJob:
    """Read ``images_root/relpath`` as RGB and run a registered generator on it."""

    def __init__(self, images_root: str, generator: str, params: Any):
        self.images_root = images_root
        self.generator = generator
        self.params = params
        self._fn = None

    @property
    def uses_torch(self) -> bool:
        load_builtin_generators()
        return GENERATORS.get(self.generator).uses_torch

    def setup(self) -> None:
        load_builtin_generators()
        self._fn = GENERATORS.get(self.generator).build(self.params)

    def __call__(self, relpath: str) -> Tuple[np.ndarray, Dict[str, Any]]:
        if self._fn is None:
            self.setup()
        image = read_image_rgb(os.path.join(self.images_root, relpath))
        mask, info = self._fn(image)
        if mask.shape != image.shape[:2]:
            raise RuntimeError(f"generator '{self.generator}' returned a {mask.shape} mask for a "
                               f"{image.shape[:2]} image")
        return mask, info

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fn"] = None  # rebuilt in each worker
        return state


def _result_row(relpath: str, mask: np.ndarray, info: Dict[str, Any]) -> Dict[str, Any]:
    h, w = mask.shape
    return {
        "relpath": relpath,
        "height": int(h),
        "width": int(w),
        "fg_fraction": round(float(np.count_nonzero(mask)) / float(h * w), 6),
        "n_segments": int(info.get("n_segments", -1)),
        "fallback": str(info.get("fallback", "")),
    }


def process_one(job, out_root: str, relpath: str) -> Dict[str, Any]:
    """Make, write (atomically) and describe the mask of one image; errors become failure records."""
    try:
        mask, info = job(relpath)
        atomic_write_bytes(os.path.join(out_root, mask_relpath(relpath)), encode_mask_png(mask), fsync=False)
        return {"ok": True, **_result_row(relpath, mask, info)}
    except KeyboardInterrupt:
        raise
    except Exception as err:  # noqa: BLE001 - one bad image must not stop the run

        msg = str(err) if isinstance(err, (ImageReadError, MissingSourceMaskError)) else f"{type(err).__name__}: {err}"
        return {"ok": False, "relpath": relpath, "error": " ".join(msg.split())}


@dataclass
class RunOptions:
    workers: int = 1             # 1 = in this process; N > 1 = N worker processes
    shard: Tuple[int, int] = (0, 1)
    overwrite: bool = False      # redo every image of the shard (and replace meta.json)
    progress: bool = True
    chunksize: int = 0           # images per task (0 = automatic)
    mp_context: Optional[str] = None  # None: 'spawn' for torch generators, else 'fork' where available
    merge: bool = True           # merge all shard parts into OUT/manifest.csv when complete
