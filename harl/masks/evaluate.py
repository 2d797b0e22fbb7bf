"""``harl-masks eval``: compare a predicted mask tree with a ground-truth tree.

Every mask file under ``GT`` (any mask extension) is matched with the prediction at the same
relative path (extension free, ``.png`` first). fg = value > threshold in both trees (default 0).
Per image: IoU = tp/(tp+fp+fn), precision = tp/(tp+fp), recall = tp/(tp+fn), with 0/0 := 1
(:func:`harl.masks.ops.metrics_from_counts`). Reported: the per-image means and the *pooled*
metrics (computed from the tp/fp/fn sums over all images). A prediction whose size differs
from the ground truth is resized (nearest) to it and counted; a ground-truth mask without a
prediction is a failure (listed, excluded from the means).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from harl.masks.io import MASK_EXTENSIONS, find_mask_file, list_files, read_mask_values
from harl.errors import ImageReadError
from harl.masks.ops import confusion_counts, metrics_from_counts, resize_mask_nearest
from harl.utils.io import atomic_write_text
from harl.utils.procs import die_with_parent


@dataclass
class EvalResult:
    pred_root: str
    gt_root: str
    per_image: List[Dict[str, Any]] = field(default_factory=list)  # relpath, tp, fp, fn, iou, precision, recall, resized
    failures: List[Tuple[str, str]] = field(default_factory=list)  # (gt relpath, reason)

    @property
    def n_resized(self) -> int:
        return sum(1 for r in self.per_image if r["resized"])

    def mean(self) -> Dict[str, Optional[float]]:
        keys = ("iou", "precision", "recall")
        if not self.per_image:
            return {k: None for k in keys}
        return {k: float(np.mean([r[k] for r in self.per_image])) for k in keys}

    def pooled(self) -> Dict[str, Optional[float]]:
        if not self.per_image:
            return {"iou": None, "precision": None, "recall": None}
        tp = sum(r["tp"] for r in self.per_image)
        fp = sum(r["fp"] for r in self.per_image)
        fn = sum(r["fn"] for r in self.per_image)
        return metrics_from_counts(tp, fp, fn)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "pred": os.path.abspath(self.pred_root),
            "gt": os.path.abspath(self.gt_root),
            "images": len(self.per_image),
            "failed": len(self.failures),
            "resized": self.n_resized,
            "per_image_mean": self.mean(),
            "pooled": self.pooled(),
            "failures": [{"relpath": r, "error": e} for r, e in self.failures],
        }

    def format_table(self) -> str:
        m, p = self.mean(), self.pooled()

        def f(v):
            return "   n/a" if v is None else f"{v:6.4f}"

        lines = [
            f"harl-masks eval: {len(self.per_image)} images, {len(self.failures)} failed "
            f"(missing/unreadable predictions), {self.n_resized} resized",
            f"  {'':<16}{'IoU':>8}{'precision':>11}{'recall':>8}",
            f"  {'per-image mean':<16}{f(m['iou']):>8}{f(m['precision']):>11}{f(m['recall']):>8}",
            f"  {'pooled':<16}{f(p['iou']):>8}{f(p['precision']):>11}{f(p['recall']):>8}",
        ]
        for rel, err in self.failures[:5]:
            lines.append(f"  failed: {rel}: {err}")
        if len(self.failures) > 5:
            lines.append(f"  ... and {len(self.failures) - 5} more (see --json)")
        return "\n".join(lines)


def compare_one(pred_root: str, gt_root: str, relpath: str, pred_threshold: float = 0.0,
                gt_threshold: float = 0.0) -> Dict[str, Any]:
    """Metrics of one ground-truth mask ``gt_root/relpath`` against its prediction (or an error record)."""
    pred_path = find_mask_file(pred_root, relpath)
    if pred_path is None:
        return {"relpath": relpath, "error": "no prediction"}
    try:
        gt = read_mask_values(os.path.join(gt_root, relpath)) > gt_threshold
        pred = read_mask_values(pred_path) > pred_threshold
    except ImageReadError as err:
        return {"relpath": relpath, "error": str(err)}
    resized = pred.shape != gt.shape
    if resized:
        pred = resize_mask_nearest(pred, *gt.shape)
    tp, fp, fn, _ = confusion_counts(pred, gt)
    return {"relpath": relpath, "tp": tp, "fp": fp, "fn": fn, "resized": resized, **metrics_from_counts(tp, fp, fn)}


def _compare_star(args):
    return compare_one(*args)


def evaluate_trees(pred_root: str, gt_root: str, pred_threshold: float = 0.0, gt_threshold: float = 0.0,
                   workers: int = 1, progress: bool = False, relpaths: Optional[Sequence[str]] = None) -> EvalResult:
    """Compare every mask of ``gt_root`` (or the given relpaths) with ``pred_root``; see the module doc."""
    if not os.path.isdir(pred_root):
        raise FileNotFoundError(f"prediction folder '{pred_root}' does not exist")
    rels = list(relpaths) if relpaths is not None else list_files(gt_root, MASK_EXTENSIONS)
    args = [(pred_root, gt_root, r, pred_threshold, gt_threshold) for r in rels]
    bar = None
    if progress and rels:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(rels), desc="eval", unit="img", dynamic_ncols=True)
    result = EvalResult(pred_root, gt_root)
    pool = None
    try:
        if workers <= 1:
            outs = map(_compare_star, args)
        else:
            pool = ProcessPoolExecutor(max_workers=workers, initializer=die_with_parent, initargs=(os.getpid(),))
            outs = pool.map(_compare_star, args, chunksize=max(1, min(64, len(args) // (workers * 8) or 1)))
        for out in outs:
            if "error" in out:
                result.failures.append((out["relpath"], out["error"]))
            else:
                result.per_image.append(out)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        if pool is not None:
            pool.shutdown()
    return result


def write_json(result: EvalResult, path: str) -> None:
    atomic_write_text(path, json.dumps(result.to_dict(), indent=2) + "\n")
