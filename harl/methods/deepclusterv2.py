"""DeepClusterV2 (Caron et al., NeurIPS 2020, the SwAV paper's variant), solo-learn conventions."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from harl.config_values import Int, Seq
from harl.heads import mlp
from harl.losses import deepclusterv2_loss, kmeans_cosine
from harl.methods.base import BaseMethod
from harl.methods.registry import METHODS
from harl.utils.distributed import gather_no_grad, is_distributed, world_size
from harl.errors import ConfigError


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    dist.all_reduce(t)
    return t


@METHODS.register("deepclusterv2")
class DeepClusterV2(BaseMethod):
    """Projector Linear–BN–ReLU–Linear → L2-normalised z; prototype sets = k-means centroids.

    During an epoch the large crops' projections fill a per-process memory bank (one row per sample
    of the epoch, with its dataset index). At the start of the next epoch, for each prototype set h
    (``num_prototypes[h]`` centroids, the sets cycling through the large crops' banks) spherical
    k-means (``kmeans_iters`` iterations, centroids initialised from random bank rows of rank 0, sums
    all-reduced) gives the centroids, copied into the (frozen) prototype layer, and the assignment of
    every image. Every crop then predicts its image's assignments: loss = mean_h CE(z·C_hᵀ / T, a_h)
    (:func:`harl.losses.deepclusterv2_loss`). Before the first clustering — the first epoch, or the
    first epoch after a resume, since the bank is not checkpointed — no image has an assignment and
    the loss is 0. Multi-crop supported (small crops predict, only large crops enter the bank).
    """

    _DEFAULT_METHOD_KWARGS = {"proj_hidden_dim": 2048, "proj_output_dim": 128, "num_prototypes": [3000, 3000, 3000],
                              "temperature": 0.1, "kmeans_iters": 10}
    _METHOD_KWARG_VALUES = {"num_prototypes": Seq(Int(ge=1), nonempty=True), "kmeans_iters": Int(ge=0)}

    def __init__(self, cfg):
        super().__init__(cfg)
        kw = cfg.method_kwargs
        self.temperature = float(kw.temperature)
        self.kmeans_iters = int(kw.kmeans_iters)
        self.num_prototypes = [int(k) for k in kw.num_prototypes]
        dim = int(kw.proj_output_dim)
        self.projector = mlp([self.features_dim, kw.proj_hidden_dim, dim])
        self.prototypes = nn.ModuleList(nn.Linear(dim, k, bias=False) for k in self.num_prototypes)
        with torch.no_grad():
            for proto in self.prototypes:
                proto.weight.copy_(F.normalize(proto.weight, dim=1))
                proto.weight.requires_grad = False
        #: memory bank (allocated at the start of training: not part of the checkpoint)
        self.memory_index: Optional[torch.Tensor] = None  # M dataset indexes (−1: empty row)
        self.memory_z: Optional[torch.Tensor] = None  # num_large_crops × M × D
        self.assignments: Optional[torch.Tensor] = None  # H × (max index + 1), −100: none
        self.bank_filled = False

    @classmethod
    def check_cfg(cls, cfg) -> None:
        super().check_cfg(cfg)

        if cfg.num_large_crops < 1 or cfg.num_large_crops + cfg.num_small_crops < 2:
            raise ConfigError(f"{cfg.method} needs at least 2 crops, one of them large")

    @property
    def learnable_params(self) -> List[Dict[str, Any]]:
        return super().learnable_params + [{"name": "projector", "params": self.projector.parameters()}]

    def forward(self, X: torch.Tensor) -> Dict[str, torch.Tensor]:
        out = super().forward(X)
        return {**out, "z": F.normalize(self.projector(out["feats"]), dim=-1)}

    def multicrop_forward(self, X: torch.Tensor) -> Dict[str, torch.Tensor]:
        out = super().multicrop_forward(X)
        return {**out, "z": F.normalize(self.projector(out["feats"]), dim=-1)}

    # ------------------------------------------------------------------ memory bank and k-means
    def allocate_memory(self, rows: int) -> None:
        """An empty bank of ``rows`` rows per large crop on this process."""
        dim = self.prototypes[0].in_features
        self.memory_index = torch.full((rows,), -1, dtype=torch.long, device=self.device)
        self.memory_z = torch.zeros(self.num_large_crops, rows, dim, device=self.device)
        self.bank_filled = False

    def on_train_start(self) -> None:
        super().on_train_start()
        self.allocate_memory(int(self.trainer.num_training_batches) * int(self.cfg.optimizer.batch_size))

    @torch.no_grad()
    def update_memory(self, indexes: torch.Tensor, z: List[torch.Tensor], batch_idx: int) -> None:
        """Write the batch's large-crop projections (B×D each) at rows batch_idx·B .. (batch_idx+1)·B."""
        if self.memory_index is None:
            return
        start, n = batch_idx * indexes.shape[0], indexes.shape[0]
        if start + n > self.memory_index.shape[0]:
            return
        self.memory_index[start:start + n] = indexes
        for c in range(self.num_large_crops):
            self.memory_z[c, start:start + n] = z[c].detach().float()

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        if self.memory_index is not None:
            self.bank_filled = True

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        if self.bank_filled:
            self.cluster()

    @torch.no_grad()
    def cluster(self) -> None:
        """k-means of the bank for every prototype set; sets the prototypes and the assignments."""
        keep = self.memory_index >= 0
        local_index = self.memory_index[keep]
        rows = int(local_index.shape[0])
        all_index = gather_no_grad(local_index)
        labels = []
        crop = 0
        for h, k in enumerate(self.num_prototypes):
            x = self.memory_z[crop][keep]
            if rows < k:
                raise ValueError(f"{self.cfg.method}: num_prototypes[{h}] = {k} is more than the {rows} projections "
                                 f"in this process's memory bank (one epoch of samples)")
            init = x[torch.randperm(rows, device=x.device)[:k]].contiguous()
            if is_distributed() and world_size() > 1:
                dist.broadcast(init, 0)
            reduce = _all_reduce_sum if is_distributed() and world_size() > 1 else None
            centroids, assign = kmeans_cosine(x, init, self.kmeans_iters, reduce)
            self.prototypes[h].weight.copy_(centroids.to(self.prototypes[h].weight.dtype))
            labels.append(gather_no_grad(assign))
            crop = (crop + 1) % self.num_large_crops
        self.assignments = torch.full((len(self.num_prototypes), int(all_index.max()) + 1), -100, dtype=torch.long,
                                      device=all_index.device)
        for h, lab in enumerate(labels):
            self.assignments[h, all_index] = lab

    def targets(self, indexes: torch.Tensor) -> torch.Tensor:
        """H×B assignments of the batch's images (−100 where there is none yet)."""
        out = torch.full((len(self.num_prototypes), indexes.shape[0]), -100, dtype=torch.long, device=indexes.device)
        if self.assignments is not None:
            known = indexes < self.assignments.shape[1]
            out[:, known] = self.assignments[:, indexes[known]].to(indexes.device)
        return out

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        out = super().training_step(batch, batch_idx)
        scores = [[proto(z) for z in out["z"]] for proto in self.prototypes]
        loss = deepclusterv2_loss(scores, self.targets(batch[0]), self.temperature)
        self.update_memory(batch[0], out["z"][: self.num_large_crops], batch_idx)
        self.log("train_deepclusterv2_loss", loss, on_epoch=True, sync_dist=True)
        return loss + out["loss"]
