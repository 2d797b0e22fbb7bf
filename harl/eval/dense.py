"""Dense probe (mode ``dense``): does the frozen c5 feature map linearly encode the foreground?

The HAPiCL question, measured: a frozen backbone, a **1×1-conv linear head** on its c5 map
(B×C×h×w → B×K×h×w), trained on the training images' ground-truth foreground masks and scored by
IoU on the validation images' masks.

Choices (documented in ``docs/evaluation.md``):

- **Loss.** ``dense.loss: bce`` (default): one logit per cell, ``BCEWithLogits`` against fg = 1;
  ``ce``: two logits (bg, fg), cross-entropy. Prediction: logit > 0 (bce) / argmax = fg (ce).
- **Resolution.** The head's logits are **bilinearly upsampled to the mask's resolution** (the
  input image size, ``align_corners=False``) before the loss and the prediction; masks are never
  downsampled. A 5×5 map thus still predicts a 32×32 mask, and the score is at pixel level.
- **Scores** (percent): counts of true/false positives/negatives are summed over **all pixels of
  the whole validation set** (dataset-level, not a mean of per-image IoUs), then
  ``IoU_fg = TP/(TP+FP+FN)``, ``IoU_bg = TN/(TN+FN+FP)``, ``mIoU = mean(IoU_fg, IoU_bg)`` and
  ``pixel_acc = (TP+TN)/all``. A class absent from both the prediction and the ground truth has an
  undefined IoU (NaN) and is left out of the mean.
- **Protocols.** ``cached`` (default for the fashion-scenes configs): feature maps of the train and
  val images (validation transform) are extracted once with their masks
  (:func:`harl.eval.features.extract_feature_maps`); ``augmented``: train images and masks go
  through the same RandomResizedCrop + flip (joint transform) and the frozen backbone each step.

Pure functions: :func:`upsample_logits`, :func:`predict_foreground`, :func:`iou_counts`,
:func:`iou_from_counts`.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import TensorDataset

from harl.eval.runner import EVAL_MODES, EvalContext, build_datasets, evaluate
from harl.eval.linear_config import build_linear_cfg

# ---------------------------------------------------------------------------------------------
# pure functions
# ---------------------------------------------------------------------------------------------


def upsample_logits(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """B×K×h×w → B×K×H×W, bilinear, ``align_corners=False`` (identity when already H×W)."""
    size = (int(size[0]), int(size[1]))
    if tuple(logits.shape[-2:]) == size:
        return logits
    return F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)


def predict_foreground(logits: torch.Tensor) -> torch.Tensor:
    """B×K×H×W logits → B×H×W bool: K = 1 → logit > 0; K = 2 → argmax is channel 1 (fg)."""
    if logits.shape[1] == 1:
        return logits[:, 0] > 0
    if logits.shape[1] == 2:
        return logits.argmax(dim=1) == 1
    raise ValueError(f"dense logits need 1 or 2 channels, got {logits.shape[1]}")


def iou_counts(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """int64 ``[TP, FP, FN, TN]`` of boolean fg predictions against boolean fg targets (same shape)."""
    if pred.shape != target.shape:
        raise ValueError(f"iou_counts: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    pred = pred.bool()
    target = target.bool()
    tp = (pred & target).sum()
    fp = (pred & ~target).sum()
    fn = (~pred & target).sum()
    tn = (~pred & ~target).sum()
    return torch.stack([tp, fp, fn, tn]).long()


def iou_from_counts(counts: Sequence[float]) -> Dict[str, float]:
    """Percent ``iou_fg``, ``iou_bg``, ``miou`` (mean of the defined ones) and ``pixel_acc``."""
    tp, fp, fn, tn = (float(c) for c in counts)
    union_fg = tp + fp + fn
    union_bg = tn + fn + fp
    iou_fg = 100.0 * tp / union_fg if union_fg > 0 else float("nan")
    iou_bg = 100.0 * tn / union_bg if union_bg > 0 else float("nan")
    defined = [v for v in (iou_fg, iou_bg) if not math.isnan(v)]
    total = tp + fp + fn + tn
    return {"iou_fg": iou_fg, "iou_bg": iou_bg,
            "miou": sum(defined) / len(defined) if defined else float("nan"),
            "pixel_acc": 100.0 * (tp + tn) / total if total > 0 else float("nan")}


# ---------------------------------------------------------------------------------------------
# task
# ---------------------------------------------------------------------------------------------


class DenseTask:
    """c5 map → 1×1 conv → fg logits upsampled to the mask. Batches are ``(x, targets, masks)``
    with masks B×1×H×W (uint8, fg > 0)."""

    name = "dense"
    primary = "val_miou"
    sums = ("loss", "pixels", "tp", "fp", "fn", "tn")

    def __init__(self, loss: str = "bce", head_norm: Optional[str] = None):
        if loss not in ("bce", "ce"):
            raise ValueError(f"dense loss must be 'bce' or 'ce', got {loss!r}")
        self.loss_name = loss
        self.head_norm = head_norm

    def make_head(self, num_features: int) -> nn.Module:
        """1×1 conv C → 1 (bce) or 2 (ce); ``head_norm="batchnorm"``: preceded by
        ``BatchNorm2d(C, affine=False)`` (per-channel standardisation; still linear at evaluation)."""
        conv = nn.Conv2d(int(num_features), 1 if self.loss_name == "bce" else 2, kernel_size=1)
        if self.head_norm == "batchnorm":
            return nn.Sequential(nn.BatchNorm2d(int(num_features), affine=False, momentum=None), conv)
        return conv

    @staticmethod
    def backbone_features(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """B×3×H×W → c5 map B×C×h×w."""
        return backbone.forward_features(x)

    def _pixel_loss(self, logits: torch.Tensor, fg: torch.Tensor, reduction: str) -> torch.Tensor:
        if self.loss_name == "bce":
            return F.binary_cross_entropy_with_logits(logits[:, 0], fg.float(), reduction=reduction)
        return F.cross_entropy(logits, fg.long(), reduction=reduction)

    @staticmethod
    def _target(batch) -> torch.Tensor:
        if len(batch) < 3:
            raise ValueError("the dense probe needs (image, target, mask) batches: masks are missing")
        return batch[2][:, 0] > 0

    def loss(self, out: torch.Tensor, batch, train: bool = True) -> torch.Tensor:
        fg = self._target(batch)
        return self._pixel_loss(upsample_logits(out, fg.shape[-2:]), fg, "mean")

    def val_sums(self, out: torch.Tensor, batch) -> torch.Tensor:
        fg = self._target(batch)
        logits = upsample_logits(out, fg.shape[-2:])
        loss = self._pixel_loss(logits, fg, "sum").detach().double()
        c = iou_counts(predict_foreground(logits), fg).double()
        return torch.cat([loss.view(1), torch.tensor([float(fg.numel())], dtype=torch.float64, device=out.device), c])

    @staticmethod
    def metrics(s: torch.Tensor) -> Dict[str, float]:
        m = iou_from_counts(s[2:6].tolist())
        out = {"val_loss": float(s[0]) / max(float(s[1]), 1.0)}
        out.update({f"val_{k}": v for k, v in m.items()})
        return out


# ---------------------------------------------------------------------------------------------
# mode: dense
# ---------------------------------------------------------------------------------------------


@EVAL_MODES.register("dense")
def run_dense(ctx: EvalContext) -> Dict[str, Any]:
    """Mode ``dense``: ``{miou, iou_fg, iou_bg, pixel_acc, best_miou, best_epoch, epochs, history, ...}``."""
    # lazy: imports torchvision
    from harl.eval.linear import (ProbeModule, _loader, cached_tensors, fit_probe, optimizer_cfg, scheduler_cfg,
                                  seed_head, summarize_history)

    cfg = ctx.cfg
    if not hasattr(ctx.backbone, "forward_features"):
        raise TypeError(f"mode=dense needs a backbone with forward_features(); {type(ctx.backbone).__name__} has none")
    task = DenseTask(str(cfg.dense.loss), cfg.head_norm)
    common = dict(finetune=bool(cfg.finetune), optimizer=optimizer_cfg(cfg), scheduler=scheduler_cfg(cfg),
                  max_epochs=int(cfg.max_epochs), channels_last=not cfg.performance.disable_channel_last,
                  hparams=OmegaConf.to_container(cfg, resolve=True))
    if cfg.protocol == "cached":
        train_ds, val_ds = build_datasets(ctx, train_augment=False, with_masks=True)
        mtr, ttr, ktr = cached_tensors(ctx, train_ds, "train", kind="maps")
        mva, tva, kva = cached_tensors(ctx, val_ds, "val", kind="maps")
        seed_head(cfg)
        module = ProbeModule(task, mtr.shape[1], None, **common)
        train_loader = _loader(TensorDataset(mtr, ttr, ktr), cfg, shuffle=True, workers=0, random_items=False)
        val_loader = _loader(TensorDataset(mva, tva, kva), cfg, shuffle=False, workers=0)
        fit_probe(ctx, module, train_loader, val_loader, per_epoch_bar=True)
        n_train, n_val, map_shape = len(ttr), len(tva), list(mtr.shape[1:])
    else:
        train_ds, val_ds = build_datasets(ctx, train_augment=True, with_masks=True)
        seed_head(cfg)
        module = ProbeModule(task, int(ctx.backbone.num_features), ctx.backbone,
                             input_transform=ctx.input_transform, **common)
        drop_last = bool(cfg.finetune) and len(train_ds) > int(cfg.optimizer.batch_size)
        fit_probe(ctx, module, _loader(train_ds, cfg, True, drop_last), _loader(val_ds, cfg, False),
                  per_epoch_bar=False)
        n_train, n_val, map_shape = len(train_ds), len(val_ds), None
    keys = {"val_miou": "miou", "val_iou_fg": "iou_fg", "val_iou_bg": "iou_bg", "val_pixel_acc": "pixel_acc",
            "val_loss": "val_loss"}
    out = summarize_history(module.history, "val_miou", keys)
    out.update({"n_train": n_train, "n_val": n_val, "loss": task.loss_name, "feature_map": map_shape})
    return out


def dense_probe(pretrained: Optional[str] = None, *, dataset: str, train_path: str, val_path: str,
                masks_root: Optional[str] = None, val_masks_root: Optional[str] = None, protocol: str = "cached",
                loss: str = "bce", backbone: Optional[str] = None, backbone_kwargs: Optional[dict] = None,
                random_init: bool = False, max_epochs: int = 30, lr: float = 0.1, batch_size: int = 256,
                out_dir: str = "trained_models", progress: bool = True,
                overrides: Optional[Dict[str, Any]] = None, **top_level) -> Dict[str, Any]:
    """Dense (foreground) probe of a checkpoint or a random-init backbone; returns the results dict of
    :func:`harl.eval.runner.evaluate` (``miou``, ``iou_fg``, ``metrics``, ``results_path``, ...).
    ``masks_root`` / ``val_masks_root`` default to the dataset's (fashion_scenes: beside the images)."""
    over = {"optimizer.lr": lr, "optimizer.batch_size": batch_size, "checkpoint.dir": out_dir, "dense.loss": loss,
            "data.masks.root": masks_root, "data.masks.val_root": val_masks_root}
    over.update(overrides or {})
    cfg = build_linear_cfg("dense", pretrained, dataset, train_path, val_path, backbone=backbone,
                           backbone_kwargs=backbone_kwargs, random_init=random_init, overrides=over,
                           protocol=protocol, max_epochs=max_epochs, **top_level)
    return evaluate(cfg, progress=progress)


__all__ = ["DenseTask", "run_dense", "dense_probe", "upsample_logits", "predict_foreground", "iou_counts",
           "iou_from_counts"]
