"""Weighted k-nearest-neighbour classification (the kNN monitor and ``harl-linear --knn``).

:func:`knn_predict` is a pure function; :class:`WeightedKNN` is a torchmetrics ``Metric`` that
accumulates a train bank and test features (non-persistent states) and returns top-1/top-5.

Weights: cosine → exp(cos / T); euclidean → 1 / (distance + eps). The distance matrix is computed
in chunks of at most ``max_distance_matrix_size`` entries.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torchmetrics import Metric


def knn_predict(train_features: torch.Tensor, train_targets: torch.Tensor, test_features: torch.Tensor,
                num_classes: int, k: int = 20, T: float = 0.07, distance_func: str = "cosine",
                max_distance_matrix_size: int = int(5e6), eps: float = 1e-5) -> torch.Tensor:
    """Class scores for each test sample.

    Args:
        train_features: N×D bank; train_targets: N labels in [0, num_classes).
        test_features: M×D queries.
    Returns:
        M×num_classes scores (sum of neighbour weights per class).
    """
    if distance_func not in ("cosine", "euclidean"):
        raise ValueError(f"distance_func must be 'cosine' or 'euclidean', got {distance_func!r}")
    if train_features.shape[0] == 0:
        raise ValueError("kNN: the train bank is empty (no labelled training features)")
    train_features = train_features.float()
    test_features = test_features.float()
    if distance_func == "cosine":
        train_features = F.normalize(train_features, dim=1)
        test_features = F.normalize(test_features, dim=1)
    k = min(k, train_features.shape[0])
    n_train = train_features.shape[0]
    chunk = max(1, min(test_features.shape[0], max_distance_matrix_size // max(1, n_train)))
    scores = []
    for start in range(0, test_features.shape[0], chunk):
        feats = test_features[start:start + chunk]
        if distance_func == "cosine":
            sim = feats @ train_features.T
            top_sim, top_idx = sim.topk(k, dim=1, largest=True)
            weights = (top_sim / T).exp()
        else:
            dist = torch.cdist(feats, train_features)
            top_dist, top_idx = dist.topk(k, dim=1, largest=False)
            weights = 1.0 / (top_dist + eps)
        labels = train_targets[top_idx]  # m×k
        one_hot = torch.zeros(feats.shape[0], k, num_classes, device=feats.device)
        one_hot.scatter_(2, labels.unsqueeze(-1), 1.0)
        scores.append((one_hot * weights.unsqueeze(-1)).sum(dim=1))
    return torch.cat(scores)


def topk_accuracy(scores: torch.Tensor, targets: torch.Tensor, topk=(1, 5)) -> Tuple[float, ...]:
    """Percent of rows whose target is among the ``k`` highest scores, for each k."""
    out = []
    n = max(1, targets.shape[0])
    for k in topk:
        k = min(k, scores.shape[1])
        pred = scores.topk(k, dim=1).indices
        out.append(float((pred == targets.view(-1, 1)).any(dim=1).float().sum() * 100.0 / n))
    return tuple(out)


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
