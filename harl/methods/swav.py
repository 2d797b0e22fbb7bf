"""SwAV (Caron et al., NeurIPS 2020), solo-learn conventions: prototypes, Sinkhorn codes, queue."""

from __future__ import annotations

from typing import Any, Dict, List

import torch
import torch.distributed as dist
import torch.nn.functional as F

from harl.config_values import Int
from harl.heads import PrototypeLayer, mlp
from harl.losses import sinkhorn_knopp, swav_loss
from harl.methods.base import BaseMethod
from harl.methods.registry import METHODS
from harl.utils.distributed import is_distributed, world_size
from harl.config import num_devices
from harl.errors import ConfigError


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_distributed() and world_size() > 1:
        t = t.clone()
        dist.all_reduce(t)
    return t


@METHODS.register("swav")
class SwAV(BaseMethod):
    """Projector Linear–BN–ReLU–Linear → L2-normalised z → scores against unit-norm prototypes.

    For each large crop the codes q are Sinkhorn-Knopp assignments of its scores (with the scores
    of the queued projections of earlier batches appended once ``epoch_queue_starts`` is reached);
    every other crop predicts them: loss = mean_{v, w≠v} CE(q_v, softmax(p_w / T)). The prototypes
    get no gradient during the first ``freeze_prototypes_epochs`` epochs. Multi-crop supported.
    """

    _DEFAULT_METHOD_KWARGS = {"proj_hidden_dim": 2048, "proj_output_dim": 128, "num_prototypes": 3000,
                              "temperature": 0.1, "queue_size": 3840, "epoch_queue_starts": 15,
                              "freeze_prototypes_epochs": 1, "sk_iters": 3, "sk_epsilon": 0.05}
    _METHOD_KWARG_VALUES = {"queue_size": Int(ge=0)}  # 0: no queue

    def __init__(self, cfg):
        super().__init__(cfg)
        kw = cfg.method_kwargs
        self.temperature = float(kw.temperature)
        self.epoch_queue_starts = int(kw.epoch_queue_starts)
        self.freeze_prototypes_epochs = int(kw.freeze_prototypes_epochs)
        self.sk_iters = int(kw.sk_iters)
        self.sk_epsilon = float(kw.sk_epsilon)
        self.projector = mlp([self.features_dim, kw.proj_hidden_dim, kw.proj_output_dim])
        self.prototypes = PrototypeLayer(kw.proj_output_dim, kw.num_prototypes)  # unit-norm rows
        self.queue_size = int(kw.queue_size)

        self.local_queue_size = self.queue_size // (num_devices(cfg) * int(cfg.num_nodes))
        self.register_buffer("queue", torch.zeros(self.num_large_crops, self.local_queue_size, kw.proj_output_dim))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))

    @classmethod
    def check_cfg(cls, cfg) -> None:
        super().check_cfg(cfg)

        kw = cfg.method_kwargs
        devices = num_devices(cfg) * int(cfg.num_nodes)
        global_batch = int(cfg.optimizer.batch_size) * devices
        if int(kw.queue_size) < 0 or (int(kw.queue_size) and int(kw.queue_size) % global_batch != 0):
            raise ConfigError(f"method_kwargs.queue_size ({kw.queue_size}) must be 0 or a multiple of the global "
                              f"batch size ({global_batch})")
        if int(kw.sk_iters) < 1 or float(kw.sk_epsilon) <= 0 or float(kw.temperature) <= 0:
            raise ConfigError("method_kwargs.sk_iters must be >= 1 and sk_epsilon, temperature > 0")

    @property
    def learnable_params(self) -> List[Dict[str, Any]]:
        return super().learnable_params + [
            {"name": "projector", "params": self.projector.parameters()},
            {"name": "prototypes", "params": self.prototypes.parameters()},
        ]

    def scores(self, z: torch.Tensor) -> torch.Tensor:
        """B×D (unit) → B×K scores against the unit-norm prototypes."""
        return self.prototypes(z)

    def _heads(self, out: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        z = F.normalize(self.projector(out["feats"]), dim=-1)
        return {**out, "z": z, "p": self.scores(z)}

    def forward(self, X: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self._heads(super().forward(X))

    def multicrop_forward(self, X: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self._heads(super().multicrop_forward(X))

    @torch.no_grad()
    def codes(self, preds: List[torch.Tensor]) -> List[torch.Tensor]:
        """Sinkhorn codes of the large crops' scores (B×K each), the queue's scores appended when in use."""
        use_queue = self.queue_size > 0 and self.current_epoch >= self.epoch_queue_starts
        out = []
        for v, p in enumerate(preds[: self.num_large_crops]):
            b = p.shape[0]
            if use_queue and int(self.queue_filled) > 0:
                p = torch.cat([p, self.scores(self.queue[v, : int(self.queue_filled)]).to(p.dtype)])
            out.append(sinkhorn_knopp(p, self.sk_epsilon, self.sk_iters, _all_reduce_sum, world_size())[:b])
        return out

    @torch.no_grad()
    def enqueue(self, z: List[torch.Tensor]) -> None:
        """Shift the queue by B and put the large crops' z (B×D each) at its front."""
        if self.queue_size == 0:
            return
        b = z[0].shape[0]
        self.queue[:, b:] = self.queue[:, :-b].clone()
        self.queue[:, :b] = torch.stack([x.detach().to(self.queue.dtype) for x in z[: self.num_large_crops]])
        self.queue_filled.fill_(min(int(self.queue_filled) + b, self.local_queue_size))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        out = super().training_step(batch, batch_idx)
        codes = self.codes(out["p"])
        loss = swav_loss(out["p"], codes, self.temperature)
        self.enqueue(out["z"])
        self.log("train_swav_loss", loss, on_epoch=True, sync_dist=True)
        return loss + out["loss"]

    def on_after_backward(self) -> None:
        if self.current_epoch < self.freeze_prototypes_epochs:
            for p in self.prototypes.parameters():
                p.grad = None
