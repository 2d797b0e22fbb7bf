"""HARL: fg/bg region pooling, weighted BYOL branch losses, their combination and schedules
(docs/methods/harl.md).

Pure functions, no module state. Typical use inside a method (views v = 1, 2, masks on the grid
of the map they pool)::

    valid_f = region_validity(m1_fg, m2_fg); valid_b = region_validity(m1_bg, m2_bg)
    r1 = pool_regions(F1, m1_fg, m1_bg, valid_f=valid_f, valid_b=valid_b)   # same for view 2
    L_f = harl_branch_loss(p_f1, p_f2, z_f1_target, z_f2_target, r1["w_f"])
    L = harl_total_loss(L_g, L_f, L_b, "hybrid", alpha_schedule(k, K, 0.7), beta_schedule(k, K, 0.7))

Option names (``pooling``, ``empty_policy``, ``loss_type``, ``hybrid_mode``, ``alpha_mode``,
``beta_mode``) are validated once, by the method's ``check_cfg`` at config time; here they are
only looked up in their tables (:func:`harl.registry.pick`), so a training step does no
validation, and an unknown name passed from outside still raises a ValueError with a hint.
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from harl.ops.mask_grid import gap_masked_pool, masked_mean_pool, pixel_shuffle_pool
from harl.registry import pick

__all__ = [
    "POOLINGS", "EMPTY_POLICIES", "LOSS_TYPES", "HYBRID_MODES", "ALPHA_MODES", "BETA_MODES",
    "region_validity", "pool_regions", "weighted_byol_loss", "harl_branch_loss", "harl_loss_weights",
    "harl_total_loss", "cosine_coefficient", "alpha_schedule", "beta_schedule",
]


# --------------------------------------------------------------------------------------------
# Pooling and empty regions (docs/methods/harl.md: One training step, Feature-map options, Empty regions)
# --------------------------------------------------------------------------------------------

#: ``pooling`` → fn(feat B×C×h×w, mask, eps) → B×C. ``pixel_shuffle`` takes the mask at 2h×2w.
POOLINGS = {
    "masked_mean": lambda feat, m, eps: masked_mean_pool(feat, m, eps),
    "gap_masked": lambda feat, m, eps: gap_masked_pool(feat, m),
    "pixel_shuffle": lambda feat, m, eps: pixel_shuffle_pool(feat, m, eps),
}


def _exclude_empty(h: torch.Tensor, h_g: torch.Tensor, valid: torch.Tensor):
    """``exclude``: an invalid sample's region vector becomes ``h_g`` and its weight is 0."""
    h = torch.where(valid[:, None], h, h_g)
    return h, valid.to(h.dtype)


def _keep_empty(h: torch.Tensor, h_g: torch.Tensor, valid: torch.Tensor):
    """``faithful``: the pooled vector is kept and every weight is 1."""
    return h, torch.ones_like(valid, dtype=h.dtype)


#: ``empty_mask_policy`` → fn(h B×C, h_g B×C, valid B bool) → (h B×C, weights B)
#: (docs/methods/harl.md: Empty regions).
EMPTY_POLICIES = {"exclude": _exclude_empty, "faithful": _keep_empty}


def _region_present(m: torch.Tensor) -> torch.Tensor:
    return m.flatten(1).sum(dim=1) > 0


def region_validity(m_view1: torch.Tensor, m_view2: torch.Tensor) -> torch.Tensor:
    """A region is valid for a sample iff its mask is non-empty in *both* views (docs/methods/harl.md: Empty regions).

    Args:
        m_view1, m_view2: B×1×h×w (or B×h×w; the two views may use different grids) region masks
            of the same region (fg or bg) in view 1 and view 2.
    Returns:
        B bool.
    """
    if m_view1.shape[0] != m_view2.shape[0]:
        raise ValueError(f"region_validity: batch sizes differ ({m_view1.shape[0]} vs {m_view2.shape[0]})")
    return _region_present(m_view1) & _region_present(m_view2)


def _pool_one(feat, m, h_g, valid, pool, eps, policy):
    h = pool(feat, m, eps)
    if valid is None:
        valid = _region_present(m)
    valid = valid.to(device=feat.device, dtype=torch.bool).reshape(-1)
    if valid.shape[0] != feat.shape[0]:
        raise ValueError(f"validity has {valid.shape[0]} entries for a batch of {feat.shape[0]}")
    h, w = policy(h, h_g, valid)
    return h, valid, w


def pool_regions(feat: torch.Tensor, m_fg: Optional[torch.Tensor], m_bg: Optional[torch.Tensor] = None,
                 pooling: str = "masked_mean", eps: float = 1.0, empty_policy: str = "exclude",
                 valid_f: Optional[torch.Tensor] = None,
                 valid_b: Optional[torch.Tensor] = None) -> Dict[str, Optional[torch.Tensor]]:
    """Global, fg and bg vectors of one view's feature map (docs/methods/harl.md: One training step) with the empty-region policy (docs/methods/harl.md: Empty regions).

    ``h_g = mean_hw F``; ``h_f``/``h_b`` use ``pooling``: ``masked_mean`` Σ(F⊙M)/(ΣM + eps),
    ``gap_masked`` Σ(F⊙M)/(hw), ``pixel_shuffle`` (masks at 2h×2w, see
    :func:`harl.ops.mask_grid.pixel_shuffle_pool`).

    Validity: pass ``valid_f``/``valid_b`` from :func:`region_validity` (empty in *either* view ⇒
    invalid, docs/methods/harl.md: Empty regions); if omitted, only this view's mask is checked (ΣM > 0).

    - ``exclude`` (default): an invalid sample's region vector is replaced by ``h_g`` (keeps the
      projector's BN statistics sane) and its weight is 0.
    - ``faithful``: the pooled vector is kept (the zero vector when the mask is empty here) and every
      weight is 1.

    Args:
        feat: B×C×h×w (the map the regions are pooled on: c5, c5_stride1, c4...; for ``c4`` the
            substitute is the mean of *this* map, so its width matches h_f).
        m_fg, m_bg: B×1×h×w region masks (None to skip that region).
    Returns:
        dict with ``h_g`` B×C, ``h_f``/``h_b`` B×C, ``valid_f``/``valid_b`` B bool and ``w_f``/``w_b``
        B float loss weights (region entries are None when its mask is None).
    """
    pool = pick(POOLINGS, pooling, "pooling")
    policy = pick(EMPTY_POLICIES, empty_policy, "empty_mask_policy")
    if feat.dim() != 4:
        raise ValueError(f"feature map must be B×C×h×w, got shape {tuple(feat.shape)}")
    h_g = feat.mean(dim=(2, 3))
    out: Dict[str, Optional[torch.Tensor]] = {"h_g": h_g}
    for key, m, valid in (("f", m_fg, valid_f), ("b", m_bg, valid_b)):
        if m is None:
            out[f"h_{key}"] = out[f"valid_{key}"] = out[f"w_{key}"] = None
            continue
        out[f"h_{key}"], out[f"valid_{key}"], out[f"w_{key}"] = _pool_one(
            feat, m, h_g, valid, pool, eps, policy)
    return out


# --------------------------------------------------------------------------------------------
# Branch losses (docs/methods/harl.md: One training step, Empty regions)
# --------------------------------------------------------------------------------------------

def weighted_byol_loss(p: torch.Tensor, z: torch.Tensor, w: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``ℓ = 2 − 2·Σ_b w_b cos(p_b, sg z_b) / max(1, Σ_b w_b)``; exactly 0 when Σw = 0.

    With ``w`` None (or all ones) this is BYOL's ``2 − 2·mean_b cos``. When no sample is valid the
    loss is 0 and its gradient is an exact zero (the formula is multiplied by 1[Σw > 0], no
    data-dependent branch, so it is never NaN).

    Args:
        p: B×D online predictions; z: B×D target projections (gradient stopped); w: B weights ≥ 0.
    Returns:
        scalar.
    """
    if p.shape != z.shape or p.dim() != 2:
        raise ValueError(f"weighted_byol_loss: p and z must both be B×D, got {tuple(p.shape)} and {tuple(z.shape)}")
    cos = F.cosine_similarity(p, z.detach(), dim=-1)
    if w is None:
        return 2 - 2 * cos.mean()
    w = w.to(device=cos.device, dtype=cos.dtype).reshape(-1)
    if w.shape[0] != cos.shape[0]:
        raise ValueError(f"weighted_byol_loss: {w.shape[0]} weights for a batch of {cos.shape[0]}")
    total = w.sum()
    any_valid = (total > 0).to(cos.dtype)
    return any_valid * (2 - 2 * (w * cos).sum() / total.clamp(min=1.0))


def harl_branch_loss(p1: torch.Tensor, p2: torch.Tensor, z1_target: torch.Tensor, z2_target: torch.Tensor,
                     weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``L_* = ℓ(p_{*,1}, z′_{*,2}) + ℓ(p_{*,2}, z′_{*,1})`` with :func:`weighted_byol_loss`.

    Args:
        p1, p2: B×D online predictions of views 1 and 2; z1_target, z2_target: B×D target
            projections of views 1 and 2; weights: B (shared by both terms: validity is per sample
            across both views).
    Returns:
        scalar in [0, 8].
    """
    return weighted_byol_loss(p1, z2_target, weights) + weighted_byol_loss(p2, z1_target, weights)


# --------------------------------------------------------------------------------------------
# Total loss (docs/methods/harl.md: One training step, Schedules)
# --------------------------------------------------------------------------------------------

#: ``hybrid_mode`` → weight γ of L_g in the hybrid terms given (β, mask_weight).
HYBRID_MODES = {
    "cosine_decay_global": lambda beta, mask_weight: beta,
    "fixed_mask_weight": lambda beta, mask_weight: 1.0 - mask_weight,
}

#: ``loss_type`` → branch weights {g, f, b} given (α, γ). Only the branches a type uses appear.
LOSS_TYPES = {
    "byol": lambda a, g: {"g": 1.0},
    "mask": lambda a, g: {"f": a, "b": 1.0 - a},
    "hybrid": lambda a, g: {"g": g, "f": (1.0 - g) * a, "b": (1.0 - g) * (1.0 - a)},
    "byol_f": lambda a, g: {"g": g, "f": 1.0 - g},
    "f": lambda a, g: {"f": 1.0},
}


def harl_loss_weights(loss_type: str, alpha: float, beta: float, mask_weight: float = 0.5,
                      hybrid_mode: str = "cosine_decay_global") -> Dict[str, float]:
    """Weights of L_g, L_f, L_b in the total (docs/methods/harl.md: One training step); only the branches used appear.

    With γ = β (``cosine_decay_global``) or γ = 1 − ``mask_weight`` (``fixed_mask_weight``):

    ============  ==============================================
    ``byol``      L_g
    ``mask``      α·L_f + (1−α)·L_b                      (= L_mask)
    ``hybrid``    γ·L_g + (1−γ)·L_mask
    ``byol_f``    γ·L_g + (1−γ)·L_f
    ``f``         L_f
    ============  ==============================================

    Raises:
        ValueError: unknown ``loss_type`` / ``hybrid_mode`` (with a close-match hint).
    """
    branch_weights = pick(LOSS_TYPES, loss_type, "loss_type")
    gamma = pick(HYBRID_MODES, hybrid_mode, "hybrid_mode")(float(beta), float(mask_weight))
    return branch_weights(float(alpha), gamma)


def harl_total_loss(L_g: Optional[torch.Tensor], L_f: Optional[torch.Tensor], L_b: Optional[torch.Tensor],
                    loss_type: str, alpha: float, beta: float, mask_weight: float = 0.5,
                    hybrid_mode: str = "cosine_decay_global") -> torch.Tensor:
    """The HARL objective ``Σ_k w_k·L_k`` from the branch losses; the one place it is assembled
    (:class:`harl.methods.harl.HARL` calls it every step). Weights: :func:`harl_loss_weights`.

    Terms are added in the order g, f, b. Branch losses the ``loss_type`` does not use may be None
    (e.g. L_b for ``byol_f``); a needed one that is None is a ValueError.

    Returns:
        scalar.
    """
    weights = harl_loss_weights(loss_type, alpha, beta, mask_weight, hybrid_mode)
    losses = {"g": L_g, "f": L_f, "b": L_b}
    total = None
    for key, wk in weights.items():
        if losses[key] is None:
            raise ValueError(f"loss_type '{loss_type}' needs L_{key}, got None")
        term = wk * losses[key]
        total = term if total is None else total + term
    return total


# --------------------------------------------------------------------------------------------
# Schedules (docs/methods/harl.md: Schedules)
# --------------------------------------------------------------------------------------------

def cosine_coefficient(step: int, total: int) -> float:
    """``c_k = (1 + cos(π k/K)) / 2`` in float64, k clamped to [0, K] (1 at k = 0, 0 at k = K)."""
    total = max(1, int(total))
    k = min(max(int(step), 0), total)
    return (1.0 + math.cos(math.pi * k / total)) / 2.0


def _alpha_step(step, total, alpha_base, epoch, max_epochs):
    if epoch is not None and max_epochs is not None:
        progress = float(epoch) / max(1, int(max_epochs))
    else:
        progress = float(step) / max(1, int(total))
    return 0.5 if progress < 0.7 else 0.7 if progress < 0.9 else 0.9


#: ``alpha_mode`` → fn(step, total, alpha_base, epoch, max_epochs) → α.
ALPHA_MODES = {
    "cosine": lambda step, total, base, epoch, max_epochs: 1.0 - (1.0 - base) * cosine_coefficient(step, total),
    "fixed": lambda step, total, base, epoch, max_epochs: float(base),
    "step": _alpha_step,
}

#: ``beta_mode`` → fn(step, total, lambda_base, beta_min) → β.
BETA_MODES = {
    "cosine": lambda step, total, base, beta_min: max(beta_min, base * cosine_coefficient(step, total)),
    "fixed": lambda step, total, base, beta_min: float(base),
}


def alpha_schedule(step: int, total: int, alpha_base: float, mode: str = "cosine",
                   epoch: Optional[int] = None, max_epochs: Optional[int] = None) -> float:
    """fg weight α_k in L_mask (docs/methods/harl.md: Schedules).

    - ``cosine``: ``α_k = 1 − (1 − α_base)·c_k``, rising from α_base (k = 0) to 1 (k = K).
    - ``fixed``: α_base.
    - ``step`` (TF 1000-epoch run; α_base is ignored): 0.5 while progress < 0.7, 0.7 while < 0.9,
      then 0.9; progress = epoch/max_epochs when both are given, else step/total.

    (step, total) are optimizer steps or epochs: the caller picks the granularity.
    """
    return float(pick(ALPHA_MODES, mode, "alpha_mode")(step, total, float(alpha_base), epoch, max_epochs))


def beta_schedule(step: int, total: int, lambda_base: float, mode: str = "cosine",
                  beta_min: float = 0.0) -> float:
    """Global-term weight β_k (docs/methods/harl.md: Schedules).

    - ``cosine``: ``β_k = max(β_min, λ_base·c_k)``, decaying from λ_base to β_min.
    - ``fixed``: λ_base.
    """
    return float(pick(BETA_MODES, mode, "beta_mode")(step, total, float(lambda_base), float(beta_min)))
