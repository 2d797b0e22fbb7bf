"""``JointViewTransform``: one augmentation pipeline for images with or without masks (docs/augmentation.md).

Without masks it is solo-learn's pretraining pipeline, op for op and draw for draw (same
torch / python ``random`` consumption, so the same seeds give the same tensors):

    RandomResizedCrop(S, scale, bicubic) | Resize(S, bicubic) when rrc.enabled is false
    → RandomApply(ColorJitter) → RandomGrayscale → RandomApply(PIL GaussianBlur, σ ~ U[min, max])
    → RandomApply(solarize) → RandomApply(equalize) → RandomHorizontalFlip → ToTensor → Normalize

An op whose probability is 0 is left out (draws nothing), as in solo-learn.

With masks (``masks`` options given) each view additionally

1. draws its crop with the fg-acceptance rule (:func:`sample_crop_box`): up to ``max_tries`` boxes
   with ``torchvision.transforms.RandomResizedCrop.get_params`` semantics, accepted when the fg
   fraction of the mask inside the box (original resolution) is > ``min_fg_frac``; otherwise
   ``crop_fallback`` = ``last`` or ``best``; a mask without fg (or ``min_fg_frac`` null) takes the
   first box (``RandomResizedCrop.get_params`` semantics: :func:`rrc_params`);
2. crops and resizes the mask in one step with nearest neighbour, sampling exactly the pixel
   centres PIL samples for the image, while the image is resized bicubic (PIL, antialiased);
3. shares the horizontal flip (and the optional vertical flip ``vflip_prob``) with the image
   (steps 2–3 are one exact gather, :func:`crop_resize_flip_mask`);
4. leaves the mask out of every photometric op (they are applied to the PIL image only);
5. returns ``(image float 3×S×S, mask uint8 {0,1} 1×S×S, coords float32 [x0, y0, x1, y1])``, the
   box normalised by the original width/height; x0 > x1 after a horizontal flip (y0 > y1 after a
   vertical one).

The flip is drawn after the photometric ops (solo-learn's order); every photometric op here is
flip-equivariant (pointwise, histogram-based, or a symmetric blur), so this equals docs/augmentation.md's
"flip, then photometrics". Randomness comes only from torch's global RNG and python's ``random``
(the blur σ, as solo-learn), never numpy's global RNG.
"""

from __future__ import annotations

import functools
import math
import random
import threading
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F1
import torchvision.transforms.v2.functional as F2
from PIL import Image, ImageFilter, ImageOps
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode

from harl.config import AUGMENTATION_SCHEMA, MASKS_SCHEMA

# the defaults of a view's augmentations and of the mask-aware crop are the config schema's
# (harl.config.AUGMENTATION_SCHEMA / MASKS_SCHEMA): written there once, read here
_AUG = AUGMENTATION_SCHEMA
#: ViewAugmentation field → dotted key of an ``augmentations[i]`` item
_AUG_KEYS = {
    "rrc": "rrc.enabled", "crop_min_scale": "rrc.crop_min_scale", "crop_max_scale": "rrc.crop_max_scale",
    "jitter_prob": "color_jitter.prob", "brightness": "color_jitter.brightness",
    "contrast": "color_jitter.contrast", "saturation": "color_jitter.saturation", "hue": "color_jitter.hue",
    "grayscale_prob": "grayscale.prob", "blur_prob": "gaussian_blur.prob", "sigma_min": "gaussian_blur.sigma_min",
    "sigma_max": "gaussian_blur.sigma_max", "solarization_prob": "solarization.prob",
    "equalization_prob": "equalization.prob", "hflip_prob": "horizontal_flip.prob",
}


def _aug_default(field: str):
    block, key = _AUG_KEYS[field].split(".")
    return _AUG[block][key]

RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
INTERPOLATIONS = {
    "bicubic": InterpolationMode.BICUBIC,
    "bilinear": InterpolationMode.BILINEAR,
    "nearest": InterpolationMode.NEAREST,
}

MaskLike = Union[np.ndarray, torch.Tensor]


# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------


def _get(cfg: Optional[Mapping], dotted: str, default: Any) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if node is None or part not in node:
            return default
        node = node[part]
    return default if node is None else node


@dataclass(frozen=True)
class ViewAugmentation:
    """One ``augmentations[i]`` item (solo-learn keys), with the schema's defaults."""

    crop_size: int
    rrc: bool = _aug_default("rrc")
    crop_min_scale: float = _aug_default("crop_min_scale")
    crop_max_scale: float = _aug_default("crop_max_scale")
    jitter_prob: float = _aug_default("jitter_prob")
    brightness: float = _aug_default("brightness")
    contrast: float = _aug_default("contrast")
    saturation: float = _aug_default("saturation")
    hue: float = _aug_default("hue")
    grayscale_prob: float = _aug_default("grayscale_prob")
    blur_prob: float = _aug_default("blur_prob")
    sigma_min: float = _aug_default("sigma_min")
    sigma_max: float = _aug_default("sigma_max")
    solarization_prob: float = _aug_default("solarization_prob")
    equalization_prob: float = _aug_default("equalization_prob")
    hflip_prob: float = _aug_default("hflip_prob")

    @classmethod
    def from_cfg(cls, aug: Mapping) -> "ViewAugmentation":
        if _get(aug, "crop_size", None) is None:
            raise ValueError("augmentation pipeline needs 'crop_size'")
        values = {name: _get(aug, key, _aug_default(name)) for name, key in _AUG_KEYS.items()}
        return cls(crop_size=int(aug["crop_size"]),
                   **{name: (bool(v) if name == "rrc" else float(v)) for name, v in values.items()})


@dataclass(frozen=True)
class MaskCropOptions:
    """The ``data.masks`` keys that shape a view: fg acceptance, fallback, vertical flip."""

    min_fg_frac: Optional[float] = MASKS_SCHEMA["min_fg_frac"]
    max_tries: int = MASKS_SCHEMA["max_tries"]
    crop_fallback: str = MASKS_SCHEMA["crop_fallback"]
    vflip_prob: float = MASKS_SCHEMA["vflip_prob"]

    def __post_init__(self):
        if self.crop_fallback not in ("last", "best"):
            raise ValueError(f"data.masks.crop_fallback must be 'last' or 'best', got {self.crop_fallback!r}")
        if int(self.max_tries) < 1:
            raise ValueError(f"data.masks.max_tries must be >= 1, got {self.max_tries}")

    @classmethod
    def from_cfg(cls, masks: Mapping) -> "MaskCropOptions":
        mf = masks["min_fg_frac"] if "min_fg_frac" in masks else cls.min_fg_frac
        return cls(
            min_fg_frac=None if mf is None else float(mf),
            max_tries=int(_get(masks, "max_tries", cls.max_tries)),
            crop_fallback=str(_get(masks, "crop_fallback", cls.crop_fallback)),
            vflip_prob=float(_get(masks, "vflip_prob", cls.vflip_prob)),
        )


# ---------------------------------------------------------------------------------------------
# Geometry helpers
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8192)
def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source indices (int64, read-only) PIL's nearest resize samples along one axis of n_in → n_out
    pixels: centre x+½ scaled, accumulated in double exactly as Pillow does (``xo = step/2;
    xo += step``), then truncated. Cached per size pair."""
    step = n_in / n_out
    pos = np.full(n_out, step, dtype=np.float64)
    pos[0] = step * 0.5
    idx = np.minimum(np.cumsum(pos).astype(np.int64), n_in - 1)
    idx.flags.writeable = False
    return idx


def _pil_nearest_indices(n_in: int, n_out: int) -> torch.Tensor:
    return torch.from_numpy(nearest_indices(n_in, n_out).copy())


def crop_resize_flip_mask(mask: np.ndarray, box: Sequence[int], size: Sequence[int], hflip: bool = False,
                          vflip: bool = False) -> np.ndarray:
    """Crop ``box`` = (top, left, h, w) of an H×W mask, resize it to ``size`` = (h', w') with
    pixel-centre nearest (the pixels PIL's nearest resize of the crop would take) and flip it:
    one gather along each axis, exact. Returns a new contiguous h'×w' array.

    This is the mask half of :class:`JointViewTransform`'s geometry. It is done by index
    arithmetic rather than by passing a ``tv_tensors.Mask`` through ``transforms.v2`` functional
    ops: the result is the same (tests check it against PIL), and the v2 dispatch of crop, resize
    and flips on a ``Mask`` cost about ten times as much, a quarter of the loader's throughput
    at 64 px.
    """
    top, left, h, w = (int(v) for v in box)
    rows = nearest_indices(h, int(size[0])) + top
    cols = nearest_indices(w, int(size[1])) + left
    if vflip:
        rows = rows[::-1]
    if hflip:
        cols = cols[::-1]
    return mask.take(rows, axis=0).take(cols, axis=1)


@functools.lru_cache(maxsize=16)
def _log_ratio_bounds(ratio: Tuple[float, float]) -> Tuple[float, float]:
    logs = torch.log(torch.tensor(ratio))  # float32, as torchvision
    return float(logs[0]), float(logs[1])


_RNG_BUFFERS = threading.local()


def _rng_buffers() -> Tuple[torch.Tensor, torch.Tensor]:
    bufs = getattr(_RNG_BUFFERS, "bufs", None)
    if bufs is None:
        bufs = _RNG_BUFFERS.bufs = (torch.empty(1), torch.empty(1, dtype=torch.int64))
    return bufs


def rrc_params(height: int, width: int, scale: Sequence[float],
               ratio: Tuple[float, float] = RRC_RATIO) -> Tuple[int, int, int, int]:
    """One RandomResizedCrop box ``(top, left, h, w)`` for an image of ``height``×``width``.

    Same algorithm and the same draws from torch's global RNG as
    ``torchvision.transforms.RandomResizedCrop.get_params`` (area fraction ~ U[scale], log-aspect
    ~ U[log ratio], up to 10 attempts, then a central crop clamped to ``ratio``), so a seed gives
    the same box (tested); written out with reused one-element buffers because the fg-acceptance
    rule draws up to ``max_tries`` boxes per view and torchvision's per-call set-up and
    allocations made that a visible share of the loader's time.
    """
    lo, hi = _log_ratio_bounds((float(ratio[0]), float(ratio[1])))
    fbuf, ibuf = _rng_buffers()
    area = height * width
    for _ in range(10):
        target = area * fbuf.uniform_(scale[0], scale[1]).item()
        aspect = fbuf.uniform_(lo, hi).exp_().item()
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(ibuf.random_(0, height - h + 1).item())
            left = int(ibuf.random_(0, width - w + 1).item())
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resize_mask_nearest(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest resize of a ``…×H×W`` mask to ``size`` = (h, w), pixel-centre aligned.

    Picks for every output pixel the source pixel PIL's own nearest resize would pick, so a mask
    resized here stays aligned with its image resized by PIL (bicubic or nearest). torchvision's
    ``resize`` on a ``tv_tensors.Mask`` is not used for this step: up to torchvision 0.2x it
    forces the ``nearest`` (floor) convention, which shifts the mask by up to half an output
    pixel towards the top-left. A ``tv_tensors.Mask`` input comes back as a ``tv_tensors.Mask``.
    """
    h_in, w_in = mask.shape[-2:]
    h_out, w_out = int(size[0]), int(size[1])
    if (h_in, w_in) == (h_out, w_out):
        return mask
    plain = mask.as_subclass(torch.Tensor)
    out = plain.index_select(-2, _pil_nearest_indices(h_in, h_out)).index_select(-1, _pil_nearest_indices(w_in, w_out))
    return tv_tensors.wrap(out, like=mask) if isinstance(mask, tv_tensors.Mask) else out


def mask_fg_fraction(mask: np.ndarray, top: int, left: int, height: int, width: int) -> float:
    """Mean of a {0,1} mask inside the box (original resolution)."""
    box = mask[top: top + height, left: left + width]
    return float(np.count_nonzero(box)) / float(max(box.size, 1))


def sample_crop_box(img: Image.Image, scale: Tuple[float, float], mask: Optional[np.ndarray] = None,
                    opts: Optional[MaskCropOptions] = None,
                    ratio: Tuple[float, float] = RRC_RATIO) -> Tuple[int, int, int, int]:
    """RRC box ``(top, left, height, width)`` with the fg-acceptance rule (docs/augmentation.md step 2).

    Without ``mask``/``opts``, or with ``opts.min_fg_frac`` None, or a mask without fg: exactly one
    ``RandomResizedCrop.get_params`` draw (solo-learn's crop). Otherwise up to ``max_tries`` draws;
    the first with fg fraction > ``min_fg_frac`` wins, else the ``last`` draw or the ``best`` one
    (largest fraction, earliest on ties).
    """
    height, width = img.height, img.width
    if mask is None or opts is None or opts.min_fg_frac is None or not mask.any():
        return rrc_params(height, width, scale, ratio)
    best_box, best_f = None, -1.0
    box = None
    for _ in range(int(opts.max_tries)):
        box = rrc_params(height, width, scale, ratio)
        f = mask_fg_fraction(mask, *box)
        if f > opts.min_fg_frac:
            return box
        if f > best_f:
            best_box, best_f = box, f
    return box if opts.crop_fallback == "last" else best_box


def crop_coords(top: int, left: int, height: int, width: int, img_w: int, img_h: int,
                hflip: bool = False, vflip: bool = False) -> torch.Tensor:
    """[x0, y0, x1, y1] of the box normalised to the original image; flips swap the ends."""
    x0, x1 = left / img_w, (left + width) / img_w
    y0, y1 = top / img_h, (top + height) / img_h
    if hflip:
        x0, x1 = x1, x0
    if vflip:
        y0, y1 = y1, y0
    return torch.tensor([x0, y0, x1, y1], dtype=torch.float32)


def prepare_mask(mask: MaskLike, img: Image.Image) -> np.ndarray:
    """Any H×W (or 1×H×W) array/tensor at the image's size → contiguous uint8 {0, 1} numpy (fg ⇔ > 0)."""
    m = mask.numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    m = m.reshape(m.shape[-2:])
    if m.shape != (img.height, img.width):
        raise ValueError(f"mask is {m.shape[1]}×{m.shape[0]} but image is {img.width}×{img.height}")
    return np.ascontiguousarray(m > 0, dtype=np.uint8)


def _applies(p: float) -> bool:
    """``transforms.RandomApply``'s test (draws one torch number): applied when u ≤ p."""
    return not (p < torch.rand(1))


# ---------------------------------------------------------------------------------------------
# The view transform
# ---------------------------------------------------------------------------------------------


class JointViewTransform:
    """One augmentation pipeline (a config ``augmentations[i]`` item) for image (+ mask) views.

    ``JointViewTransform(aug, mean, std)`` → ``t(img) -> Tensor 3×S×S`` (solo-learn's pipeline).
    ``JointViewTransform(aug, mean, std, masks=cfg.data.masks)`` →
    ``t(img, mask) -> (Tensor 3×S×S float, Tensor 1×S×S uint8 {0,1}, Tensor[4] float32 coords)``.

    ``img`` is an RGB ``PIL.Image``; ``mask`` an H×W array/tensor at the image's size (fg ⇔ > 0).
    ``interpolation`` (``bicubic``/``bilinear``/``nearest``) is the image resize filter.
    """

    def __init__(self, aug: Union[Mapping, ViewAugmentation], mean: Sequence[float], std: Sequence[float],
                 masks: Union[None, Mapping, MaskCropOptions] = None, interpolation: str = "bicubic"):
        self.aug = aug if isinstance(aug, ViewAugmentation) else ViewAugmentation.from_cfg(aug)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if masks is not None and not isinstance(masks, MaskCropOptions):
            masks = MaskCropOptions.from_cfg(masks)
        self.mask_opts: Optional[MaskCropOptions] = masks
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {list(INTERPOLATIONS)}, got {interpolation!r}")
        self.interpolation = INTERPOLATIONS[interpolation]
        a = self.aug
        self.scale = (a.crop_min_scale, a.crop_max_scale)
        self.jitter = T.ColorJitter(a.brightness, a.contrast, a.saturation, a.hue) if a.jitter_prob else None

    @property
    def with_masks(self) -> bool:
        return self.mask_opts is not None

    # -- photometrics (PIL image only) ----------------------------------------------------------
    def photometric(self, img: Image.Image) -> Image.Image:
        a = self.aug
        if a.jitter_prob and _applies(a.jitter_prob):
            img = self.jitter(img)
        if a.grayscale_prob and torch.rand(1) < a.grayscale_prob:
            img = F1.rgb_to_grayscale(img, num_output_channels=3)
        if a.blur_prob and _applies(a.blur_prob):
            img = img.filter(ImageFilter.GaussianBlur(radius=random.uniform(a.sigma_min, a.sigma_max)))
        if a.solarization_prob and _applies(a.solarization_prob):
            img = ImageOps.solarize(img)
        if a.equalization_prob and _applies(a.equalization_prob):
            img = ImageOps.equalize(img)
        return img

    # -- geometry ---------------------------------------------------------------------------------
    def _geometry(self, img: Image.Image, mask: Optional[np.ndarray]):
        size = self.aug.crop_size
        w, h = img.size
        if self.aug.rrc:
            box = sample_crop_box(img, self.scale, mask, self.mask_opts)
            out = F2.resized_crop(img, *box, [size, size], interpolation=self.interpolation, antialias=True)
        else:
            box = (0, 0, h, w)
            out = F2.resize(img, [size], interpolation=self.interpolation, antialias=True)
        return out, box

    def __call__(self, img: Image.Image, mask: Optional[MaskLike] = None):
        if self.with_masks and mask is None:
            raise ValueError("this JointViewTransform was built with mask options and needs a mask")
        return self.view(img, None if mask is None else prepare_mask(mask, img))

    def view(self, img: Image.Image, mask: Optional[np.ndarray]):
        """``__call__`` for a mask already through :func:`prepare_mask` (or None)."""
        img_w, img_h = img.size
        out, box = self._geometry(img, mask)
        out = self.photometric(out)
        a = self.aug
        hflip = bool(a.hflip_prob) and bool(torch.rand(1) < a.hflip_prob)
        if hflip:
            out = F2.horizontal_flip(out)
        vflip = False
        if self.with_masks and self.mask_opts.vflip_prob:
            vflip = bool(torch.rand(1) < self.mask_opts.vflip_prob)
            if vflip:
                out = F2.vertical_flip(out)
        x = F1.normalize(F1.to_tensor(out), self.mean, self.std)
        if mask is None:
            return x
        m = crop_resize_flip_mask(mask, box, (out.height, out.width), hflip=hflip, vflip=vflip)
        coords = crop_coords(*box, img_w, img_h, hflip=hflip, vflip=vflip)
        return x, torch.from_numpy(m)[None], coords

    def __repr__(self) -> str:
        a = self.aug
        ops = [f"RandomResizedCrop({a.crop_size}, scale={self.scale}, {self.interpolation.value})" if a.rrc
               else f"Resize({a.crop_size}, {self.interpolation.value})"]
        if a.jitter_prob:
            ops.append(f"p={a.jitter_prob}: ColorJitter({a.brightness}, {a.contrast}, {a.saturation}, {a.hue})")
        if a.grayscale_prob:
            ops.append(f"p={a.grayscale_prob}: Grayscale")
        if a.blur_prob:
            ops.append(f"p={a.blur_prob}: GaussianBlur(σ∈[{a.sigma_min}, {a.sigma_max}])")
        if a.solarization_prob:
            ops.append(f"p={a.solarization_prob}: Solarize")
        if a.equalization_prob:
            ops.append(f"p={a.equalization_prob}: Equalize")
        if a.hflip_prob:
            ops.append(f"p={a.hflip_prob}: HorizontalFlip")
        ops.append(f"ToTensor, Normalize({self.mean}, {self.std})")
        if self.with_masks:
            o = self.mask_opts
            ops.append(f"masks: min_fg_frac={o.min_fg_frac}, max_tries={o.max_tries}, "
                       f"fallback={o.crop_fallback}, vflip_prob={o.vflip_prob}")
        return "JointViewTransform(\n  " + ",\n  ".join(ops) + "\n)"


class MultiViewTransform:
    """solo-learn's ``FullTransformPipeline`` of ``NCropAugmentation``s: pipeline by pipeline,
    ``num_crops`` views each.

    ``t(img)`` → ``[view_1..view_n]``; with masks ``t(img, mask)`` →
    ``([view_1..view_n], [mask_1..mask_n], [coords_1..coords_n])``.
    """

    def __init__(self, pipelines: Sequence[JointViewTransform], num_crops: Sequence[int]):
        if len(pipelines) != len(num_crops):
            raise ValueError("one num_crops per pipeline is needed")
        self.pipelines = list(pipelines)
        self.num_crops = [int(n) for n in num_crops]
        modes = {p.with_masks for p in self.pipelines}
        if len(modes) != 1:
            raise ValueError("all pipelines must agree on masks")
        self.with_masks = modes.pop()

    def __call__(self, img: Image.Image, mask: Optional[MaskLike] = None):
        if not self.with_masks:
            return [p(img) for p, n in zip(self.pipelines, self.num_crops) for _ in range(n)]
        if mask is None:
            raise ValueError("these pipelines were built with mask options and need a mask")
        m_np = prepare_mask(mask, img)
        views: List[torch.Tensor] = []
        masks: List[torch.Tensor] = []
        coords: List[torch.Tensor] = []
        for p, n in zip(self.pipelines, self.num_crops):
            for _ in range(n):
                x, m, c = p.view(img, m_np)
                views.append(x)
                masks.append(m)
                coords.append(c)
        return views, masks, coords

    def __repr__(self) -> str:
        return "\n".join(f"{n} × {p!r}" for p, n in zip(self.pipelines, self.num_crops))
