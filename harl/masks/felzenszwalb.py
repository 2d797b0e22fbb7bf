"""The graph-based heuristic mask generator ``felzenszwalb`` (docs/masks.md, steps 1–7).

The HARL paper used DRFI with σ = 0.8 and minimum region size s = 1000; the authors' segment
selection is not public, so this is the project's rule:

1. Working image: longest side ≤ ``work_long_side`` (downscale, antialiased bilinear) and
   shortest side ≥ ``work_short_side`` (upscale, bicubic). With an aspect ratio beyond
   500/128 ≈ 3.9 the two cannot both hold; the shortest-side rule wins. The mask is mapped back
   to H×W with nearest-neighbour sampling.
2. Felzenszwalb–Huttenlocher (``skimage.segmentation.felzenszwalb``) with ``sigma``, ``scale``
   and ``min_size = max(floor, round(min_size·A_work/ref_area))`` (:func:`scaled_min_size`).
3. Per segment k: area fraction a_k, mean CIE-Lab colour c_k, centroid μ_k ∈ [0,1]² (pixel
   centres, (y+½)/H, (x+½)/W), e_k = number of its pixels on the 1-px image frame.
4. s_k = C_k·P_k·(1 − B_k) with contrast C_k = Σ_{j≠k} a_j‖c_k − c_j‖ / max_k(·), centre prior
   P_k = exp(−‖μ_k − (½,½)‖²/(2·center_sigma²)), boundary prior
   B_k = 1 − exp(−(e_k/√(a_k·A_work))²/2).
5. fg = ∪ {k : s_k ≥ select_ratio·max s}.
6. Guards, in order: max s = 0 → central 50 %×50 % box (``center``); fg < min_area → the best
   segment only (``min_area``); fg > max_area → drop selected segments by ascending s_k until
   ≤ max_area (``max_area``); if even the best segment alone exceeds max_area, the centre box
   (``max_area+center``).
7. Fill holes (:func:`fill_holes`, equal to ``scipy.ndimage.binary_fill_holes``).

All per-segment statistics are computed with ``np.bincount`` (O(pixels)), so the cost beyond
the Felzenszwalb call itself is a Lab conversion and a few passes over the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Tuple

import numpy as np
from PIL import Image

from harl.masks.registry import GeneratorSpec, param, register_generator
from harl.masks.ops import resize_mask_nearest

FALLBACK_NONE = ""
FALLBACK_CENTER = "center"
FALLBACK_MIN_AREA = "min_area"
FALLBACK_MAX_AREA = "max_area"
FALLBACK_MAX_AREA_CENTER = "max_area+center"


@dataclass(frozen=True)
class FelzenszwalbParams:
    """Parameters of the ``felzenszwalb`` generator (defaults: docs/masks.md, mask CLI)."""

    sigma: float = param(0.8, "Gaussian pre-smoothing σ of Felzenszwalb–Huttenlocher")
    scale: float = param(300.0, "FH scale k (on 0–255 intensities; larger → larger segments)")
    min_size: int = param(1000, "minimum segment size at the reference area (scaled with the working area)")
    min_size_ref_area: int = param(187500, "reference working area (pixels) for --min-size (500×375)")
    min_size_floor: int = param(20, "lower bound of the scaled minimum segment size")
    work_long_side: int = param(500, "downscale so the longest side is at most this (0 = never)")
    work_short_side: int = param(128, "upscale (bicubic) so the shortest side is at least this (0 = never)")
    center_sigma: float = param(0.25, "σ of the Gaussian centre prior (in image-size units)")
    select_ratio: float = param(0.5, "fg = segments with score ≥ select_ratio·max score")
    min_area: float = param(0.02, "below this fg fraction keep only the best segment")
    max_area: float = param(0.90, "above this fg fraction drop the weakest segments")

    def __post_init__(self):
        checks = [
            (self.sigma >= 0, "sigma must be >= 0"),
            (self.scale > 0, "scale must be > 0"),
            (self.min_size >= 1 and self.min_size_floor >= 1, "min_size and min_size_floor must be >= 1"),
            (self.min_size_ref_area > 0, "min_size_ref_area must be > 0"),
            (self.work_long_side >= 0 and self.work_short_side >= 0, "work sides must be >= 0"),
            (self.center_sigma > 0, "center_sigma must be > 0"),
            (0 < self.select_ratio <= 1, "select_ratio must be in (0, 1]"),
            (0 <= self.min_area < self.max_area <= 1, "need 0 <= min_area < max_area <= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"felzenszwalb: {msg}")


# ---------------------------------------------------------------------------------------------
# step 1–2: working size and minimum segment size
# ---------------------------------------------------------------------------------------------


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def working_size(height: int, width: int, long_side: int = 500, short_side: int = 128) -> Tuple[int, int]:
    """(h, w) of the working image for an H×W image (step 1; 0 disables a bound)."""
    s = 1.0
    if long_side and max(height, width) > long_side:
        s = long_side / max(height, width)
    if short_side and min(height, width) * s < short_side:
        s = short_side / min(height, width)
    if s == 1.0:
        return height, width
    return max(1, _round_half_up(height * s)), max(1, _round_half_up(width * s))


def scaled_min_size(work_area: int, min_size: int = 1000, ref_area: int = 187500, floor: int = 20) -> int:
    """``max(floor, round(min_size·work_area/ref_area))`` (step 2; halves round up)."""
    return max(int(floor), _round_half_up(min_size * work_area / ref_area))


def resize_rgb(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """H×W×3 uint8 → height×width×3 uint8: antialiased bilinear when shrinking, bicubic when growing."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    shrinking = height * width < h * w
    resample = Image.BILINEAR if shrinking else Image.BICUBIC
    return np.asarray(Image.fromarray(image).resize((width, height), resample))


# ---------------------------------------------------------------------------------------------
# step 3–4: per-segment statistics and scores
# ---------------------------------------------------------------------------------------------


def segment_stats(labels: np.ndarray, lab: np.ndarray) -> Dict[str, np.ndarray]:
    """Per-segment statistics of a label map (step 3), vectorised with ``np.bincount``.

    Args:
        labels: h×w int labels in [0, K).
        lab: h×w×3 float colour image (CIE-Lab).
    Returns:
        dict with ``count`` (K,) pixels, ``area`` (K,) fractions a_k, ``color`` (K, 3) means c_k,
        ``centroid`` (K, 2) (y, x) in [0, 1], ``edge`` (K,) pixels on the 1-px frame e_k.
    """
    h, w = labels.shape
    flat = labels.ravel()
    k = int(flat.max()) + 1 if flat.size else 0
    count = np.bincount(flat, minlength=k).astype(np.float64)
    safe = np.maximum(count, 1.0)
    lab_flat = lab.reshape(-1, 3)
    color = np.stack([np.bincount(flat, weights=lab_flat[:, c], minlength=k) for c in range(3)], axis=1)
    color /= safe[:, None]
    # centroids from per-row and per-column counts (K×h and K×w integer bincounts, no weights)
    ys = (np.arange(h, dtype=np.float64) + 0.5) / h
    xs = (np.arange(w, dtype=np.float64) + 0.5) / w
    rows = np.bincount((labels * h + np.arange(h)[:, None]).ravel(), minlength=k * h).reshape(k, h)
    cols = np.bincount((labels * w + np.arange(w)[None, :]).ravel(), minlength=k * w).reshape(k, w)
    cy = rows @ ys / safe
    cx = cols @ xs / safe
    if h == 1 or w == 1:
        frame = flat
    else:
        frame = np.concatenate([labels[0, :], labels[-1, :], labels[1:-1, 0], labels[1:-1, -1]])
    edge = np.bincount(frame, minlength=k).astype(np.float64)
    return {
        "count": count,
        "area": count / float(h * w),
        "color": color,
        "centroid": np.stack([cy, cx], axis=1),
        "edge": edge,
    }


def segment_scores(stats: Dict[str, np.ndarray], center_sigma: float = 0.25) -> Dict[str, np.ndarray]:
    """Scores of step 4 from :func:`segment_stats`: ``contrast`` C, ``center`` P, ``boundary`` B, ``score`` s."""
    area, color, count, edge = stats["area"], stats["color"], stats["count"], stats["edge"]
    dist = np.sqrt(((color[:, None, :] - color[None, :, :]) ** 2).sum(-1))  # K×K, zero diagonal
    raw = dist @ area  # Σ_j a_j‖c_k − c_j‖ (the j = k term is 0)
    top = raw.max() if raw.size else 0.0
    contrast = raw / top if top > 0 else np.zeros_like(raw)
    d2 = ((stats["centroid"] - 0.5) ** 2).sum(1)
    center = np.exp(-d2 / (2.0 * center_sigma ** 2))
    # e_k / sqrt(a_k·A_work) = e_k / sqrt(n_k)
    ratio = edge / np.sqrt(np.maximum(count, 1.0))
    boundary = 1.0 - np.exp(-0.5 * ratio ** 2)
    score = contrast * center * np.exp(-0.5 * ratio ** 2)  # = C·P·(1 − B), without cancellation
    return {"contrast": contrast, "center": center, "boundary": boundary, "score": score}


# ---------------------------------------------------------------------------------------------
# step 5–6: selection and guards
# ---------------------------------------------------------------------------------------------


def select_segments(score: np.ndarray, area: np.ndarray, select_ratio: float = 0.5,
                    min_area: float = 0.02, max_area: float = 0.90) -> Tuple[np.ndarray, str]:
    """Steps 5–6 on per-segment scores s_k and area fractions a_k.

    Returns ``(selected, fallback)``: a (K,) bool array of foreground segments, or ``None`` for
    "use the central 50 %×50 % box", and the guard that fired (``""`` if none).
    """
    top = float(score.max()) if score.size else 0.0
    if not top > 0:
        return None, FALLBACK_CENTER
    selected = score >= select_ratio * top
    fg = float(area[selected].sum())
    if fg < min_area:
        best = int(np.argmax(score))
        only = np.zeros_like(selected)
        only[best] = True
        return only, FALLBACK_MIN_AREA
    if fg > max_area:
        while fg > max_area:
            idx = np.flatnonzero(selected)
            if len(idx) == 1:  # the best segment alone is too large
                return None, FALLBACK_MAX_AREA_CENTER
            k = int(idx[np.argmin(score[idx])])  # weakest selected segment (ties: lowest label)
            selected[k] = False
            fg -= float(area[k])
        return selected, FALLBACK_MAX_AREA
    return selected, FALLBACK_NONE


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """H×W bool → the mask with every background region that does not touch the frame filled.

    Identical to ``scipy.ndimage.binary_fill_holes`` (background 4-connected; checked by a test)
    but computed with one connected-component labelling instead of an iterated dilation
    (≈1 ms instead of ≈4 ms at 500×375).
    """
    from scipy import ndimage as ndi

    mask = np.asarray(mask, dtype=bool)
    bg = ~mask
    comp, n = ndi.label(bg)  # default structure: 4-connectivity
    if n == 0:
        return mask
    outside = np.zeros(n + 1, dtype=bool)
    outside[np.concatenate([comp[0, :], comp[-1, :], comp[:, 0], comp[:, -1]])] = True
    outside[0] = False
    return mask | (bg & ~outside[comp])


def center_box(height: int, width: int) -> np.ndarray:
    """The central 50 %×50 % box: rows [⌊H/4⌉, ⌊3H/4⌉), cols likewise (H×W bool)."""
    mask = np.zeros((height, width), dtype=bool)
    r0, r1 = _round_half_up(height / 4), _round_half_up(3 * height / 4)
    c0, c1 = _round_half_up(width / 4), _round_half_up(3 * width / 4)
    mask[r0:max(r1, r0 + 1), c0:max(c1, c0 + 1)] = True
    return mask


# ---------------------------------------------------------------------------------------------
# the generator
# ---------------------------------------------------------------------------------------------


def felzenszwalb_mask(image: np.ndarray, params: FelzenszwalbParams = FelzenszwalbParams(),
                      return_details: bool = False) -> Tuple[np.ndarray, Dict[str, Any]]:
    """docs/masks.md: H×W×3 uint8 RGB image → (H×W bool mask, info).

    ``info`` holds ``n_segments``, ``fallback``, ``work_size`` (h, w) and ``min_size``; with
    ``return_details`` also ``labels`` (working-size label map), ``stats``, ``scores`` and
    ``selected``.
    """
    from skimage.color import rgb2lab
    from skimage.segmentation import felzenszwalb

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"felzenszwalb: expected an H×W×3 uint8 RGB image, got {image.shape} {image.dtype}")
    height, width = image.shape[:2]
    wh, ww = working_size(height, width, params.work_long_side, params.work_short_side)
    work = resize_rgb(image, wh, ww)
    min_size = scaled_min_size(wh * ww, params.min_size, params.min_size_ref_area, params.min_size_floor)
    labels = felzenszwalb(work, scale=params.scale, sigma=params.sigma, min_size=min_size)
    # float32 input: skimage converts in float32 (3× faster than from uint8/float64); the means
    # differ from float64 by ~1e-4 Lab units
    stats = segment_stats(labels, rgb2lab(work.astype(np.float32) * np.float32(1 / 255)))
    scores = segment_scores(stats, params.center_sigma)
    selected, fallback = select_segments(scores["score"], stats["area"], params.select_ratio,
                                         params.min_area, params.max_area)
    if selected is None:
        mask = center_box(height, width)
    else:
        work_mask = fill_holes(selected[labels])
        if (wh, ww) == (height, width):
            mask = work_mask
        else:
            mask = resize_mask_nearest(work_mask, height, width)
            if wh > height or ww > width:  # nearest *down*-sampling can close a thin gap
                mask = fill_holes(mask)
    info: Dict[str, Any] = {
        "n_segments": int(len(stats["count"])),
        "fallback": fallback,
        "work_size": (wh, ww),
        "min_size": min_size,
    }
    if return_details:
        info.update(labels=labels, stats=stats, scores=scores, selected=selected)
    return mask, info


def build_felzenszwalb(params: FelzenszwalbParams):
    """The generator function for the runner: ``image -> (mask, info)``."""
    import functools

    return functools.partial(_felzenszwalb_fn, params=params)


def _felzenszwalb_fn(image: np.ndarray, params: FelzenszwalbParams):
    mask, info = felzenszwalb_mask(image, params)
    return mask, {"n_segments": info["n_segments"], "fallback": info["fallback"]}


register_generator(GeneratorSpec(
    name="felzenszwalb",
    params_cls=FelzenszwalbParams,
    build=build_felzenszwalb,
    description="graph-based heuristic masks (Felzenszwalb–Huttenlocher segments + contrast/centre/"
                "boundary scores; docs/masks.md)",
))
