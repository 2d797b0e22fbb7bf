"""Saliency-guided masking (Chin et al., WACV 2024): ``sgm_mocov2`` and ``sgm_simclr``.

A contrastive base (MoCo v2+ or SimCLR) whose query views are masked with noise in cells chosen by
a saliency map, and whose loss gains *hard negatives*: copies of the key view with its salient
cells masked (docs/methods/sgm.md)::

    x̃_v  = HPF(x_v) (sgm_strategy hp) | x_v (blur, mean)       normalised views, v = 1, 2
    fg_v  = saliency(x_v)                                       B×G×G bool (source: sgm_saliency)
    q_v   = f_q(mask_pos(x̃_v, fg_v))                           query: fg/bg-balanced masking
    k_v   = f_k(x̃_v)                                            key: unmasked (enqueued)
    t_v,m = f_k(mask_neg(x̃_v, fg_v)), m = 1..M                 hard negatives, no gradient, not enqueued
    MoCo:   L = ½ Σ_v CE([q_v·k_v', q_v·Q_v', α·q_v·t_v',1..M] / T, 0)        (v' = the other view)
    SimCLR: NT-Xent(q_1, q_2) with α·q_v·t_v',m / T added to each anchor's denominator

The masking operators and the filters are the pure functions of :mod:`harl.ops.sgm_cells`,
:mod:`harl.ops.sgm_masking` and :mod:`harl.ops.filters`, the hard-negative logits are
:func:`harl.losses.sgm.hard_negative_logits`, and the saliency sources
(``method_kwargs.sgm_saliency``: ``supervised_r50``, ``checkpoint``, ``heuristic_mask``,
``online``) are :mod:`harl.methods.sgm_saliency`; this file wires them into the two methods.

A model trained on high-pass inputs applies the same filter in :meth:`SGMMixin.forward` (so the
online classifier and the kNN monitor see what the encoder was trained on) and records it in the
run config (``method_kwargs.sgm_strategy: hp``, ``hp_kernel``, ``hp_sigma``) and in the Lightning
checkpoint (``checkpoint["harl_input_filter"]``); ``harl-linear`` applies it to train and val.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from harl.losses import moco_loss
from harl.losses.sgm import hard_negative_logits
from harl.methods.base import BaseMethod, accuracy_at_k
from harl.methods.mocov2plus import MoCoV2Plus
from harl.methods.registry import METHODS
from harl.methods.sgm_saliency import SALIENCY_SOURCES, SaliencyContext, SaliencySource
from harl.methods.simclr import SimCLR
from harl.ops.filters import HighPass
from harl.ops.sgm_masking import SGMMaskConfig, sgm_mask_batch
from harl.registry import Registry, close_match_hint
from harl.utils.distributed import gather_no_grad
from harl.errors import ConfigError

log = logging.getLogger("harl")

__all__ = [
    "SGM_DEFAULT_KWARGS", "INPUT_FILTERS", "SGMViews", "SGMMixin", "SGMMoCoV2", "SGMSimCLR",
    "input_filter_from_kwargs",
]

#: ``method_kwargs`` shared by both SGM methods (docs/methods/sgm.md, plus the saliency-source settings)
SGM_DEFAULT_KWARGS: Dict[str, Any] = {
    "proj_hidden_dim": 2048, "proj_output_dim": 128, "temperature": 0.2,
    # fill strategy and filters
    "sgm_strategy": "hp", "hp_kernel": 11, "hp_sigma": 5.0, "fill_blur_kernel": 31, "fill_blur_sigma": 10.0,
    # saliency
    "sgm_saliency": "supervised_r50",
    "sgm_saliency_weights": None,          # supervised_r50 / checkpoint: the weights file
    "sgm_saliency_backbone": None,         # checkpoint: architecture (else from the checkpoint's run config)
    "sgm_saliency_backbone_kwargs": None,  # checkpoint: its backbone kwargs
    "sgm_saliency_input_size": None,       # frozen nets: resize views to this side first (None: as they are)
    "sgm_mask_threshold": 0.5,             # heuristic_mask: fg cell iff fg fraction > this
    "grid_size": 7, "fg_std_factor": 0.6,
    # masking
    "fg_cap": 0.55, "pos_ratio": [0.05, 0.25], "neg_ratio": [0.4, 0.7], "pos_noise_std": 0.18,
    "neg_noise_std": 0.14, "focal_prob": 0.2, "pos_focal_frac": 0.893, "neg_focal_frac": 0.580,
    "spatial_prob": 0.3, "noise_per_image": False,
    # hard negatives
    "hard_neg_scale": 2.0, "num_hard_negatives": 1,
}


# ---------------------------------------------------------------------------------------------
# input filter (what the encoder sees)
# ---------------------------------------------------------------------------------------------

#: sgm_strategy → builder(method_kwargs) of the encoder's input filter. ``hp`` trains on
#: high-passed views (masked cells get noise); ``blur`` / ``mean`` train on the views as they are.
INPUT_FILTERS: Registry = Registry("SGM input filter (sgm_strategy)")
INPUT_FILTERS.register("hp", lambda kw: HighPass(int(kw["hp_kernel"]), float(kw["hp_sigma"])))
INPUT_FILTERS.register("blur", lambda kw: nn.Identity())
INPUT_FILTERS.register("mean", lambda kw: nn.Identity())


def input_filter_from_kwargs(method_kwargs) -> nn.Module:
    """The module applied to normalised views before the encoder (``HighPass`` for ``hp``)."""
    return INPUT_FILTERS.get(str(method_kwargs["sgm_strategy"]))(method_kwargs)


# ---------------------------------------------------------------------------------------------
# the shared method logic
# ---------------------------------------------------------------------------------------------


@dataclass
class SGMViews:
    """Everything the SGM step feeds the encoders (two views, v = 0, 1).

    raw: normalised views; inputs: encoder inputs (high-passed for ``hp``) = the unmasked keys;
    fg: B×G×G bool saliency; queries / query_masks: ``pos``-masked inputs and their B×C×H×W
    pixel masks; hard / hard_masks: ``neg``-masked copies of the inputs, (M·B)×C×H×W with row
    m·B + b = negative m of image b (None when M = 0).
    """

    raw: List[torch.Tensor]
    inputs: List[torch.Tensor]
    fg: List[torch.Tensor]
    queries: List[torch.Tensor]
    query_masks: List[torch.Tensor]
    hard: List[Optional[torch.Tensor]]
    hard_masks: List[Optional[torch.Tensor]]


class SGMMixin:
    """Saliency, masking, input filter and hard negatives; mixed in before a contrastive base."""

    _DEFAULT_METHOD_KWARGS = SGM_DEFAULT_KWARGS

    @classmethod
    def check_cfg(cls, cfg: DictConfig) -> None:
        super().check_cfg(cfg)
        kw = cfg.method_kwargs
        if cfg.num_small_crops:
            raise ConfigError(f"method '{cfg.method}' does not support small crops (multi-crop)")
        if cfg.num_large_crops != 2:
            raise ConfigError(f"method '{cfg.method}' needs exactly 2 large crops, config gives {cfg.num_large_crops}")
        if kw.sgm_strategy not in INPUT_FILTERS:
            raise ConfigError(f"method_kwargs.sgm_strategy = {kw.sgm_strategy!r} must be one of "
                              f"{sorted(INPUT_FILTERS.names())}{close_match_hint(kw.sgm_strategy, INPUT_FILTERS.names())}")
        try:
            SGMMaskConfig.from_kwargs(kw)
            if kw.sgm_strategy == "hp":
                HighPass(int(kw.hp_kernel), float(kw.hp_sigma))
        except (ValueError, TypeError, KeyError) as err:
            raise ConfigError(f"method_kwargs: {err}") from None
        if kw.sgm_saliency not in SALIENCY_SOURCES:
            raise ConfigError(f"method_kwargs.sgm_saliency = {kw.sgm_saliency!r} must be one of "
                              f"{sorted(SALIENCY_SOURCES.names())}"
                              f"{close_match_hint(kw.sgm_saliency, SALIENCY_SOURCES.names())}")
        SALIENCY_SOURCES.get(kw.sgm_saliency).check_cfg(cfg)
        n_hard = kw.num_hard_negatives
        if isinstance(n_hard, bool) or int(n_hard) != n_hard or int(n_hard) < 0:
            raise ConfigError(f"method_kwargs.num_hard_negatives must be an integer ≥ 0, got {n_hard!r}")
        if not float(kw.hard_neg_scale) > 0:
            raise ConfigError(f"method_kwargs.hard_neg_scale must be > 0, got {kw.hard_neg_scale!r}")
        crop = min(int(a.crop_size) for a in cfg.augmentations)
        if not 1 <= int(kw.grid_size) <= crop:
            raise ConfigError(f"method_kwargs.grid_size ({kw.grid_size}) must be in [1, crop_size={crop}]")

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        kw = cfg.method_kwargs
        self.mask_cfg = SGMMaskConfig.from_kwargs(kw)
        self.sgm_strategy = str(kw.sgm_strategy)
        self.input_filter = input_filter_from_kwargs(kw)
        self.num_hard_negatives = int(kw.num_hard_negatives)
        self.hard_neg_scale = float(kw.hard_neg_scale)
        # a plain attribute, not a sub-module: frozen, outside the optimiser, EMA and checkpoints
        self.saliency_source: SaliencySource = SALIENCY_SOURCES.get(str(kw.sgm_saliency))(cfg)
        if cfg.data.masks.enabled and not self.saliency_source.needs_masks:
            log.warning("data.masks.enabled is true but sgm_saliency '%s' does not read masks; they are loaded "
                        "for nothing (and crop acceptance data.masks.min_fg_frac still applies)", kw.sgm_saliency)

    # ------------------------------------------------------------------ forward
    def forward(self, X: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Un-filtered normalised images B×3×H×W → outputs of the base (input filter applied)."""
        return self.encode(self.input_filter(X))

    def encode(self, X: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The base forward on encoder inputs (already filtered, possibly masked)."""
        return super().forward(X)

    def crop_forward(self, X: torch.Tensor, view: int) -> Dict[str, torch.Tensor]:
        return self.encode(X)

    @property
    def saliency_encoder(self) -> nn.Module:
        """The encoder whose c5 map the ``online`` source reads."""
        raise NotImplementedError

    @torch.no_grad()
    def encode_hard_negatives(self, x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """(M·B)×3×H×W masked key copies → B×M×D embeddings (no gradient); None → None."""
        if x is None:
            return None
        t = self.hard_negative_embed(x)
        m = self.num_hard_negatives
        return t.view(m, t.shape[0] // m, -1).transpose(0, 1)

    def hard_negative_embed(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - per base
        raise NotImplementedError

    # ------------------------------------------------------------------ views
    @staticmethod
    def _batch_parts(batch) -> Tuple[torch.Tensor, List[torch.Tensor], torch.Tensor, Optional[Dict[str, Any]]]:
        X = batch[1]
        X = [X] if isinstance(X, torch.Tensor) else list(X)
        extras = batch[3] if len(batch) > 3 else None
        return batch[0], X, batch[2], extras

    def saliency(self, ctx: SaliencyContext) -> List[torch.Tensor]:
        """B×G×G bool fg cells for every view."""
        return [self.saliency_source(self, ctx, v).to(ctx.inputs[v].device) for v in range(len(ctx.inputs))]

    def prepare_views(self, X: Sequence[torch.Tensor], extras: Optional[Dict[str, Any]] = None,
                      inputs: Optional[Sequence[torch.Tensor]] = None,
                      maps: Optional[Dict[int, torch.Tensor]] = None,
                      generator: Optional[torch.Generator] = None) -> SGMViews:
        """Filter, saliency, ``pos`` masking of the queries and ``neg`` copies of every view.

        Args:
            X: normalised views, each B×3×S×S; extras: ``batch[3]`` or None.
            inputs: the filtered views when already computed; maps: c5 maps of ``inputs`` from the
                momentum encoder (reused by the ``online`` source).
            generator: optional ``torch.Generator`` (else the global RNG, re-seeded every epoch).
        """
        X = list(X)
        inputs = [self.input_filter(x) for x in X] if inputs is None else list(inputs)
        ctx = SaliencyContext(raw=X, inputs=inputs, extras=extras, maps=dict(maps or {}))
        with torch.no_grad():
            fg = self.saliency(ctx)
            queries, qmasks, hard, hmasks = [], [], [], []
            for x, f in zip(inputs, fg):
                q, qm = sgm_mask_batch(x, f, self.mask_cfg, "pos", generator)
                queries.append(q)
                qmasks.append(qm)
                if self.num_hard_negatives > 0:
                    negs = [sgm_mask_batch(x, f, self.mask_cfg, "neg", generator) for _ in range(self.num_hard_negatives)]
                    hard.append(torch.cat([n[0] for n in negs]))
                    hmasks.append(torch.cat([n[1] for n in negs]))
                else:
                    hard.append(None)
                    hmasks.append(None)
        return SGMViews(X, inputs, fg, queries, qmasks, hard, hmasks)

    def _log_views(self, views: SGMViews, extra: Optional[Dict[str, torch.Tensor]] = None) -> None:
        stats = {
            "train_sgm_fg_ratio": torch.stack([f.float().mean() for f in views.fg]).mean(),
            "train_sgm_query_masked": torch.stack([m.float().mean() for m in views.query_masks]).mean(),
        }
        if views.hard_masks[0] is not None:
            stats["train_sgm_hard_masked"] = torch.stack([m.float().mean() for m in views.hard_masks]).mean()
        stats.update(extra or {})
        self.log_dict(stats, on_epoch=True, sync_dist=True)

    def _hard_cos(self, z: List[torch.Tensor], t: List[Optional[torch.Tensor]]) -> Dict[str, torch.Tensor]:
        if t[0] is None:
            return {}
        with torch.no_grad():
            cos = torch.cat([hard_negative_logits(z[v].detach(), t[1 - v], 1.0, 1.0) for v in range(2)])
        return {"train_sgm_hard_cos": cos.mean()}

    # ------------------------------------------------------------------ checkpoint record
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        kw = self.method_kwargs
        checkpoint["harl_input_filter"] = (
            {"name": "highpass", "kernel_size": int(kw.hp_kernel), "sigma": float(kw.hp_sigma)}
            if self.sgm_strategy == "hp" else None)


@METHODS.register("sgm_mocov2")
class SGMMoCoV2(SGMMixin, MoCoV2Plus):
    """MoCo v2+ with saliency-guided masking (docs/methods/sgm.md, the paper's MoCo v2 recipe).

    Symmetrised like harl's MoCo v2+ (each view is a query against the other view's key and
    queue); each direction's loss is the paper's ``CE([q·k, q·Q, α·q·t_1..M]/T, 0)``. Only the
    unmasked keys are enqueued.
    """

    @property
    def saliency_encoder(self) -> nn.Module:
        return self.momentum_backbone

    def hard_negative_embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.momentum_projector(self.momentum_backbone(self._prepare(x)))

    @torch.no_grad()
    def key_forward(self, inputs: List[torch.Tensor]) -> Dict[str, List[torch.Tensor]]:
        """Momentum encoder on the unmasked encoder inputs: c5 maps, pooled feats, normalised keys."""
        maps = [self.momentum_backbone.forward_features(self._prepare(x)) for x in inputs]
        feats = [self.momentum_backbone.pool(m) for m in maps]
        keys = [F.normalize(self.momentum_projector(f), dim=-1) for f in feats]
        return {"maps": maps, "feats": feats, "k": keys}

    def _momentum_classifier_loss(self, feats: List[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        logits = torch.cat([self.momentum_classifier(f.detach()) for f in feats])
        rep = targets.repeat(len(feats))
        loss = self._classifier_loss(logits, rep)
        acc1, acc5 = accuracy_at_k(logits, rep)
        self.log_dict({"train_momentum_class_loss": loss, "train_momentum_acc1": acc1, "train_momentum_acc5": acc5},
                      on_epoch=True, sync_dist=True)
        return loss

    def sgm_loss(self, z: List[torch.Tensor], k: List[torch.Tensor], t: List[Optional[torch.Tensor]]) -> torch.Tensor:
        """½[ℓ(q₁, k₂, Q₂, t₂) + ℓ(q₂, k₁, Q₁, t₁)] with α-scaled hard-negative columns."""
        queue = self.queue.clone().detach()
        a = self.hard_neg_scale
        return (moco_loss(z[0], k[1], queue[1], self.temperature, t[1], a)
                + moco_loss(z[1], k[0], queue[0], self.temperature, t[0], a)) / 2

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        idx, X, targets, extras = self._batch_parts(batch)
        inputs = [self.input_filter(x) for x in X]
        keys = self.key_forward(inputs)
        maps = dict(enumerate(keys["maps"])) if self.saliency_source.uses_key_maps else None
        views = self.prepare_views(X, extras, inputs=inputs, maps=maps)
        out = BaseMethod.training_step(self, [idx, views.queries, targets], batch_idx)
        loss_cls = out["loss"]
        if self.momentum_classifier is not None:
            loss_cls = loss_cls + self._momentum_classifier_loss(keys["feats"], targets)
        t = [self.encode_hard_negatives(h) for h in views.hard]
        k = keys["k"]
        loss = self.sgm_loss(out["z"], k, t)
        self.enqueue(torch.stack([gather_no_grad(k[0]), gather_no_grad(k[1])]))
        self.log("train_nce_loss", loss, on_epoch=True, sync_dist=True)
        self._log_views(views, self._hard_cos(out["z"], t))
        return loss + loss_cls


@METHODS.register("sgm_simclr")
class SGMSimCLR(SGMMixin, SimCLR):
    """SimCLR with saliency-guided masking (docs/methods/sgm.md "SimCLR port").

    Both masked views are anchors; anchor v's NT-Xent denominator gains α·q_v·t/T for the hard
    negatives t of the *other* view (its positive's view), encoded by the same encoder without
    gradient.
    """

    @property
    def saliency_encoder(self) -> nn.Module:
        return self.backbone

    def hard_negative_embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(self._prepare(x)))

    def hard_negative_logit_block(self, z: List[torch.Tensor], t: List[Optional[torch.Tensor]]) -> Optional[torch.Tensor]:
        """2B×M logits α·ẑ·t̂/T: rows of view-1 anchors use view 2's negatives and vice versa."""
        if t[0] is None:
            return None
        return torch.cat([hard_negative_logits(z[v], t[1 - v], self.hard_neg_scale, self.temperature)
                          for v in range(2)])

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        idx, X, targets, extras = self._batch_parts(batch)
        views = self.prepare_views(X, extras)
        out = BaseMethod.training_step(self, [idx, views.queries, targets], batch_idx)
        t = [self.encode_hard_negatives(h) for h in views.hard]
        loss = self.instance_loss(out["z"], idx, extra_neg_logits=self.hard_negative_logit_block(out["z"], t))
        self.log("train_nce_loss", loss, on_epoch=True, sync_dist=True)
        self._log_views(views, self._hard_cos(out["z"], t))
        return loss + out["loss"]
