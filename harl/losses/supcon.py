"""Supervised contrastive loss (Khosla et al., NeurIPS 2020), the paper's L_out form."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1,
                z_all: torch.Tensor | None = None, labels_all: torch.Tensor | None = None,
                offset: int = 0) -> torch.Tensor:
    """SupCon for the local embeddings ``z`` (N×D: every view of every local sample).

    Against ``z_all`` (M×D, gathered across devices; defaults to ``z``), in which the local rows sit at
    ``offset .. offset+N``: with ẑ = z/‖z‖, A(i) = every row but i itself and P(i) ⊂ A(i) the rows with
    the same label as i (other views of the same image included),

        L = mean_i  −1/|P(i)| Σ_{p∈P(i)} log( exp(ẑ_i·ẑ_p / T) / Σ_{a∈A(i)} exp(ẑ_i·ẑ_a / T) ).

    Args:
        z: N×D local embeddings; labels: N class labels (≥ 0), the views of an image share one.
        temperature: T.
        z_all, labels_all, offset: the gathered batch and where the local block sits in it.

    Every anchor needs a positive (two views or more per image guarantee one).
    """
    if z_all is None:
        z_all, labels_all, offset = z, labels, 0
    z = F.normalize(z.float(), dim=-1)
    z_all = F.normalize(z_all.float(), dim=-1)
    logits = z @ z_all.T / temperature  # N×M
    n = z.shape[0]
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    rows = torch.arange(n, device=z.device)
    self_mask[rows, rows + offset] = True
    pos_mask = (labels.view(-1, 1) == labels_all.view(1, -1)) & ~self_mask
    log_prob = logits - torch.logsumexp(logits.masked_fill(self_mask, float("-inf")), dim=1, keepdim=True)
    num_pos = pos_mask.sum(dim=1)
    if bool((num_pos == 0).any()):
        raise ValueError("supcon_loss: an anchor has no positive (every image needs two views or more)")
    return -((log_prob * pos_mask).sum(dim=1) / num_pos).mean()
