"""Rendering one scene: its background (photo crop, plain colour, noise, black; pool, contrast and
dimming), the item's tint, the pasted item and its mask. Pure functions of (parameters, split, index)."""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import numpy as np
from PIL import Image

from harl.data.fashion_mnist import CLASS_NAMES, NUM_CLASSES, read_fashion_mnist
from harl.data.fashion_scenes.params import (
    _POOL_CODE, _PURPOSE_CLASS_ORDER, _PURPOSE_ITEM_ORDER, _PURPOSE_SCENE_BACKGROUND, _PURPOSE_SCENE_OBJECT,
    _RESAMPLE_BILINEAR, FashionScenesParams, _parse_hex, _rng, output_splits,
)
from harl.data.fashion_scenes.photos import load_photo
from harl.registry import Registry

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
