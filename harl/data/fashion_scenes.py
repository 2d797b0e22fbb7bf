"""fashion-scenes: a deterministic, CPU-sized demo dataset of one Fashion-MNIST item on clutter.

Each scene is a ``size``×``size`` RGB image: a background (by default a random square crop of one of
scikit-image's sample photos, resized), plus one Fashion-MNIST item resized to a random side of
``scale`` × ``size``, optionally tinted, pasted at a random position where its intensity exceeds
``threshold``. That silhouette is written as the ground-truth foreground mask (PNG, 0/255), so
object-aware methods (HARL, HAPiCL, SGM) can be trained and checked against a known mask.

Layout written under ``out``::

    params.json                                   written first: generator, version, parameters
    images/{train,test}/<class_name>/<id>.png     RGB scenes (ImageFolder layout)
    masks/{train,test}/<class_name>/<id>.png      L masks, {0, 255}, same relative path
    masks/<split>/manifest.csv                    docs/masks.md mask manifest (relpath, height, ...)
    images/test_<style>/..., masks/test_<style>/  optional test variants (same items and layout as
                                                  ``test``, background replaced by ``<style>``)
    manifest.csv                                  one row per scene: source item, layout, fg fraction
    meta.json                                     written last: parameters, counts, train mean/std

Determinism: every random draw of scene ``i`` of a split comes from generators seeded by
``(seed, split, purpose, i)`` and all integer statistics are summed exactly, so the tree is
byte-identical for the same parameters whatever the number of workers, the chunking, or how many
times a run was interrupted and resumed. Train scenes use only Fashion-MNIST train items, test
scenes only test items. Scenes come in blocks of ten holding each class once (in a seeded order), so
every prefix is class-balanced to ±1; within a class the items are drawn without replacement (in a
seeded permutation) until the split's items run out, then reused.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import multiprocessing as mp
import os
import shutil
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from harl.data.fashion_mnist import CLASS_NAMES, NUM_CLASSES, read_fashion_mnist
from harl.registry import Registry
from harl.errors import SceneTreeMismatchError
from harl.utils.io import atomic_write_with
from harl.utils.procs import die_with_parent

GENERATOR_NAME = "fashion-scenes"
GENERATOR_VERSION = "1.0"

#: Per-channel mean / std (RGB, [0, 1]) of the train images of the default configuration
#: (``FashionScenesParams()``: 60k train scenes, 32 px, seed 0), measured with this generator
#: (meta.json: mean 0.477323 0.417491 0.398890, std 0.226118 0.208324 0.217945).
SCENES_MEAN: Tuple[float, float, float] = (0.4773, 0.4175, 0.3989)
SCENES_STD: Tuple[float, float, float] = (0.2261, 0.2083, 0.2179)

_RESAMPLE_BILINEAR = getattr(Image, "Resampling", Image).BILINEAR


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


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------

class SceneContext:
    """What rendering needs: parameters, the Fashion-MNIST items of the used splits, the photos.

    Picklable (for worker processes started with ``spawn``); per-class item orders are cached.
    """

    def __init__(self, params: FashionScenesParams, items: Dict[str, Tuple[np.ndarray, np.ndarray]],
                 photos: Dict[str, Image.Image]):
        self.params = params
        self.items = items
        self.photos = photos
        self.palette = np.array([_parse_hex(c) for c in params.palette], dtype=np.int64)
        self._item_orders: Dict[Tuple[str, int], np.ndarray] = {}

    @classmethod
    def load(cls, params: FashionScenesParams, fmnist_root: Optional[str] = None) -> "SceneContext":
        needed = {s.source for s in output_splits(params) if s.count > 0}
        items = {s: read_fashion_mnist(fmnist_root, s) for s in sorted(needed)}
        styles = {params.background} | set(params.test_variants)
        photos = {name: load_photo(name) for name in params.photos} if "photo" in styles else {}
        if "unseen_photo" in styles:
            photos.update({name: load_photo(name) for name in params.unseen_photos})
        return cls(params, items, photos)

    def item_order(self, source: str, label: int) -> np.ndarray:
        """Seeded permutation of the indices of class ``label`` in the ``source`` split."""
        key = (source, label)
        if key not in self._item_orders:
            labels = self.items[source][1]
            idx = np.flatnonzero(labels == label)
            if len(idx) == 0:
                raise ValueError(f"Fashion-MNIST '{source}' split has no item of class {label} "
                                 f"({CLASS_NAMES[label]}); cannot build class-balanced scenes")
            self._item_orders[key] = _rng(self.params, source, _PURPOSE_ITEM_ORDER, label).permutation(idx)
        return self._item_orders[key]

    def assign(self, source: str, index: int) -> Tuple[int, int]:
        """``(label, source_item_index)`` of scene ``index``: blocks of ten scenes hold each class once."""
        block, pos = divmod(index, NUM_CLASSES)
        label = int(_rng(self.params, source, _PURPOSE_CLASS_ORDER, block).permutation(NUM_CLASSES)[pos])
        order = self.item_order(source, label)
        return label, int(order[block % len(order)])


BackgroundFn = Callable[[np.random.Generator, SceneContext], Tuple[np.ndarray, str]]
BACKGROUNDS: Registry[BackgroundFn] = Registry("background style")
TintFn = Callable[[np.random.Generator, SceneContext], np.ndarray]
TINTS: Registry[TintFn] = Registry("tint mode")


@BACKGROUNDS.register("photo")
def _bg_photo(rng: np.random.Generator, ctx: SceneContext) -> Tuple[np.ndarray, str]:
    return _photo_crop(rng, ctx, ctx.params.photos, pool_set=0)


@BACKGROUNDS.register("unseen_photo")
def _bg_unseen_photo(rng: np.random.Generator, ctx: SceneContext) -> Tuple[np.ndarray, str]:
    return _photo_crop(rng, ctx, ctx.params.unseen_photos, pool_set=1)


def _photo_crop(rng: np.random.Generator, ctx: SceneContext, names: Tuple[str, ...], pool_set: int
                ) -> Tuple[np.ndarray, str]:
    """A random square crop (side ∈ bg_crop × the photo's shorter side) of one of ``names``,
    resized to the scene size and flipped with probability 1/2. With ``bg_pool = N > 0`` the crop
    is entry ``k`` (drawn from ``rng``) of a fixed pool of N crops of ``names``: entry ``k`` is
    drawn from its own generator, seeded by (seed, ``pool_set``, k), the same for every split."""
    p = ctx.params
    if p.bg_pool > 0:
        k = int(rng.integers(p.bg_pool))
        rng = np.random.default_rng(np.random.SeedSequence([p.seed, _POOL_CODE, pool_set, k]))
    name = names[int(rng.integers(len(names)))]
    photo = ctx.photos[name]
    w, h = photo.size
    side = int(round(float(rng.uniform(p.bg_crop[0], p.bg_crop[1])) * min(w, h)))
    side = min(max(side, 1), min(w, h))
    x0 = int(rng.integers(0, w - side + 1))
    y0 = int(rng.integers(0, h - side + 1))
    flip = bool(rng.random() < 0.5)
    im = photo.resize((p.size, p.size), _RESAMPLE_BILINEAR, box=(x0, y0, x0 + side, y0 + side))
    arr = np.asarray(im, dtype=np.uint8)
    if flip:
        arr = arr[:, ::-1]
    return np.array(arr, dtype=np.uint8), f"{name}:{x0},{y0},{side}" + (",flip" if flip else "")


@BACKGROUNDS.register("plain")
def _bg_plain(rng: np.random.Generator, ctx: SceneContext) -> Tuple[np.ndarray, str]:
    rgb = rng.integers(0, 256, size=3, dtype=np.int64).astype(np.uint8)
    s = ctx.params.size
    return np.broadcast_to(rgb, (s, s, 3)).copy(), "#%02x%02x%02x" % tuple(int(v) for v in rgb)


@BACKGROUNDS.register("noise")
def _bg_noise(rng: np.random.Generator, ctx: SceneContext) -> Tuple[np.ndarray, str]:
    s = ctx.params.size
    return rng.integers(0, 256, size=(s, s, 3), dtype=np.uint8), ""


@BACKGROUNDS.register("black")
def _bg_black(rng: np.random.Generator, ctx: SceneContext) -> Tuple[np.ndarray, str]:
    s = ctx.params.size
    return np.zeros((s, s, 3), dtype=np.uint8), ""


@TINTS.register("none")
def _tint_none(rng: np.random.Generator, ctx: SceneContext) -> np.ndarray:
    return np.array([255, 255, 255], dtype=np.int64)


@TINTS.register("palette")
def _tint_palette(rng: np.random.Generator, ctx: SceneContext) -> np.ndarray:
    return ctx.palette[int(rng.integers(len(ctx.palette)))].copy()


@TINTS.register("random")
def _tint_random(rng: np.random.Generator, ctx: SceneContext) -> np.ndarray:
    rgb = rng.integers(0, 256, size=3, dtype=np.int64)
    k = int(np.argmax(rgb))
    rgb[k] = max(int(rgb[k]), 128)  # keep the item visible on black
    return rgb


def render_background(ctx: SceneContext, source: str, index: int, style: Optional[str] = None
                      ) -> Tuple[np.ndarray, str]:
    """Background of scene ``index`` (uint8 H×W×3) and a short description of it."""
    rng = _rng(ctx.params, source, _PURPOSE_SCENE_BACKGROUND, index)
    image, detail = BACKGROUNDS.get(style or ctx.params.background)(rng, ctx)
    c = ctx.params.bg_contrast
    if c != 1.0:  # integer arithmetic: byte-identical on every platform
        mean = image.reshape(-1, 3).astype(np.int64).sum(0) // (image.shape[0] * image.shape[1])
        k = int(round(c * 1024))
        image = (mean + ((image.astype(np.int64) - mean) * k + 512) // 1024).clip(0, 255).astype(np.uint8)
    if ctx.params.bg_dim != 1.0:
        k = int(round(ctx.params.bg_dim * 1024))
        image = ((image.astype(np.int64) * k + 512) // 1024).astype(np.uint8)
    return image, detail


def render_scene(ctx: SceneContext, source: str, index: int, background: Optional[str] = None
                 ) -> Tuple[np.ndarray, np.ndarray, dict]:
    """Render scene ``index`` of the ``source`` ('train' / 'test') scenes.

    Returns ``(image, mask, record)``: image uint8 H×W×3, mask uint8 H×W in {0, 255}, and a dict
    describing the scene (label, source item, object box, tint, background, fg fraction).
    ``background`` overrides the style (test variants); the object and its layout do not change.
    """
    p = ctx.params
    label, item_index = ctx.assign(source, index)
    rng = _rng(p, source, _PURPOSE_SCENE_OBJECT, index)
    side = int(round(float(rng.uniform(p.scale[0], p.scale[1])) * p.size))
    side = min(max(side, 2), p.size)
    x = int(rng.integers(0, p.size - side + 1))
    y = int(rng.integers(0, p.size - side + 1))
    colour = TINTS.get(p.tint)(rng, ctx)

    item = Image.fromarray(ctx.items[source][0][item_index], "L")
    v = np.asarray(item.resize((side, side), _RESAMPLE_BILINEAR), dtype=np.int64)
    alpha = v > p.threshold * 255.0
    fg = (colour[None, None, :] * v[:, :, None] + 127) // 255

    image, bg_detail = render_background(ctx, source, index, background)
    patch = image[y:y + side, x:x + side]
    patch[alpha] = fg[alpha].astype(np.uint8)
    mask = np.zeros((p.size, p.size), dtype=np.uint8)
    mask[y:y + side, x:x + side][alpha] = 255
    fg_pixels = int(alpha.sum())
    record = {
        "label": label, "class_name": CLASS_NAMES[label], "source_split": source, "source_index": item_index,
        "height": p.size, "width": p.size, "fg_pixels": fg_pixels,
        "fg_fraction": fg_pixels / float(p.size * p.size),
        "background": background or p.background, "bg_detail": bg_detail,
        "obj_x": x, "obj_y": y, "obj_size": side, "tint": "#%02x%02x%02x" % tuple(int(c) for c in colour),
    }
    return image, mask, record


# ----------------------------------------------------------------------------------------------
# Writing (atomic, resumable)
# ----------------------------------------------------------------------------------------------

_TMP_MARK = ".tmp."


def _atomic_write_bytes(path: str, data: bytes) -> None:
    """The project's atomic writer with a hidden temporary name (``.<name>.tmp.<pid>``: skipped by
    tree walks, removed as stale on resume) and no fsync (thousands of small PNGs)."""
    d, name = os.path.split(path)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write_with(path, write, fsync=False, tmp=os.path.join(d, f".{name}{_TMP_MARK}{os.getpid()}"))


def _png_bytes(arr: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG")
    return buf.getvalue()


def _atomic_write_text(path: str, text: str) -> None:
    _atomic_write_bytes(path, text.encode("utf-8"))


_WORKER_CTX: Optional[SceneContext] = None
_WORKER_OUT: Optional[str] = None


def _init_pool_worker(parent_pid: int, ctx: SceneContext, out_dir: str) -> None:
    """Pool initializer: the worker exits when the generating process dies (kill -9 included)."""
    die_with_parent(parent_pid)
    _init_worker(ctx, out_dir)


def _init_worker(ctx: SceneContext, out_dir: str) -> None:
    global _WORKER_CTX, _WORKER_OUT
    _WORKER_CTX, _WORKER_OUT = ctx, out_dir


def _run_chunk(task: Tuple[str, str, Optional[str], int, int]) -> dict:
    """Render scenes [start, stop) of one output split; write those whose files are missing.

    Returns the scene records and exact integer pixel sums (so the totals do not depend on the
    order in which chunks finish).
    """
    ctx, out_dir = _WORKER_CTX, _WORKER_OUT
    split, source, style, start, stop = task
    img_dir, mask_dir = scene_split_dirs(out_dir, split)
    records = []
    ch_sum = np.zeros(3, dtype=np.int64)
    ch_sq = np.zeros(3, dtype=np.int64)
    written = 0
    for i in range(start, stop):
        image, mask, rec = render_scene(ctx, source, i, style)
        rel = scene_relpath(ctx.params, rec["label"], i)
        ipath, mpath = os.path.join(img_dir, rel), os.path.join(mask_dir, rel)
        if not os.path.exists(ipath):
            _atomic_write_bytes(ipath, _png_bytes(image, "RGB"))
            written += 1
        if not os.path.exists(mpath):
            _atomic_write_bytes(mpath, _png_bytes(mask, "L"))
        flat = image.reshape(-1, 3).astype(np.int64)
        ch_sum += flat.sum(0)
        ch_sq += (flat * flat).sum(0)
        rec.update(split=split, index=i, relpath=rel)
        records.append(rec)
    return {"split": split, "start": start, "records": records, "sum": ch_sum.tolist(),
            "sumsq": ch_sq.tolist(), "written": written}


# ----------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------

_OWNED = ("images", "masks", "manifest.csv", "meta.json", "params.json")
MANIFEST_FIELDS = ("split", "index", "relpath", "label", "class_name", "source_split", "source_index",
                   "height", "width", "fg_fraction", "background", "bg_detail", "obj_x", "obj_y",
                   "obj_size", "tint")


def _identity(params: FashionScenesParams) -> dict:
    return {"generator": GENERATOR_NAME, "version": GENERATOR_VERSION, "params": params.to_dict()}


#: parameters added after version 1.0, with the value that renders exactly what older trees hold
#: (a params.json written before a key existed is read as having this value)
_ADDED_DEFAULTS = {"bg_pool": 0, "bg_contrast": 1.0, "bg_dim": 1.0}


def _with_added_defaults(identity: dict) -> dict:
    if isinstance(identity, dict) and isinstance(identity.get("params"), dict):
        identity = dict(identity, params={**_ADDED_DEFAULTS, **identity["params"]})
    return identity


def _remove_owned(out_dir: str) -> None:
    for name in _OWNED:
        p = os.path.join(out_dir, name)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        elif os.path.lexists(p):
            os.remove(p)


def _check_existing(out_dir: str, params: FashionScenesParams, force: bool) -> None:
    """Refuse (unless ``force``) to touch a tree made with other parameters; with ``force`` remove it."""
    ppath = os.path.join(out_dir, "params.json")
    present = [n for n in _OWNED if os.path.lexists(os.path.join(out_dir, n))]
    if not present:
        return
    problem = None
    if not os.path.exists(ppath):
        problem = (f"{out_dir} already holds {', '.join(present)} but no params.json: not a fashion-scenes "
                   f"tree (or one from an unknown run)")
    else:
        try:
            with open(ppath, encoding="utf-8") as f:
                old = json.load(f)
        except (OSError, ValueError) as err:
            old, problem = None, f"{ppath} is unreadable ({err})"
        if old is not None and _with_added_defaults(old) != _identity(params):
            diffs = []
            if old.get("generator") != GENERATOR_NAME or old.get("version") != GENERATOR_VERSION:
                diffs.append(f"generator {old.get('generator')} {old.get('version')} ≠ "
                             f"{GENERATOR_NAME} {GENERATOR_VERSION}")
            old_params = old.get("params", {}) if isinstance(old.get("params"), dict) else {}
            for k, v in params.to_dict().items():
                if old_params.get(k, _ADDED_DEFAULTS.get(k)) != v:
                    diffs.append(f"{k}: existing {old_params.get(k)!r} vs requested {v!r}")
            problem = f"{out_dir} was generated with different parameters ({'; '.join(diffs) or 'see params.json'})"
    if problem is None:
        return
    if not force:
        raise SceneTreeMismatchError(problem + ". Choose another --out, or pass --force (force=True) to "
                                               "delete it and regenerate.")
    _remove_owned(out_dir)


def _remove_stale_temps(out_dir: str) -> int:
    n = 0
    for top in ("images", "masks"):
        for dirpath, _dirs, files in os.walk(os.path.join(out_dir, top)):
            for name in files:
                if name.startswith(".") and _TMP_MARK in name:
                    os.remove(os.path.join(dirpath, name))
                    n += 1
    for name in os.listdir(out_dir):
        if name.startswith(".") and _TMP_MARK in name:
            os.remove(os.path.join(out_dir, name))
            n += 1
    return n


def _tasks(params: FashionScenesParams, chunk: int) -> List[Tuple[str, str, Optional[str], int, int]]:
    tasks = []
    for s in output_splits(params):
        for start in range(0, s.count, chunk):
            tasks.append((s.name, s.source, s.background, start, min(start + chunk, s.count)))
    return tasks


def _source_fingerprint(ctx: SceneContext) -> Dict[str, str]:
    out = {}
    for split, (images, labels) in sorted(ctx.items.items()):
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(images).tobytes())
        h.update(np.ascontiguousarray(labels).astype("<i8").tobytes())
        out[split] = h.hexdigest()
    return out


def _software() -> Dict[str, str]:
    import PIL

    try:
        import skimage
        sk = skimage.__version__
    except Exception:  # pragma: no cover
        sk = "unavailable"
    return {"numpy": np.__version__, "pillow": PIL.__version__, "scikit-image": sk}


def generate_fashion_scenes(out_dir: str, params: Optional[FashionScenesParams] = None, *,
                            workers: int = 1, force: bool = False, progress: bool = True,
                            fmnist_root: Optional[str] = None, chunk_size: Optional[int] = None,
                            **overrides) -> dict:
    """Generate (or finish, or verify) a fashion-scenes tree under ``out_dir``; return its meta dict.

    ``params`` defaults to ``FashionScenesParams()``; keyword ``overrides`` replace single fields
    (``generate_fashion_scenes("out", size=64, n_train=1000)``). ``workers`` processes render in
    parallel (the output does not depend on it). Scenes whose image and mask both exist are not
    rewritten, so an interrupted run is finished by running it again; ``meta.json`` is written last.
    A tree made with different parameters raises :class:`SceneTreeMismatchError` unless ``force``,
    which deletes it (only the paths this generator writes) first. ``fmnist_root``: folder of the
    Fashion-MNIST IDX files (default: Debian's location).
    """
    params = params or FashionScenesParams()
    if overrides:
        params = params.replace(**overrides)
    if workers < 1:
        raise ValueError(f"workers={workers}: need ≥ 1")
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise SceneTreeMismatchError(f"{out_dir} exists and is not a folder")
    os.makedirs(out_dir, exist_ok=True)
    _check_existing(out_dir, params, force)
    ppath = os.path.join(out_dir, "params.json")
    if not os.path.exists(ppath):
        _atomic_write_text(ppath, json.dumps(_identity(params), indent=2) + "\n")
    _remove_stale_temps(out_dir)

    ctx = SceneContext.load(params, fmnist_root)
    splits = output_splits(params)
    meta_path = os.path.join(out_dir, "meta.json")
    if os.path.exists(meta_path) and _tree_complete(out_dir, ctx, splits):
        with open(meta_path, encoding="utf-8") as f:
            return json.load(f)
    if os.path.exists(meta_path):
        os.remove(meta_path)  # the tree is being repaired: unfinished until meta.json is back

    for s in splits:
        for name in CLASS_NAMES:
            for d in scene_split_dirs(out_dir, s.name):
                os.makedirs(os.path.join(d, name), exist_ok=True)

    total = sum(s.count for s in splits)
    if chunk_size is None:
        chunk_size = int(min(1000, max(50, total // max(1, workers * 16))))
    tasks = _tasks(params, chunk_size)
    results = []
    from tqdm.auto import tqdm

    with tqdm(total=total, disable=not progress, unit="scene", desc="fashion-scenes", dynamic_ncols=True) as bar:
        if workers == 1 or len(tasks) <= 1:
            _init_worker(ctx, out_dir)
            try:
                for t in tasks:
                    r = _run_chunk(t)
                    results.append(r)
                    bar.update(len(r["records"]))
            finally:
                _init_worker(None, None)  # type: ignore[arg-type]
        else:
            methods = mp.get_all_start_methods()
            mpctx = mp.get_context("fork") if "fork" in methods else mp.get_context()
            with mpctx.Pool(min(workers, len(tasks)), initializer=_init_pool_worker,
                          initargs=(os.getpid(), ctx, out_dir)) as pool:
                for r in pool.imap_unordered(_run_chunk, tasks):
                    results.append(r)
                    bar.update(len(r["records"]))

    meta = _finish(out_dir, params, ctx, splits, results)
    return meta


def _tree_complete(out_dir: str, ctx: SceneContext, splits: Sequence[OutputSplit]) -> bool:
    for s in splits:
        img_dir, mask_dir = scene_split_dirs(out_dir, s.name)
        for i in range(s.count):
            label, _ = ctx.assign(s.source, i)
            rel = scene_relpath(ctx.params, label, i)
            if not (os.path.exists(os.path.join(img_dir, rel)) and os.path.exists(os.path.join(mask_dir, rel))):
                return False
    return os.path.exists(os.path.join(out_dir, "manifest.csv"))


def _finish(out_dir: str, params: FashionScenesParams, ctx: SceneContext, splits: Sequence[OutputSplit],
            results: Iterable[dict]) -> dict:
    by_split: Dict[str, List[dict]] = {s.name: [] for s in splits}
    sums = {s.name: np.zeros(3, dtype=np.int64) for s in splits}
    sqs = {s.name: np.zeros(3, dtype=np.int64) for s in splits}
    for r in results:
        by_split[r["split"]].extend(r["records"])
        sums[r["split"]] += np.asarray(r["sum"], dtype=np.int64)
        sqs[r["split"]] += np.asarray(r["sumsq"], dtype=np.int64)

    # scene manifest (all splits) + docs/masks.md mask manifests (one per split)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(MANIFEST_FIELDS)
    split_meta = {}
    for s in splits:
        recs = sorted(by_split[s.name], key=lambda r: r["index"])
        mbuf = io.StringIO()
        mw = csv.writer(mbuf, lineterminator="\n")
        mw.writerow(("relpath", "height", "width", "fg_fraction", "n_segments", "fallback"))
        fg_total = 0
        class_counts = [0] * NUM_CLASSES
        for r in recs:
            row = dict(r, fg_fraction=f"{r['fg_fraction']:.6f}")
            w.writerow([row[k] for k in MANIFEST_FIELDS])
            mw.writerow((r["relpath"], r["height"], r["width"], f"{r['fg_fraction']:.6f}", 1, ""))
            fg_total += r["fg_pixels"]
            class_counts[r["label"]] += 1
        _atomic_write_text(os.path.join(scene_split_dirs(out_dir, s.name)[1], "manifest.csv"), mbuf.getvalue())
        n_pix = max(1, s.count * params.size * params.size)
        mean = sums[s.name] / (255.0 * n_pix)
        var = sqs[s.name] / (255.0 ** 2 * n_pix) - mean ** 2
        std = np.sqrt(np.maximum(var, 0.0))
        split_meta[s.name] = {
            "count": s.count,
            "source_split": s.source,
            "background": s.background or params.background,
            "images": f"images/{s.name}",
            "masks": f"masks/{s.name}",
            "class_counts": dict(zip(CLASS_NAMES, class_counts)),
            "mean": [round(float(v), 6) for v in mean],
            "std": [round(float(v), 6) for v in std],
            "fg_fraction_mean": round(fg_total / float(n_pix), 6),
        }
    _atomic_write_text(os.path.join(out_dir, "manifest.csv"), buf.getvalue())

    train = split_meta["train"]
    meta = {
        "generator": GENERATOR_NAME,
        "version": GENERATOR_VERSION,
        "params": params.to_dict(),
        "class_names": list(CLASS_NAMES),
        "counts": {s.name: s.count for s in splits},
        "mean": train["mean"],
        "std": train["std"],
        "fg_fraction_mean": train["fg_fraction_mean"],
        "splits": split_meta,
        "layout": {"images": "images/<split>/<class_name>/<id>.png (RGB)",
                   "masks": "masks/<split>/<class_name>/<id>.png (L, 0/255; fg = 255)",
                   "manifest": "manifest.csv", "mask_manifests": "masks/<split>/manifest.csv"},
        "source_sha256": _source_fingerprint(ctx),
        "software": _software(),
    }
    _atomic_write_text(os.path.join(out_dir, "meta.json"), json.dumps(meta, indent=2) + "\n")
    return meta


def read_meta(out_dir: str) -> dict:
    """Load ``<out_dir>/meta.json``; a missing file means the tree is unfinished (clear error)."""
    path = os.path.join(out_dir, "meta.json")
    if not os.path.exists(path):
        hint = " (params.json is there: the generation was interrupted; rerun it to finish)" \
            if os.path.exists(os.path.join(out_dir, "params.json")) else ""
        raise FileNotFoundError(f"{path} not found: not a finished fashion-scenes tree{hint}")
    with open(path, encoding="utf-8") as f:
        return json.load(f)
