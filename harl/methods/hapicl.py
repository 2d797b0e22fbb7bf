"""HAPiCL(R): an instance loss plus a mask-split pixel-level contrastive loss (docs/methods/hapicl.md).

One implementation, three registered methods whose instance loss is fixed by the name::

    hapicl_simclr      = SimCLR     + w_pix · L_pix(P₁, P₂)
    hapicl_mocov2plus  = MoCo v2+   + w_pix · ½[L_pix(P₁, sg P′₂) + L_pix(sg P′₁, P₂)]
    hapicl_byol        = BYOL       + w_pix · ½[L_pix(P₁, sg P′₂) + L_pix(sg P′₁, P₂)]

Per view v (two large crops, each with its joint mask and crop box)::

    F_v = f_θ(x_v)                                      B×C×h×w (c5)
    F_v ← upsample×s(F_v)  (bilinear, ``pix_upsample`` = s; the mask grid becomes sh×sw)
    P_v = φ(F_v)                                        B×D_x×(sh·sw), φ = 1×1 conv–BN–ReLU–1×1 conv
    P′_v = φ_ξ(f_ξ(x_v))                                the EMA head on the EMA encoder (MoCo, BYOL)
    M_v = mask_to_grid(mask_v, (sh, sw))                binary fg per cell (``mask_threshold``)

and L_pix is :func:`harl.losses.hapicl.pixel_contrastive_loss` (pairs within an image across its two
views; fg–fg (+ bg–bg) positives, fg–bg negatives, τ_x = 0.2, variant A or B, fp32 with autocast
off). With ``pix_spatial`` a region positive must also be a spatial neighbour in the original
image (PixPro's rule, :func:`harl.ops.mask_grid.spatial_positive_mask`, on the crop boxes the data
pipeline records, flips included).

The public code's bugs (docs/methods/hapicl.md) are closed by construction: φ is in ``learnable_params`` and
(φ, φ_ξ) in ``momentum_pairs``; every choice is a validated enum (a misspelling is a config error
with a hint); the pixel loss is always part of the optimised total; the masks are always used.

Class layout: :class:`HAPiCL` is a mixin placed before the instance method in the MRO
(``class HAPiCLBYOL(HAPiCL, BYOL)``), so projector/predictor/queue, their parameter groups and EMA
pairs come from the instance method unchanged; each registered class only says how its instance
heads run and how its instance loss is computed.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Dict, List, Tuple

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from harl.backbones.resnet import SSLResNet
from harl.heads import conv_mlp, momentum_copy
from harl.losses import byol_loss
from harl.losses.hapicl import PIX_POSITIVES, PIX_VARIANTS, pixel_contrastive_loss_and_stats
from harl.methods.base import BaseMethod, BaseMomentumMethod
from harl.methods.byol import BYOL
from harl.methods.mocov2plus import MoCoV2Plus
from harl.methods.registry import METHODS
from harl.methods.simclr import SimCLR
from harl.ops.mask_grid import mask_to_grid, spatial_positive_mask
from harl.utils.distributed import gather_no_grad
from harl.errors import ConfigError
from harl.registry import close_match_hint

__all__ = ["HAPiCL", "HAPiCLSimCLR", "HAPiCLMoCoV2Plus", "HAPiCLBYOL", "INSTANCE_LOSSES", "PIX_PAIRINGS",
           "HAPICL_MASK_MODES"]

#: ``instance_loss`` → registered method name (the loss is fixed by the name, docs/architecture.md)
INSTANCE_LOSSES = {"simclr": "hapicl_simclr", "mocov2plus": "hapicl_mocov2plus", "byol": "hapicl_byol"}

#: HAPiCL pairs cells by a binary fg/bg rule; soft masks have no such rule
HAPICL_MASK_MODES = ("binary",)


def _online_pairs(out: Dict[str, List[torch.Tensor]]) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """SimCLR base: one shared online head, L_pix(P₁, P₂) (both sides get gradients)."""
    return [(out["pix"][0], out["pix"][1])]


def _momentum_pairs(out: Dict[str, List[torch.Tensor]]) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """EMA bases: (P₁, sg P′₂) and (sg P′₁, P₂); view 1 is always the first argument."""
    target = out["momentum_pix"]
    return [(out["pix"][0], target[1].detach()), (target[0].detach(), out["pix"][1])]


#: how the pixel term pairs online and target embeddings (the loss is the mean over the pairs)
PIX_PAIRINGS: Dict[str, Callable] = {"online": _online_pairs, "momentum": _momentum_pairs}


class HAPiCL:
    """The pixel part of HAPiCL, mixed into an instance method (SimCLR, MoCo v2+, BYOL).

    Subclasses set ``INSTANCE_LOSS`` (the fixed ``instance_loss``), ``PIX_PAIRING`` (a key of
    :data:`PIX_PAIRINGS`) and ``_CORE`` (the base whose ``training_step`` runs the crops), and
    implement :meth:`instance_heads` and :meth:`compute_instance_loss`.
    """

    uses_masks: ClassVar[bool] = True
    INSTANCE_LOSS: ClassVar[str] = ""
    PIX_PAIRING: ClassVar[str] = "online"
    _CORE: ClassVar[type] = BaseMethod
    _DEFAULT_METHOD_KWARGS: ClassVar[Dict[str, Any]] = {
        "proj_hidden_dim": 2048, "proj_output_dim": 256,
        "pix_hidden_dim": 2048, "pix_output_dim": 2048, "pix_temperature": 0.2, "pix_variant": "A",
        "pix_positives": "fg_bg", "pix_weight": 1.0, "pix_upsample": 1, "pix_skip_degenerate": True,
        "pix_spatial": False, "pix_pos_radius": 0.7, "mask_mode": "binary", "mask_threshold": 0.0,
    }

    # ------------------------------------------------------------------ config
    @classmethod
    def check_cfg(cls, cfg: DictConfig) -> None:
        super().check_cfg(cfg)

        kw = cfg.method_kwargs
        il = kw.get("instance_loss", cls.INSTANCE_LOSS)
        if il not in INSTANCE_LOSSES:
            raise ConfigError(f"method_kwargs.instance_loss = {il!r} must be one of {sorted(INSTANCE_LOSSES)}"
                              f"{close_match_hint(il, INSTANCE_LOSSES)}")
        if il != cls.INSTANCE_LOSS:
            raise ConfigError(f"method '{cfg.method}' uses the {cls.INSTANCE_LOSS} instance loss (fixed by its name); "
                              f"for the {il} instance loss use method: {INSTANCE_LOSSES[il]}")
        variant = str(kw.pix_variant).upper()
        for key, value, allowed in (("pix_variant", variant, PIX_VARIANTS),
                                    ("pix_positives", kw.pix_positives, PIX_POSITIVES),
                                    ("mask_mode", kw.mask_mode, HAPICL_MASK_MODES)):
            if value not in allowed:
                extra = (" (HAPiCL pairs cells by a binary fg/bg rule; soft masks are a HARL option)"
                         if key == "mask_mode" and value == "soft" else "")
                raise ConfigError(f"method_kwargs.{key} = {kw[key]!r} must be one of {sorted(allowed)}"
                                  f"{close_match_hint(value, allowed)}{extra}")
        for key in ("pix_spatial", "pix_skip_degenerate"):
            if not isinstance(kw[key], bool):
                raise ConfigError(f"method_kwargs.{key} must be true or false, got {kw[key]!r}")
        up = kw.pix_upsample
        if isinstance(up, bool) or not isinstance(up, int) or up < 1:
            raise ConfigError(f"method_kwargs.pix_upsample must be an integer >= 1, got {up!r}")
        for key in ("pix_hidden_dim", "pix_output_dim"):
            v = kw[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"method_kwargs.{key} must be a positive integer, got {v!r}")
        checks = (("pix_temperature", lambda v: v > 0, "> 0"), ("pix_pos_radius", lambda v: v > 0, "> 0"),
                  ("pix_weight", lambda v: v >= 0, ">= 0"), ("mask_threshold", lambda v: 0 <= v < 1, "in [0, 1)"))
        for key, ok, what in checks:
            try:
                value = float(kw[key])
            except (TypeError, ValueError):
                raise ConfigError(f"method_kwargs.{key} must be a number {what}, got {kw[key]!r}") from None
            if not ok(value):
                raise ConfigError(f"method_kwargs.{key} must be {what}, got {kw[key]!r}")
        if cfg.num_large_crops != 2:
            raise ConfigError(f"{cfg.method} needs exactly 2 large crops (the two views), config gives "
                              f"{cfg.num_large_crops}")

    # ------------------------------------------------------------------ init
    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)

        if not isinstance(self.backbone, SSLResNet):
            raise ConfigError(f"{cfg.method} needs a torchvision ResNet backbone (resnet18/34/50) for its c5 map, "
                              f"got '{cfg.backbone.name}'")
        kw = cfg.method_kwargs
        self.pix_variant = str(kw.pix_variant).upper()
        self.pix_positives = str(kw.pix_positives)
        self.pix_temperature = float(kw.pix_temperature)
        self.pix_weight = float(kw.pix_weight)
        self.pix_upsample = int(kw.pix_upsample)
        self.pix_skip_degenerate = bool(kw.pix_skip_degenerate)
        self.pix_spatial = bool(kw.pix_spatial)
        self.pix_pos_radius = float(kw.pix_pos_radius)
        self.mask_mode = str(kw.mask_mode)
        self.mask_threshold = float(kw.mask_threshold)
        self.pixel_head = conv_mlp(self.features_dim, int(kw.pix_hidden_dim), int(kw.pix_output_dim))

    # ------------------------------------------------------------------ parameters
    @property
    def learnable_params(self) -> List[Dict[str, Any]]:
        return super().learnable_params + [{"name": "pixel_head", "params": self.pixel_head.parameters()}]

    # ------------------------------------------------------------------ forward
    def instance_heads(self, feats: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Pooled B×C features → the instance method's head outputs (``z``, and ``p`` for BYOL)."""
        raise NotImplementedError

    def pixel_embed(self, head: nn.Module, feat_map: torch.Tensor) -> torch.Tensor:
        """B×C×h×w → B×D_x×(s·h)×(s·w): optional bilinear ×s upsampling, then the 1×1-conv head.

        Not normalised here: the loss ℓ2-normalises each location in fp32.
        """
        if self.pix_upsample > 1:
            feat_map = F.interpolate(feat_map, scale_factor=self.pix_upsample, mode="bilinear", align_corners=False)
        return head(feat_map)

    def forward(self, X: torch.Tensor) -> Dict[str, torch.Tensor]:
        """B×3×H×W → {feats B×C, feat_map B×C×h×w, logits, z (, p)}."""
        out = self.forward_with_map(X)
        if out["feat_map"].dim() != 4:
            raise RuntimeError(f"the backbone's feature map must be B×C×h×w, got {tuple(out['feat_map'].shape)}")
        out.update(self.instance_heads(out["feats"]))
        return out

    def crop_forward(self, X: torch.Tensor, view: int) -> Dict[str, torch.Tensor]:
        out = self(X)
        out["pix"] = self.pixel_embed(self.pixel_head, out["feat_map"])
        return out

    # ------------------------------------------------------------------ losses
    def compute_instance_loss(self, out: Dict[str, List[torch.Tensor]], batch) -> Tuple[torch.Tensor, Dict[str, Any]]:
        """The instance loss of the base method and what to log under the base method's names."""
        raise NotImplementedError

    def pixel_grids(self, masks: List[torch.Tensor], size: Tuple[int, int]) -> List[torch.Tensor]:
        """Full-resolution masks (B×1×S×S per view) → binary fg grids B×1×h×w at the pixel map's size."""
        return [mask_to_grid(m, size, mode=self.mask_mode, threshold=self.mask_threshold)[0] for m in masks]

    def pixel_loss(self, out: Dict[str, List[torch.Tensor]],
                   extras: Dict[str, List[torch.Tensor]]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """w-less pixel term for the step: mean over :data:`PIX_PAIRINGS` pairs of L_pix, plus stats.

        Args:
            out: per-view lists with ``pix`` (B×D×h×w) and, for EMA bases, ``momentum_pix``.
            extras: the batch's ``{"masks": [B×1×S×S]·2, "coords": [B×4]·2}``.
        Returns:
            (loss fp32 scalar, {"frac_valid", "pos_pair_frac"}).
        """
        pix = out["pix"]
        h, w = pix[0].shape[-2:]
        device = pix[0].device
        fg1, fg2 = self.pixel_grids([m.to(device) for m in extras["masks"][:2]], (h, w))
        spatial = None
        if self.pix_spatial:
            c1, c2 = (c.to(device) for c in extras["coords"][:2])
            spatial = spatial_positive_mask(c1, c2, h, w, radius=self.pix_pos_radius)
        losses, stats = [], []
        for a, b in PIX_PAIRINGS[self.PIX_PAIRING](out):
            loss, st = pixel_contrastive_loss_and_stats(
                a.flatten(2), b.flatten(2), fg1, fg2, temperature=self.pix_temperature, variant=self.pix_variant,
                positives=self.pix_positives, skip_degenerate=self.pix_skip_degenerate, spatial_pos=spatial)
            losses.append(loss)
            stats.append(st)
        n = len(losses)
        return sum(losses) / n, {k: sum(s[k] for s in stats) / n for k in ("frac_valid", "pos_pair_frac")}

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        if len(batch) < 4 or not isinstance(batch[3], dict) or "masks" not in batch[3]:
            raise ValueError(f"{type(self).__name__} needs batches with masks ([indexes, views, targets, "
                             "{'masks', 'coords'}]); enable data.masks")
        out = self._CORE.training_step(self, batch, batch_idx)
        inst, inst_log = self.compute_instance_loss(out, batch)
        pix, st = self.pixel_loss(out, batch[3])
        total = inst + self.pix_weight * pix
        log = dict(inst_log)
        log.update({"train_instance_loss": inst, "train_pix_loss": pix, "train_pix_frac_valid": st["frac_valid"],
                    "train_pix_pos_pair_frac": st["pos_pair_frac"], "train_hapicl_loss": total})
        self.log_dict(log, on_epoch=True, sync_dist=True)
        return total + out["loss"]


class HAPiCLMomentum(HAPiCL):
    """HAPiCL on an EMA base: adds φ_ξ (EMA of φ, fed by the EMA encoder) and the ½-symmetric term."""

    PIX_PAIRING: ClassVar[str] = "momentum"
    _CORE: ClassVar[type] = BaseMomentumMethod

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self.momentum_pixel_head = momentum_copy(self.pixel_head)

    @property
    def momentum_pairs(self):
        return super().momentum_pairs + [(self.pixel_head, self.momentum_pixel_head)]

    def momentum_instance_heads(self, feats: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {"z": self.momentum_projector(feats)}

    @torch.no_grad()
    def momentum_crop_forward(self, X: torch.Tensor, view: int) -> Dict[str, torch.Tensor]:
        out = self.momentum_forward_with_map(X)
        out.update(self.momentum_instance_heads(out["feats"]))
        out["pix"] = self.pixel_embed(self.momentum_pixel_head, out["feat_map"])
        return out


@METHODS.register("hapicl_simclr")
class HAPiCLSimCLR(HAPiCL, SimCLR):
    """HAPiCL on SimCLR: NT-Xent(z₁, z₂; τ) + w_pix·L_pix(P₁, P₂)."""

    INSTANCE_LOSS = "simclr"
    _DEFAULT_METHOD_KWARGS = {"instance_loss": "simclr"}

    def instance_heads(self, feats):
        return {"z": self.projector(feats)}

    def compute_instance_loss(self, out, batch):
        loss = self.instance_loss(out["z"], batch[0])
        return loss, {"train_nce_loss": loss}


@METHODS.register("hapicl_mocov2plus")
class HAPiCLMoCoV2Plus(HAPiCLMomentum, MoCoV2Plus):
    """HAPiCL on MoCo v2+: L_MoCo + w_pix·½[L_pix(P₁, sg P′₂) + L_pix(sg P′₁, P₂)]."""

    INSTANCE_LOSS = "mocov2plus"
    _DEFAULT_METHOD_KWARGS = {"instance_loss": "mocov2plus"}

    def instance_heads(self, feats):
        return {"z": self.projector(feats)}

    def compute_instance_loss(self, out, batch):
        k = [F.normalize(x, dim=-1) for x in out["momentum_z"]]
        loss = self.instance_loss(out["z"], k)
        self.enqueue(torch.stack([gather_no_grad(k[0]), gather_no_grad(k[1])]))
        return loss, {"train_nce_loss": loss}


@METHODS.register("hapicl_byol")
class HAPiCLBYOL(HAPiCLMomentum, BYOL):
    """HAPiCL on BYOL: L_BYOL(global) + w_pix·½[L_pix(P₁, sg P′₂) + L_pix(sg P′₁, P₂)]."""

    INSTANCE_LOSS = "byol"
    _DEFAULT_METHOD_KWARGS = {"instance_loss": "byol"}

    def instance_heads(self, feats):
        z = self.projector(feats)
        return {"z": z, "p": self.predictor(z)}

    def compute_instance_loss(self, out, batch):
        p, zt = out["p"], out["momentum_z"]
        loss = byol_loss(p[1], zt[0]) + byol_loss(p[0], zt[1])
        return loss, {"train_neg_cos_sim": loss}
