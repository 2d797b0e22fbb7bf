"""The online kNN monitor of every method: a torchmetrics ``Metric`` around :func:`harl.ops.knn.knn_predict`.

:class:`WeightedKNN` accumulates a train bank (training steps) and test features (validation
steps) in non-persistent states (nothing goes into checkpoints) and returns top-1/top-5 in %.
Weights: cosine → exp(cos / T); euclidean → 1 / (distance + eps).
"""

from __future__ import annotations

from typing import Tuple

import torch
from torchmetrics import Metric

from harl.ops.knn import knn_predict, topk_accuracy

__all__ = ["WeightedKNN"]


class WeightedKNN(Metric):
    """Accumulates (train bank, test features) across steps; ``compute()`` → (top-1, top-5) in %."""

    full_state_update = False

    def __init__(self, k: int = 20, T: float = 0.07, distance_func: str = "euclidean",
                 max_distance_matrix_size: int = int(5e6)):
        super().__init__(dist_sync_on_step=False)
        self.k, self.T, self.distance_func = k, T, distance_func
        self.max_distance_matrix_size = max_distance_matrix_size
        for name in ("train_features", "train_targets", "test_features", "test_targets"):
            self.add_state(name, default=[], persistent=False)

    def update(self, train_features=None, train_targets=None, test_features=None, test_targets=None):
        if train_features is not None:
            keep = train_targets != -1
            self.train_features.append(train_features[keep].detach())
            self.train_targets.append(train_targets[keep].detach())
        if test_features is not None:
            keep = test_targets != -1
            self.test_features.append(test_features[keep].detach())
            self.test_targets.append(test_targets[keep].detach())

    @torch.no_grad()
    def compute(self) -> Tuple[float, float]:
        def cat(x):
            if isinstance(x, torch.Tensor):
                return x
            return torch.cat(x) if len(x) else torch.empty(0)

        train_f, train_t = cat(self.train_features), cat(self.train_targets)
        test_f, test_t = cat(self.test_features), cat(self.test_targets)
        if train_f.numel() == 0 or test_f.numel() == 0:
            return float("nan"), float("nan")
        num_classes = int(max(train_t.max(), test_t.max()) + 1)
        scores = knn_predict(train_f, train_t.long(), test_f, num_classes, self.k, self.T,
                             self.distance_func, self.max_distance_matrix_size)
        return topk_accuracy(scores, test_t.long())
