"""kNN evaluation of frozen features (mode ``knn``; solo-learn's ``main_knn``).

Train and val features are extracted once (validation transform, no augmentation; cached, see
:mod:`harl.eval.features`), then every (k, T, distance) combination of the config's ``knn`` block
is scored with :func:`harl.ops.knn.knn_predict` (weights exp(cos/T) for cosine, 1/(d + eps) for
euclidean; labels −1 are dropped from the bank). Scalars give one setting (defaults: k 20, T
0.07, cosine); lists give a grid like ``main_knn``'s. Reported ``top1``/``top5`` are those of the
best setting by top-1 **on the validation set** (an optimistic choice, as in ``main_knn``); every
setting is listed in ``grid`` and in ``knn_grid.csv`` in the run folder.
"""

from __future__ import annotations

import csv
import io
import os
from typing import Any, Dict, List, Optional

import torch

from harl.checkpoint import atomic_write_text
from harl.eval.linear_config import knn_grid
from harl.eval.runner import EVAL_MODES, EvalContext, build_datasets, evaluate
from harl.eval.features import resolve_device
from harl.eval.linear_config import build_linear_cfg
from harl.ops.knn import knn_predict, topk_accuracy


def knn_scores(train_feats: torch.Tensor, train_targets: torch.Tensor, val_feats: torch.Tensor,
               val_targets: torch.Tensor, num_classes: int, grid: List[Dict[str, Any]],
               device: Optional[torch.device] = None) -> List[Dict[str, Any]]:
    """Top-1/top-5 (%) of each ``{k, T, distance_func}`` in ``grid``.

    train_feats: N×C, train_targets: N (−1 = unlabeled, dropped); val_feats: M×C, val_targets: M.
    """
    keep = train_targets != -1
    tf, tt = train_feats[keep], train_targets[keep].long()
    vkeep = val_targets != -1
    vf, vt = val_feats[vkeep], val_targets[vkeep].long()
    if device is not None:
        tf, tt, vf, vt = tf.to(device), tt.to(device), vf.to(device), vt.to(device)
    rows = []
    for g in grid:
        scores = knn_predict(tf, tt, vf, int(num_classes), k=int(g["k"]), T=float(g["T"]),
                             distance_func=str(g["distance_func"]))
        top1, top5 = topk_accuracy(scores, vt)
        rows.append({**g, "top1": top1, "top5": top5})
    return rows


@EVAL_MODES.register("knn")
def run_knn(ctx: EvalContext) -> Dict[str, Any]:
    """Mode ``knn``: ``{top1, top5, k, T, distance_func, grid, n_train, n_val}``."""
    from harl.eval.linear import cached_tensors  # lazy: imports torchvision

    cfg = ctx.cfg
    train_ds, val_ds = build_datasets(ctx, train_augment=False, with_masks=False)
    ftr, ttr = cached_tensors(ctx, train_ds, "train")
    fva, tva = cached_tensors(ctx, val_ds, "val")
    rows = knn_scores(ftr, ttr, fva, tva, int(cfg.data.num_classes), knn_grid(cfg), device=resolve_device(None))
    best = max(rows, key=lambda r: r["top1"])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["k", "T", "distance_func", "top1", "top5"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(os.path.join(ctx.run_dir, "knn_grid.csv"), buf.getvalue())
    return {"top1": best["top1"], "top5": best["top5"], "k": best["k"], "T": best["T"],
            "distance_func": best["distance_func"], "selected_on": "val" if len(rows) > 1 else "fixed",
            "grid": rows, "n_train": int((ttr != -1).sum()), "n_val": int(len(tva))}


def knn_eval(pretrained: Optional[str] = None, *, dataset: str, train_path: str, val_path: str,
             k: Any = 20, T: Any = 0.07, distance_func: Any = "cosine", backbone: Optional[str] = None,
             backbone_kwargs: Optional[dict] = None, random_init: bool = False, out_dir: str = "trained_models",
             batch_size: int = 256, progress: bool = True, overrides: Optional[Dict[str, Any]] = None,
             **top_level) -> Dict[str, Any]:
    """kNN evaluation of a checkpoint (or a random-init backbone); ``k``/``T``/``distance_func`` may be
    lists (grid). Returns the results dict of :func:`harl.eval.runner.evaluate`."""
    over = {"knn.k": k, "knn.T": T, "knn.distance_func": distance_func, "checkpoint.dir": out_dir,
            "optimizer.batch_size": batch_size}
    over.update(overrides or {})
    cfg = build_linear_cfg("knn", pretrained, dataset, train_path, val_path, backbone=backbone,
                           backbone_kwargs=backbone_kwargs, random_init=random_init, overrides=over, **top_level)
    return evaluate(cfg, progress=progress)


__all__ = ["run_knn", "knn_eval", "knn_scores"]
