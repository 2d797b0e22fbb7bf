"""Every knob of the fashion-scenes generator (``FashionScenesParams``), the generator's identity, the
output splits and the seeded random streams of each scene."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image

from harl.data.fashion_mnist import CLASS_NAMES
from harl.data.fashion_scenes.photos import DEFAULT_PALETTE, DEFAULT_PHOTOS, DEFAULT_UNSEEN_PHOTOS, PHOTOS

GENERATOR_NAME = "fashion-scenes"
GENERATOR_VERSION = "1.0"

#: Per-channel mean / std (RGB, [0, 1]) of the train images of the default configuration
#: (``FashionScenesParams()``: 60k train scenes, 32 px, seed 0), measured with this generator
#: (meta.json: mean 0.477323 0.417491 0.398890, std 0.226118 0.208324 0.217945).
SCENES_MEAN: Tuple[float, float, float] = (0.4773, 0.4175, 0.3989)
SCENES_STD: Tuple[float, float, float] = (0.2261, 0.2083, 0.2179)

_RESAMPLE_BILINEAR = getattr(Image, "Resampling", Image).BILINEAR


# ----------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------

BACKGROUND_STYLES = ("photo", "plain", "noise", "black", "unseen_photo")
#: styles only a test variant may use (never the training background)
TEST_ONLY_STYLES = ("unseen_photo",)
TINT_MODES = ("none", "palette", "random")


def _parse_hex(colour: str) -> Tuple[int, int, int]:
    s = colour.lstrip("#")
    if len(s) != 6:
        raise ValueError(f"palette colour '{colour}' is not #rrggbb")
    try:
        rgb = tuple(int(s[i:i + 2], 16) for i in (0, 2, 4))
    except ValueError:
        raise ValueError(f"palette colour '{colour}' is not #rrggbb") from None
    if max(rgb) < 128:
        raise ValueError(f"palette colour '{colour}' is too dark (needs a channel ≥ 128 so the item "
                         f"stays visible on a black background)")
    return rgb  # type: ignore[return-value]


@dataclass(frozen=True)
class FashionScenesParams:
    """Every knob of the generator, with the defaults in one place.

    size:          image side in pixels (32, 64, ...).
    scale:         (min, max) object side as a fraction of ``size``; drawn uniformly per scene.
    background:    ``photo`` (crop of a sample photo), ``plain`` (one random colour),
                   ``noise`` (i.i.d. uniform RGB noise) or ``black``.
    tint:          ``none`` (grayscale item), ``palette`` (a colour of ``palette``, independent of the
                   class) or ``random`` (random RGB per scene: an instance shortcut, kept as an option).
    n_train:       number of train scenes (default: one per Fashion-MNIST train item).
    n_test:        number of test scenes (default: one per test item).
    seed:          base seed (≥ 0).
    threshold:     alpha = item intensity / 255 > threshold (after resizing); that is the mask.
    bg_crop:       (min, max) side of the square background crop as a fraction of the photo's
                   shorter side (``photo`` only).
    photos:        names from :data:`PHOTOS` used by ``photo``.
    palette:       ``#rrggbb`` colours for ``tint='palette'``.
    test_variants: extra test splits ``test_<style>`` with the test scenes' items and layout on
                   another background style, for robustness evaluation (e.g. ``("black", "plain")``;
                   ``unseen_photo`` = crops of ``unseen_photos``, never used for training).
    unseen_photos: names from :data:`PHOTOS` for the ``unseen_photo`` test variant; must not
                   overlap ``photos``.
    bg_contrast:   clutter strength in [0, 1]: background = its mean colour + bg_contrast × (background −
                   its mean colour), per channel (1 = the background as drawn, 0 = its flat mean colour).
    bg_dim:        background brightness factor in [0, 1], applied after ``bg_contrast``: background ×
                   bg_dim (1 = as drawn, 0 = black); a dim cluttered background.
    bg_pool:       0 = every scene gets its own background crop; N > 0 = the photo backgrounds are
                   drawn from a fixed pool of N crops (one pool for ``photos``, shared by the train and
                   test splits, another for ``unseen_photos``), so many scenes share each cluttered
                   background and the background alone cannot tell two scenes apart.
    """

    size: int = 32
    scale: Tuple[float, float] = (0.4, 0.75)
    background: str = "photo"
    tint: str = "palette"
    n_train: int = 60000
    n_test: int = 10000
    seed: int = 0
    threshold: float = 0.1
    bg_crop: Tuple[float, float] = (0.15, 0.5)
    photos: Tuple[str, ...] = DEFAULT_PHOTOS
    palette: Tuple[str, ...] = DEFAULT_PALETTE
    test_variants: Tuple[str, ...] = ()
    unseen_photos: Tuple[str, ...] = DEFAULT_UNSEEN_PHOTOS
    bg_pool: int = 0
    bg_contrast: float = 1.0
    bg_dim: float = 1.0

    def __post_init__(self):
        for name in ("scale", "bg_crop", "photos", "palette", "test_variants", "unseen_photos"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            object.__setattr__(self, name, tuple(value))
        object.__setattr__(self, "scale", tuple(float(v) for v in self.scale))
        object.__setattr__(self, "bg_crop", tuple(float(v) for v in self.bg_crop))
        self.validate()

    def validate(self) -> None:
        def bad(msg):
            raise ValueError(f"fashion-scenes parameter {msg}")

        if not isinstance(self.size, int) or self.size < 8:
            bad(f"size={self.size!r}: need an integer ≥ 8")
        if len(self.scale) != 2 or not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            bad(f"scale={self.scale}: need 0 < min ≤ max ≤ 1 (fractions of the image side)")
        if self.background not in BACKGROUND_STYLES:
            bad(f"background='{self.background}': choose from {', '.join(BACKGROUND_STYLES)}")
        if self.tint not in TINT_MODES:
            bad(f"tint='{self.tint}': choose from {', '.join(TINT_MODES)}")
        for name in ("n_train", "n_test", "seed", "bg_pool"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                bad(f"{name}={v!r}: need an integer ≥ 0")
        if not isinstance(self.bg_contrast, (int, float)) or not 0.0 <= self.bg_contrast <= 1.0:
            bad(f"bg_contrast={self.bg_contrast!r}: need 0 ≤ bg_contrast ≤ 1")
        if not isinstance(self.bg_dim, (int, float)) or not 0.0 <= self.bg_dim <= 1.0:
            bad(f"bg_dim={self.bg_dim!r}: need 0 ≤ bg_dim ≤ 1")
        if not 0.0 <= self.threshold < 1.0:
            bad(f"threshold={self.threshold}: need 0 ≤ threshold < 1")
        if len(self.bg_crop) != 2 or not 0.0 < self.bg_crop[0] <= self.bg_crop[1] <= 1.0:
            bad(f"bg_crop={self.bg_crop}: need 0 < min ≤ max ≤ 1")
        if not self.photos:
            bad("photos: need at least one photo name")
        for p in self.photos:
            PHOTOS.get(p)  # raises with the list of known names
        if not self.palette:
            bad("palette: need at least one colour")
        for c in self.palette:
            _parse_hex(c)
        for v in self.test_variants:
            if v not in BACKGROUND_STYLES:
                bad(f"test_variants: '{v}' is not a background style ({', '.join(BACKGROUND_STYLES)})")
        if len(set(self.test_variants)) != len(self.test_variants):
            bad(f"test_variants={self.test_variants}: duplicates")
        if self.background in TEST_ONLY_STYLES:
            bad(f"background='{self.background}' is for test variants only (backgrounds never seen in training)")
        for p in self.unseen_photos:
            PHOTOS.get(p)
        shared = sorted(set(self.unseen_photos) & set(self.photos))
        if shared:
            bad(f"unseen_photos and photos share {', '.join(shared)}: the unseen-backgrounds split "
                "must use photos never used for training")
        if "unseen_photo" in self.test_variants and not self.unseen_photos:
            bad("test_variants has 'unseen_photo' but unseen_photos is empty")

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "FashionScenesParams":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown fashion-scenes parameter(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def replace(self, **changes) -> "FashionScenesParams":
        known = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise TypeError(f"unknown fashion-scenes parameter(s): {', '.join(sorted(unknown))}; "
                            f"known: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------------------------
# Output splits and RNG streams
# ----------------------------------------------------------------------------------------------

_SPLIT_CODE = {"train": 0, "test": 1}
#: first entropy word after the seed of the background-pool generators (not a split code)
_POOL_CODE = 7
_PURPOSE_SCENE_OBJECT, _PURPOSE_SCENE_BACKGROUND, _PURPOSE_CLASS_ORDER, _PURPOSE_ITEM_ORDER = 0, 1, 2, 3


@dataclass(frozen=True)
class OutputSplit:
    """One output split: its folder name, the Fashion-MNIST split its items come from, the number of
    scenes, and the background style (``None`` = the parameters' style)."""

    name: str
    source: str
    count: int
    background: Optional[str] = None


def output_splits(params: FashionScenesParams) -> List[OutputSplit]:
    splits = [OutputSplit("train", "train", params.n_train), OutputSplit("test", "test", params.n_test)]
    splits += [OutputSplit(f"test_{v}", "test", params.n_test, v) for v in params.test_variants]
    return splits


def _rng(params: FashionScenesParams, source: str, purpose: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([params.seed, _SPLIT_CODE[source], purpose, index]))


def id_width(params: FashionScenesParams) -> int:
    return max(6, len(str(max(params.n_train, params.n_test, 1) - 1)))


def scene_relpath(params: FashionScenesParams, label: int, index: int) -> str:
    """Path of scene ``index`` relative to ``images/<split>`` (and ``masks/<split>``)."""
    return f"{CLASS_NAMES[label]}/{index:0{id_width(params)}d}.png"


def scene_split_dirs(out_dir: str, split: str = "train") -> Tuple[str, str]:
    """``(images_dir, masks_dir)`` of one split of a generated tree (``train``, ``test``, ``test_black``...)."""
    return os.path.join(out_dir, "images", split), os.path.join(out_dir, "masks", split)
