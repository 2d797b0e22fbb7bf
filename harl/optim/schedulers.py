"""Learning-rate schedules, stepped per optimizer step (or per epoch).

``warmup_cosine``: linear warm-up from ``warmup_start_lr`` to the group's base lr over
``warmup_steps`` steps, then cosine from the base lr to ``min_lr`` at ``total_steps``::

    lr_k = start + k (base - start) / (W - 1)                     for k < W
    lr_k = min + ½ (base - min) (1 + cos(π (k - W) / (K - W)))     for k ≥ W

(the closed form of the LinearWarmupCosineAnnealingLR solo-learn uses). Parameter groups marked
``static_lr`` keep their base lr.
"""

from __future__ import annotations

import math
from typing import Iterable, List, Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


def warmup_cosine_lr(step: int, base_lr: float, warmup_steps: int, total_steps: int,
                     warmup_start_lr: float = 0.0, min_lr: float = 0.0) -> float:
    """Closed-form warm-up + cosine learning rate at ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        if warmup_steps == 1:
            return base_lr
        return warmup_start_lr + step * (base_lr - warmup_start_lr) / (warmup_steps - 1)
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * progress))


class WarmupCosine(LRScheduler):
    """Per-group warm-up + cosine; groups whose index is in ``static_groups`` keep their lr."""

    def __init__(self, optimizer: Optimizer, warmup_steps: int, total_steps: int,
                 warmup_start_lr: float = 0.0, min_lr: float = 0.0, static_groups: Iterable[int] = (),
                 last_epoch: int = -1):
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.warmup_start_lr = float(warmup_start_lr)
        self.min_lr = float(min_lr)
        self.static_groups = set(static_groups)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> List[float]:
        return [
            base if i in self.static_groups else warmup_cosine_lr(
                self.last_epoch, base, self.warmup_steps, self.total_steps, self.warmup_start_lr, self.min_lr)
            for i, base in enumerate(self.base_lrs)
        ]


class StepDecay(LRScheduler):
    """lr × 0.1 at each milestone in ``milestones`` (steps or epochs)."""

    def __init__(self, optimizer: Optimizer, milestones: Sequence[int], gamma: float = 0.1,
                 static_groups: Iterable[int] = (), last_epoch: int = -1):
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = gamma
        self.static_groups = set(static_groups)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> List[float]:
        n = sum(1 for m in self.milestones if self.last_epoch >= m)
        return [base if i in self.static_groups else base * self.gamma ** n for i, base in enumerate(self.base_lrs)]


def cosine_increase(step: int, total_steps: int, base: float, final: float) -> float:
    """``final - (final - base) · (1 + cos(π k/K)) / 2``: the EMA τ / α schedule shape (fp64)."""
    total_steps = max(1, total_steps)
    c = (1 + math.cos(math.pi * min(step, total_steps) / total_steps)) / 2
    return final - (final - base) * c
