"""HARL: Heuristic Attention Representation Learning (Tran et al., Sensors 2022).

BYOL where each view's feature map is also pooled over the foreground and the background of a
binary (heuristic) mask; every branch goes through the *shared* projector and predictor, fg pairs
only with fg and bg with bg (docs/methods/harl.md)::

    F_v = f_θ(x_v)                                   B×C×h×w (c5; c4 / stride-1 / pixel-shuffle options)
    M_f, M_b = mask_to_grid(mask_v, (h, w))          B×1×h×w
    h_g = mean F,  h_f = Σ F⊙M_f / (ΣM_f + 1),  h_b = Σ F⊙M_b / (ΣM_b + 1)
    z = g_θ(h),  p = q_θ(z);  target z′ = g_ξ(pool(f_ξ(x_v)))  with the view's own mask
    L_* = ℓ(p_{*,1}, z′_{*,2}) + ℓ(p_{*,2}, z′_{*,1}),  ℓ = 2 − 2·mean cos
    hybrid: L = β_k·L_g + (1 − β_k)·[α_k·L_f + (1 − α_k)·L_b]

α_k rises from α_base to 1 and β_k decays from λ_base to β_min on cosines over the optimizer
steps. An empty region (in either view) is excluded from its branch rather than pooled to zero.

HARL is a :class:`~harl.methods.base.BaseMomentumMethod` with BYOL's heads (built by
:func:`harl.heads.byol_heads`, under BYOL's state-dict names) and its own training step; the
objective is assembled by :func:`harl.losses.harl.harl_total_loss`.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from omegaconf import DictConfig

from harl.backbones.resnet import SSLResNet
from harl.heads import BYOL_HEAD_KWARGS, byol_heads, byol_mlp, momentum_copy
from harl.losses.harl import (
    ALPHA_MODES, BETA_MODES, EMPTY_POLICIES, HYBRID_MODES, LOSS_TYPES, POOLINGS, alpha_schedule, beta_schedule,
    harl_branch_loss, harl_loss_weights, harl_total_loss, pool_regions, region_validity,
)
from harl.methods.base import BaseMomentumMethod, apply_backbone_overrides
from harl.methods.registry import METHODS
from harl.errors import ConfigError
from harl.registry import close_match_hint
from harl.ops.mask_grid import MASK_MODES, mask_to_grid

FEATURE_MAPS = ("c5", "c5_stride1", "c4", "c5_pixel_shuffle")
GRANULARITIES = ("step", "epoch")


@METHODS.register("harl")
class HARL(BaseMomentumMethod):
    """BYOL's heads on the global, fg and bg pooling of each view's map; one shared projector and
    predictor (a ``c4`` region map gets its own projector), the objective of docs/methods/harl.md."""

    uses_masks = True
    _DEFAULT_METHOD_KWARGS = {
        **BYOL_HEAD_KWARGS,
        "loss_type": "hybrid", "alpha_base": 0.7, "alpha_mode": "cosine", "lambda_base": 0.7,
        "beta_mode": "cosine", "beta_min": 0.0, "hybrid_mode": "cosine_decay_global", "mask_weight": 0.5,
        "schedule_granularity": "step", "feature_map": "c5", "c5_dilate": False, "pooling": "masked_mean",
        "pool_eps": 1.0, "mask_mode": "binary", "mask_threshold": 0.0, "empty_mask_policy": "exclude",
    }

    @classmethod
    def check_cfg(cls, cfg: DictConfig) -> None:
        super().check_cfg(cfg)

        kw = cfg.method_kwargs
        for key, allowed in (("loss_type", LOSS_TYPES), ("alpha_mode", ALPHA_MODES), ("beta_mode", BETA_MODES),
                             ("hybrid_mode", HYBRID_MODES), ("feature_map", FEATURE_MAPS),
                             ("pooling", POOLINGS), ("mask_mode", MASK_MODES),
                             ("empty_mask_policy", EMPTY_POLICIES), ("schedule_granularity", GRANULARITIES)):
            if kw[key] not in allowed:
                raise ConfigError(f"method_kwargs.{key} = {kw[key]!r} must be one of {sorted(allowed)}"
                                  f"{close_match_hint(kw[key], allowed)}")
        if cfg.num_large_crops != 2:
            raise ConfigError(f"harl needs exactly 2 large crops (views T and T'), config gives {cfg.num_large_crops}")
        if (kw.pooling == "pixel_shuffle") != (kw.feature_map == "c5_pixel_shuffle"):
            raise ConfigError("method_kwargs.pooling 'pixel_shuffle' and feature_map 'c5_pixel_shuffle' go together "
                              f"(got pooling {kw.pooling!r}, feature_map {kw.feature_map!r}): the pixel-shuffle map "
                              "is pooled on a 2× mask grid")
        for key in ("alpha_base", "lambda_base", "beta_min", "mask_weight"):
            if not 0.0 <= float(kw[key]) <= 1.0:
                raise ConfigError(f"method_kwargs.{key} must be in [0, 1], got {kw[key]}")

    @classmethod
    def backbone_overrides(cls, method_kwargs) -> Dict[str, Any]:
        """``feature_map: c5_stride1`` builds layer4 with stride 1 (dilated with ``c5_dilate``)."""
        if method_kwargs.get("feature_map") == "c5_stride1":
            return {"c5_stride1": True, "c5_dilate": bool(method_kwargs.get("c5_dilate", False))}
        return {}

    def __init__(self, cfg: DictConfig):
        # in place: the run config (args.json, checkpoint hyper-parameters) records what is built
        apply_backbone_overrides(cfg)
        super().__init__(cfg)

        kw = cfg.method_kwargs
        # BYOL's g_θ, its EMA g_ξ and q_θ, under BYOL's names (old checkpoints load unchanged)
        self.projector, self.momentum_projector, self.predictor = byol_heads(self.features_dim, kw)
        if kw.feature_map != "c5" and not isinstance(self.backbone, SSLResNet):
            raise ConfigError(f"method_kwargs.feature_map '{kw.feature_map}' needs a torchvision ResNet backbone")
        self.loss_type = str(kw.loss_type)
        self.feature_map = str(kw.feature_map)
        self.branch_weights_keys = set(harl_loss_weights(self.loss_type, 0.5, 0.5, 0.5, kw.hybrid_mode))
        self.use_fg = "f" in self.branch_weights_keys
        self.use_bg = "b" in self.branch_weights_keys
        # c4 regions get their own projector (+EMA); the predictor stays shared (docs/methods/harl.md)
        self.region_projector = None
        if self.feature_map == "c4":
            c4_dim = self.features_dim // 2
            self.region_projector = byol_mlp(c4_dim, kw.proj_hidden_dim, kw.proj_output_dim, kw.proj_layers)
            self.momentum_region_projector = momentum_copy(self.region_projector)
        self.alpha = float(kw.alpha_base)
        self.beta = float(kw.lambda_base)

    # ------------------------------------------------------------------ parameters
    @property
    def learnable_params(self) -> List[Dict[str, Any]]:
        params = super().learnable_params + [
            {"name": "projector", "params": self.projector.parameters()},
            {"name": "predictor", "params": self.predictor.parameters()},
        ]
        if self.region_projector is not None:
            params.append({"name": "region_projector", "params": self.region_projector.parameters()})
        return params

    @property
    def momentum_pairs(self):
        pairs = super().momentum_pairs + [(self.projector, self.momentum_projector)]
        if self.region_projector is not None:
            pairs.append((self.region_projector, self.momentum_region_projector))
        return pairs

    # ------------------------------------------------------------------ forward
    def forward(self, X: torch.Tensor) -> Dict[str, torch.Tensor]:
        """B×3×H×W → feats B×C, logits, z = g_θ(feats) and p = q_θ(z) (as BYOL's forward)."""
        out = super().forward(X)
        z = self.projector(out["feats"])
        return {**out, "z": z, "p": self.predictor(z)}

    def _maps(self, backbone, X: torch.Tensor) -> Dict[str, torch.Tensor]:
        """c5 map (global branch) and the map the regions are pooled on."""
        x = self._prepare(X)
        if self.feature_map == "c4":
            c4 = backbone.forward_c4(x)
            c5 = backbone.layer4(c4)
            return {"feat_map": c5, "region_map": c4}
        c5 = backbone.forward_features(x)
        return {"feat_map": c5, "region_map": c5}

    def crop_forward(self, X: torch.Tensor, view: int) -> Dict[str, torch.Tensor]:
        maps = self._maps(self.backbone, X)
        feats = self.backbone.pool(maps["feat_map"])
        return {**maps, "feats": feats, "logits": self.classifier(feats.detach())}

    @torch.no_grad()
    def momentum_crop_forward(self, X: torch.Tensor, view: int) -> Dict[str, torch.Tensor]:
        maps = self._maps(self.momentum_backbone, X)
        return {**maps, "feats": self.momentum_backbone.pool(maps["feat_map"])}

    def _region_grids(self, masks: List[torch.Tensor], region_maps: List[torch.Tensor]):
        """Per view (M_f, M_b) on the grid of the region map (2× for pixel shuffle)."""
        kw = self.method_kwargs
        scale = 2 if self.feature_map == "c5_pixel_shuffle" else 1
        grids = []
        for m, fmap in zip(masks, region_maps):
            size = (fmap.shape[-2] * scale, fmap.shape[-1] * scale)
            grids.append(mask_to_grid(m.to(fmap.device), size, mode=kw.mask_mode, threshold=kw.mask_threshold))
        return grids

    def _pool(self, region_map, feat_map, m_f, m_b, valid_f, valid_b) -> Dict[str, Optional[torch.Tensor]]:
        kw = self.method_kwargs
        pooled = pool_regions(region_map.float(), m_f if self.use_fg else None, m_b if self.use_bg else None,
                              pooling=kw.pooling, eps=float(kw.pool_eps), empty_policy=kw.empty_mask_policy,
                              valid_f=valid_f, valid_b=valid_b)
        pooled["h_g"] = self.backbone.pool(feat_map)
        return pooled

    # ------------------------------------------------------------------ schedules
    def current_schedules(self) -> Dict[str, float]:
        kw = self.method_kwargs
        if kw.schedule_granularity == "epoch":
            step, total = self.current_epoch, self.max_epochs
        else:
            step, total = self.global_step, int(self.trainer.estimated_stepping_batches)
        alpha = alpha_schedule(step, total, kw.alpha_base, kw.alpha_mode, epoch=self.current_epoch,
                               max_epochs=self.max_epochs)
        beta = beta_schedule(step, total, kw.lambda_base, kw.beta_mode, kw.beta_min)
        return {"alpha": alpha, "beta": beta}

    # ------------------------------------------------------------------ step
    def harl_losses(self, out: Dict[str, List[torch.Tensor]], masks: List[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Branch losses L_g, L_f, L_b (those the loss type uses) and validity fractions."""
        grids = self._region_grids(masks, out["region_map"])
        # validity per region is decided on the masks of *both* views (the online grids; the target
        # maps have the same size)
        valid_f = region_validity(grids[0][0], grids[1][0]) if self.use_fg else None
        valid_b = region_validity(grids[0][1], grids[1][1]) if self.use_bg else None
        region_proj = self.region_projector or self.projector
        mom_region_proj = self.momentum_region_projector if self.region_projector is not None else self.momentum_projector

        P: Dict[str, List[torch.Tensor]] = {"g": [], "f": [], "b": []}
        Z: Dict[str, List[torch.Tensor]] = {"g": [], "f": [], "b": []}
        weights: Dict[str, Optional[torch.Tensor]] = {}
        for v in range(2):
            m_f, m_b = grids[v]
            online = self._pool(out["region_map"][v], out["feat_map"][v], m_f, m_b, valid_f, valid_b)
            with torch.no_grad():
                target = self._pool(out["momentum_region_map"][v], out["momentum_feat_map"][v], m_f, m_b,
                                    valid_f, valid_b)
                target["h_g"] = self.momentum_backbone.pool(out["momentum_feat_map"][v])
            for key in ("g", "f", "b"):
                if key != "g" and online[f"h_{key}"] is None:
                    continue
                proj, mproj = (self.projector, self.momentum_projector) if key == "g" else (region_proj, mom_region_proj)
                z = proj(online[f"h_{key}"])
                P[key].append(self.predictor(z))
                with torch.no_grad():
                    Z[key].append(mproj(target[f"h_{key}"]))
                if key != "g":
                    weights[key] = online[f"w_{key}"]
        losses: Dict[str, torch.Tensor] = {}
        for key in ("g", "f", "b"):
            if P[key]:
                losses[key] = harl_branch_loss(P[key][0], P[key][1], Z[key][0], Z[key][1], weights.get(key))
        stats = {}
        if valid_f is not None:
            stats["frac_valid_f"] = valid_f.float().mean()
        if valid_b is not None:
            stats["frac_valid_b"] = valid_b.float().mean()
        return {"losses": losses, "stats": stats}

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        out = super().training_step(batch, batch_idx)  # every crop, the EMA branch, the online classifiers
        masks = batch[3]["masks"]
        res = self.harl_losses(out, masks)
        sched = self.current_schedules()
        self.alpha, self.beta = sched["alpha"], sched["beta"]
        kw = self.method_kwargs
        L = res["losses"]
        loss = harl_total_loss(L.get("g"), L.get("f"), L.get("b"), self.loss_type, self.alpha, self.beta,
                               kw.mask_weight, kw.hybrid_mode)
        log = {f"train_loss_{k}": v for k, v in res["losses"].items()}
        log.update({f"train_{k}": v for k, v in res["stats"].items()})
        log.update({"train_harl_loss": loss, "alpha": self.alpha, "beta": self.beta})
        self.log_dict(log, on_epoch=True, sync_dist=True)
        return loss + out["loss"]
