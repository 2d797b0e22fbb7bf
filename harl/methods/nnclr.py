"""NNCLR (Dwibedi, Aytar, Tompson, Sermanet & Zisserman, ICCV 2021), solo-learn conventions."""

from __future__ import annotations

from typing import Any, Dict, List

import torch
import torch.nn.functional as F

from harl.heads import mlp
from harl.losses import nearest_neighbour, nnclr_loss
from harl.methods.base import BaseMethod
from harl.methods.registry import METHODS
from harl.utils.distributed import gather_no_grad, gather_with_grad, rank


@METHODS.register("nnclr")
class NNCLR(BaseMethod):
    """Projector (3 layers, BN on every layer) and predictor (Linear–BN–ReLU–Linear); the positive of
    view 1 is the nearest neighbour of its projection in a support set (a FIFO queue of earlier
    projections of view 1, gathered over devices), contrasted against the predictions of view 2.

    Loss: ½[CE(nn(z₁)·p₂ᵀ/T) + CE(nn(z₂)·p₁ᵀ/T)] with in-batch negatives; z₁ is enqueued after the loss.
    """

    _DEFAULT_METHOD_KWARGS = {"proj_hidden_dim": 2048, "proj_output_dim": 256, "pred_hidden_dim": 4096,
                              "temperature": 0.2, "queue_size": 65536}

    def __init__(self, cfg):
        super().__init__(cfg)
        kw = cfg.method_kwargs
        self.temperature = float(kw.temperature)
        self.queue_size = int(kw.queue_size)
        out_dim = int(kw.proj_output_dim)
        self.projector = mlp([self.features_dim, kw.proj_hidden_dim, kw.proj_hidden_dim, out_dim])
        self.projector.append(torch.nn.BatchNorm1d(out_dim))
        self.predictor = mlp([out_dim, kw.pred_hidden_dim, out_dim])
        self.register_buffer("queue", F.normalize(torch.randn(self.queue_size, out_dim), dim=1))
        self.register_buffer("queue_y", -torch.ones(self.queue_size, dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @classmethod
    def check_cfg(cls, cfg) -> None:
        super().check_cfg(cfg)
        from harl.config import ConfigError, num_devices

        if cfg.num_large_crops != 2 or cfg.num_small_crops:
            raise ConfigError(f"{cfg.method} needs exactly 2 large crops and no small crops, config gives "
                              f"{cfg.num_large_crops} large and {cfg.num_small_crops} small")
        global_batch = int(cfg.optimizer.batch_size) * num_devices(cfg) * int(cfg.num_nodes)
        if int(cfg.method_kwargs.queue_size) < 1 or int(cfg.method_kwargs.queue_size) % global_batch != 0:
            raise ConfigError(f"method_kwargs.queue_size ({cfg.method_kwargs.queue_size}) must be a positive "
                              f"multiple of the global batch size ({global_batch})")

    @property
    def learnable_params(self) -> List[Dict[str, Any]]:
        return super().learnable_params + [
            {"name": "projector", "params": self.projector.parameters()},
            {"name": "predictor", "params": self.predictor.parameters()},
        ]

    def forward(self, X: torch.Tensor) -> Dict[str, torch.Tensor]:
        out = super().forward(X)
        z = self.projector(out["feats"])
        return {**out, "z": z, "p": self.predictor(z)}

    @torch.no_grad()
    def enqueue(self, z: torch.Tensor, y: torch.Tensor) -> None:
        """z: N×D gathered unit projections of view 1 (y: their labels, for the nn-accuracy log)."""
        n = z.shape[0]
        ptr = int(self.queue_ptr)
        self.queue[ptr:ptr + n] = z.to(self.queue.dtype)
        self.queue_y[ptr:ptr + n] = y
        self.queue_ptr[0] = (ptr + n) % self.queue_size

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        out = super().training_step(batch, batch_idx)
        targets = batch[2]
        (z1, z2), (p1, p2) = out["z"][:2], out["p"][:2]
        nn1, idx1 = nearest_neighbour(z1, self.queue)
        nn2, _ = nearest_neighbour(z2, self.queue)
        offset = rank() * p1.shape[0]
        loss = (nnclr_loss(nn1, p2, self.temperature, gather_with_grad(p2), offset)
                + nnclr_loss(nn2, p1, self.temperature, gather_with_grad(p1), offset)) / 2
        with torch.no_grad():
            nn_acc = (self.queue_y[idx1] == targets).float().mean()
        self.enqueue(gather_no_grad(F.normalize(z1.detach(), dim=-1)), gather_no_grad(targets))
        self.log_dict({"train_nnclr_loss": loss, "train_nn_acc": nn_acc}, on_epoch=True, sync_dist=True)
        return loss + out["loss"]
