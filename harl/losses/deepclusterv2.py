"""DeepClusterV2 (Caron et al., NeurIPS 2020, the SwAV paper's variant): spherical k-means on a memory
bank of projections, and the cross-entropy of prototype scores against the k-means assignments."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F


def kmeans_cosine(x: torch.Tensor, centroids: torch.Tensor, iters: int,
                  all_reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
    """Spherical k-means of the unit rows of ``x`` (N×D) from the initial ``centroids`` (K×D).

    Each iteration assigns every row to the centroid of largest dot product, then moves every centroid
    that received rows to the L2-normalised mean of its rows (sums and counts go through
    ``all_reduce`` when given, so every process gets the same centroids); an empty cluster keeps its
    centroid. After ``iters`` iterations the rows are assigned once more.

    Returns:
        (K×D centroids, N assignments in [0, K)).
    """
    x = x.float()
    centroids = centroids.float().clone()
    k = centroids.shape[0]
    for it in range(iters + 1):
        assign = (x @ centroids.T).argmax(dim=1)
        if it == iters:
            break
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        if all_reduce is not None:
            sums, counts = all_reduce(sums), all_reduce(counts)
        filled = counts > 0
        centroids[filled] = F.normalize(sums[filled] / counts[filled, None], dim=1)
    return centroids, assign


def deepclusterv2_loss(scores: Sequence[Sequence[torch.Tensor]], assignments: torch.Tensor,
                       temperature: float = 0.1, ignore_index: int = -100) -> torch.Tensor:
    """Mean over prototype sets h of CE(softmax(s / T), a_h) over every crop.

    Args:
        scores: ``scores[h][c]`` is the B×K_h score matrix of crop c against prototype set h.
        assignments: H×B k-means assignments of the B images (``ignore_index`` where none yet); every
            crop of an image predicts its image's assignment.
        temperature: T.

    Entries equal to ``ignore_index`` are left out; with none left a set contributes 0 (keeping the
    graph), so the first epoch, before any k-means, gives a zero loss instead of NaN.
    """
    total = 0.0
    for h, crops in enumerate(scores):
        logits = torch.cat(list(crops)) / temperature
        target = assignments[h].repeat(len(crops))
        keep = target != ignore_index
        if bool(keep.any()):
            total = total + F.cross_entropy(logits[keep], target[keep])
        else:
            total = total + logits.sum() * 0.0
    return total / len(scores)
