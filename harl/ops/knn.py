"""Weighted k-nearest-neighbour classification: pure tensor functions.

:func:`knn_predict` scores test features against a labelled bank and :func:`topk_accuracy` turns
scores into top-k accuracies. Both the online kNN monitor of the methods
(:class:`harl.methods.knn_monitor.WeightedKNN`) and the offline probe (``harl-linear --knn``,
:mod:`harl.eval.knn_probe`) use them.

Weights: cosine → exp(cos / T); euclidean → 1 / (distance + eps). The distance matrix is computed
in chunks of at most ``max_distance_matrix_size`` entries.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

__all__ = ["knn_predict", "topk_accuracy"]


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
