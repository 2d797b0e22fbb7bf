"""The support set of the nearest-neighbour methods (NNCLR, NNBYOL, NNSiam): a FIFO queue of unit
projections with their labels (labels only feed the logged nearest-neighbour accuracy)."""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from harl.config import num_devices
from harl.errors import ConfigError
from harl.losses import nearest_neighbour
from harl.methods.base import require_two_large_crops
from harl.utils.distributed import gather_no_grad


class SupportSet(nn.Module):
    """Q×D buffer ``queue`` (random unit rows at first), ``labels`` (Q, −1 = unknown) and ``ptr``."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.size = int(size)
        self.register_buffer("queue", F.normalize(torch.randn(self.size, dim), dim=1))
        self.register_buffer("labels", -torch.ones(self.size, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def nearest(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """B×D → (B×D unit nearest rows, their B indices); see :func:`harl.losses.nearest_neighbour`."""
        return nearest_neighbour(z, self.queue)

    @torch.no_grad()
    def push(self, z: torch.Tensor, y: torch.Tensor) -> None:
        """Gather ``z`` (B×D, normalised here) and ``y`` (B) over devices and write them at the pointer."""
        z = gather_no_grad(F.normalize(z.detach().float(), dim=-1))
        y = gather_no_grad(y)
        n = z.shape[0]
        if self.size % n != 0:
            raise RuntimeError(f"support-set size {self.size} is not a multiple of the global batch {n}")
        ptr = int(self.ptr)
        self.queue[ptr:ptr + n] = z.to(self.queue.dtype)
        self.labels[ptr:ptr + n] = y
        self.ptr[0] = (ptr + n) % self.size

    @torch.no_grad()
    def accuracy(self, idx: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Fraction of samples whose neighbour (rows ``idx``) carries their label."""
        return (self.labels[idx] == y).float().mean()


def check_support_set(cfg) -> None:
    """Two large crops only, and ``queue_size`` a positive multiple of the global batch."""
    require_two_large_crops(cfg)
    global_batch = int(cfg.optimizer.batch_size) * num_devices(cfg) * int(cfg.num_nodes)
    size = int(cfg.method_kwargs.queue_size)
    if size < 1 or size % global_batch != 0:
        raise ConfigError(f"method_kwargs.queue_size ({size}) must be a positive multiple of the global batch "
                          f"size ({global_batch})")
