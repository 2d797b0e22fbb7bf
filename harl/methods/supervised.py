"""Supervised training with the pretraining pipeline: the *ceiling* of a method comparison.

Same backbone, data, augmentations, optimiser and budget as the self-supervised runs, but the
backbone is trained through the classifier with the labels (cross-entropy on every large crop).
It is not a self-supervised method: :mod:`benchmarks.quality` uses it to say how much of the gap
between a random-init backbone (the floor) and a backbone trained with labels (the ceiling) a
method closes. The checkpoint has the usual ``backbone.`` keys, so every probe reads it unchanged.
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch
import torch.nn.functional as F

from harl.methods.base import BaseMethod, accuracy_at_k
from harl.methods.registry import METHODS
from harl.errors import ConfigError


@METHODS.register("supervised")
class Supervised(BaseMethod):
    """Backbone → linear classifier, trained end to end with labels.

    Loss: mean over the large crops v of CE(W·f(x_v) + b, y) — the classifier sees the features
    *with* their gradient (the online probe of the other methods sees them detached). Samples with
    target −1 (unlabelled) are ignored; a batch without labels is an error.
    """

    _DEFAULT_METHOD_KWARGS: Dict[str, Any] = {"label_smoothing": 0.0}

    def __init__(self, cfg):
        super().__init__(cfg)
        self.label_smoothing = float(cfg.method_kwargs.label_smoothing)

    @classmethod
    def check_cfg(cls, cfg) -> None:
        super().check_cfg(cfg)

        if not 0.0 <= float(cfg.method_kwargs.label_smoothing) < 1.0:
            raise ConfigError(f"method_kwargs.label_smoothing = {cfg.method_kwargs.label_smoothing!r} "
                              "must be in [0, 1)")

    @property
    def learnable_params(self) -> List[Dict[str, Any]]:
        # the classifier is trained at the method's lr (it is the supervised head, not a probe)
        return [{"name": "backbone", "params": self.backbone.parameters()},
                {"name": "classifier", "params": self.classifier.parameters()}]

    def supervised_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """logits N×K, targets N (−1 = unlabelled) → mean cross-entropy over labelled samples."""
        if not bool((targets != -1).any()):
            raise ValueError("method 'supervised' got a batch without labels (every target is -1)")
        return F.cross_entropy(logits, targets, ignore_index=-1, label_smoothing=self.label_smoothing)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        X, targets = batch[1], batch[2]
        X = [X] if isinstance(X, torch.Tensor) else list(X)
        if len(X) != self.num_crops:
            raise ValueError(f"batch has {len(X)} crops, config says {self.num_crops}")
        feats = [self.backbone(self._prepare(x)) for x in X[: self.num_large_crops]]
        logits = self.classifier(torch.cat(feats))
        rep = targets.repeat(self.num_large_crops)
        loss = self.supervised_loss(logits, rep)
        acc1, acc5 = accuracy_at_k(logits.detach(), rep)
        self.log_dict({"train_class_loss": loss, "train_acc1": acc1, "train_acc5": acc5},
                      on_epoch=True, sync_dist=True)
        if self.knn is not None:
            self.knn(train_features=feats[0].detach(), train_targets=targets)
        return loss
