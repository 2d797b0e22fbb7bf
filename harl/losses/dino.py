"""DINO's self-distillation cross-entropy (Caron et al., 2021)."""

from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F


def dino_loss(student: List[torch.Tensor], teacher: List[torch.Tensor], center: torch.Tensor,
              student_temperature: float = 0.1, teacher_temperature: float = 0.04) -> torch.Tensor:
    """Mean over pairs (t, s ≠ t) of −mean_b Σ_k P_t[b,k] log P_s[b,k].

    P_t = softmax((teacher_t − center) / τ_t) (sharpened, centred, no gradient) for the teacher's
    crops (the large ones), P_s = softmax(student_s / τ_s) for every crop of the student; the
    student crop s equal to the teacher crop t (same view) is skipped.

    Args:
        student: per crop, B×K student outputs (large crops first, then small ones).
        teacher: per large crop, B×K teacher outputs.
        center: 1×K (or K) running centre of the teacher outputs.
    """
    targets = [F.softmax((t.detach().float() - center) / teacher_temperature, dim=-1) for t in teacher]
    logps = [F.log_softmax(s.float() / student_temperature, dim=-1) for s in student]
    losses = []
    for ti, p in enumerate(targets):
        for si, logp in enumerate(logps):
            if si != ti:
                losses.append(-(p * logp).sum(dim=-1).mean())
    return sum(losses) / len(losses)
