"""Small pure operations on binary masks (H×W numpy arrays, fg = True)."""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np


def resize_mask_nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """H×W bool → height×width bool by nearest-neighbour sampling of pixel centres.

    Output pixel (r, c) takes input pixel (⌊(r+½)·H/height⌋, ⌊(c+½)·W/width⌋).
    """
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    if (h, w) == (height, width):
        return mask
    rows = np.minimum(((np.arange(height) + 0.5) * (h / height)).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * (w / width)).astype(np.int64), w - 1)
    return mask[rows[:, None], cols[None, :]]


def count_components(mask: np.ndarray) -> int:
    """Number of 8-connected foreground components of an H×W bool mask."""
    from scipy import ndimage as ndi

    return int(ndi.label(np.asarray(mask, dtype=bool), structure=np.ones((3, 3), dtype=bool))[1])


def confusion_counts(pred: np.ndarray, gt: np.ndarray) -> Tuple[int, int, int, int]:
    """(tp, fp, fn, tn) pixel counts of two H×W bool masks of the same shape."""
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"mask shapes differ: pred {pred.shape} vs gt {gt.shape}")
    tp = int(np.count_nonzero(pred & gt))
    fp = int(np.count_nonzero(pred & ~gt))
    fn = int(np.count_nonzero(~pred & gt))
    return tp, fp, fn, int(pred.size) - tp - fp - fn


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else 1.0


def metrics_from_counts(tp: float, fp: float, fn: float) -> Dict[str, float]:
    """IoU = tp/(tp+fp+fn), precision = tp/(tp+fp), recall = tp/(tp+fn); 0/0 is defined as 1.

    (An empty prediction of an empty ground truth is perfect; an empty prediction of a non-empty
    one has precision 1, recall 0 and IoU 0.)
    """
    return {"iou": _ratio(tp, tp + fp + fn), "precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn)}
