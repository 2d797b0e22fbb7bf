"""Deterministic evaluation transforms (validation, kNN, feature extraction, dense probes) and the
linear-probe training transform (docs/evaluation.md), each optionally carrying a mask through the same
geometry.

Validation geometry per dataset (solo-learn's ``prepare_transforms``), see :class:`EvalGeometry`:
cifar / fashion sets at native size; stl10 ``Resize((96, 96))``; ImageNet-style sets
``Resize(round(crop·8/7))`` + ``CenterCrop(crop)`` (256 / 224 at crop 224). Image resizes are
bilinear (torchvision's default, PIL antialiased); masks follow with pixel-centre nearest.
The linear train transform is ``RandomResizedCrop(crop, scale=(0.08, 1), bilinear)`` +
horizontal flip (no photometric ops).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torchvision.transforms.functional as F1
import torchvision.transforms.v2.functional as F2
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode

from harl.data.transforms import JointViewTransform, ViewAugmentation, resize_mask_nearest

Size = Union[int, Tuple[int, int]]


@dataclass(frozen=True)
class EvalGeometry:
    """``resize``: None, an int (shorter side, aspect kept) or (h, w); ``center_crop``: None or a side."""

    resize: Optional[Size] = None
    center_crop: Optional[int] = None


def native_geometry(crop_size: int) -> EvalGeometry:
    """Images used at their own size (CIFAR, Fashion-MNIST, fashion scenes)."""
    return EvalGeometry()


def square_resize_geometry(side: int):
    """``Resize((side, side))`` whatever the crop size (STL-10: 96)."""
    def geometry(crop_size: int) -> EvalGeometry:
        return EvalGeometry(resize=(side, side))
    geometry.__name__ = f"square_resize_{side}"
    return geometry


def resize_center_crop_geometry(crop_size: int) -> EvalGeometry:
    """``Resize(round(crop·8/7))`` + ``CenterCrop(crop)``: 256/224 at 224, 73/64 at 64."""
    return EvalGeometry(resize=int(round(crop_size * 8 / 7)), center_crop=int(crop_size))


class EvalTransform:
    """Deterministic resize / center-crop → ToTensor → Normalize.

    ``t(img)`` → Tensor 3×H×W; ``t(img, mask)`` → (Tensor 3×H×W, Tensor 1×H×W uint8 {0,1}).
    """

    def __init__(self, geometry: EvalGeometry, mean: Sequence[float], std: Sequence[float],
                 interpolation: InterpolationMode = InterpolationMode.BILINEAR):
        self.geometry = geometry
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.interpolation = interpolation

    def __call__(self, img: Image.Image, mask=None):
        g = self.geometry
        if g.resize is not None:
            size = [g.resize] if isinstance(g.resize, int) else list(g.resize)
            img = F2.resize(img, size, interpolation=self.interpolation, antialias=True)
        m = None
        if mask is not None:
            m_np = mask.numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
            m_np = (m_np.reshape(m_np.shape[-2:]) > 0).astype(np.uint8)
            m = resize_mask_nearest(tv_tensors.Mask(torch.from_numpy(m_np)[None]), (img.height, img.width))
        if g.center_crop is not None:
            img = F2.center_crop(img, [g.center_crop])
            if m is not None:
                m = F2.center_crop(m, [g.center_crop])
        x = F1.normalize(F1.to_tensor(img), self.mean, self.std)
        if m is None:
            return x
        return x, m.as_subclass(torch.Tensor).contiguous()

    def __repr__(self) -> str:
        return f"EvalTransform({self.geometry}, mean={self.mean}, std={self.std})"


class LinearTrainTransform:
    """``RandomResizedCrop(crop, (0.08, 1), bilinear)`` + flip 0.5 → ToTensor → Normalize.

    ``t(img)`` → Tensor; ``t(img, mask)`` → (Tensor, mask uint8 1×S×S) with the same crop and flip.
    """

    def __init__(self, crop_size: int, mean: Sequence[float], std: Sequence[float]):
        aug = ViewAugmentation(crop_size=int(crop_size), crop_min_scale=0.08, crop_max_scale=1.0, hflip_prob=0.5)
        self._plain = JointViewTransform(aug, mean, std, interpolation="bilinear")
        # plain shared crop (no fg acceptance) for the masked variant
        self._masked = JointViewTransform(aug, mean, std, masks={"min_fg_frac": None}, interpolation="bilinear")

    def __call__(self, img: Image.Image, mask=None):
        if mask is None:
            return self._plain(img)
        x, m, _ = self._masked(img, mask)
        return x, m

    def __repr__(self) -> str:
        return f"LinearTrainTransform({self._plain!r})"
