"""HAPiCL's mask-split pixel-level contrastive loss (docs/methods/hapicl.md).

Pure functions, no module state. Pairs are cells of the *same image* across its two views; the
mask decides which pairs are positive (same region) and which are negative. ``pix_variant`` and
``pix_positives`` are validated once by the method's ``check_cfg``; here they are only looked up
(:func:`harl.registry.pick`: an unknown name from outside still raises a ValueError).
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from harl.registry import pick

__all__ = ["PIX_POSITIVES", "PIX_VARIANTS", "pixel_pair_masks", "pixel_contrastive_loss",
           "pixel_contrastive_loss_and_stats"]


def _flat_binary(m: torch.Tensor, what: str) -> torch.Tensor:
    """B×N, B×h×w or B×1×h×w binary mask → B×N bool (errors on non-binary values)."""
    if m.dim() == 4 and m.shape[1] != 1:
        raise ValueError(f"{what} must be B×N or B×1×h×w, got shape {tuple(m.shape)}")
    if m.dim() not in (2, 3, 4):
        raise ValueError(f"{what} must be B×N or B×1×h×w, got shape {tuple(m.shape)}")
    m = m.flatten(1)
    if m.dtype == torch.bool:
        return m
    if not bool(((m == 0) | (m == 1)).all()):
        raise ValueError(f"{what} must be binary {{0, 1}} (HAPiCL uses mask_mode=binary); got other values")
    return m > 0


#: ``pix_positives`` → fn(f1 B×N1×1, f2 B×1×N2 bool) → Pos B×N1×N2 bool.
PIX_POSITIVES = {
    "fg_bg": lambda f1, f2: (f1 & f2) | (~f1 & ~f2),
    "fg_only": lambda f1, f2: f1 & f2,
}


def pixel_pair_masks(m1_fg: torch.Tensor, m2_fg: torch.Tensor,
                     positives: str = "fg_bg") -> Tuple[torch.Tensor, torch.Tensor]:
    """Positive / negative cell pairs across the two views of each image (docs/methods/hapicl.md).

    - ``fg_bg``: Pos_ij = (f1_i ∧ f2_j) ∨ (b1_i ∧ b2_j) with b = ¬f;
    - ``fg_only``: Pos_ij = f1_i ∧ f2_j;
    - Neg = ¬Pos (fg–bg pairs, plus bg–bg under ``fg_only``).

    No spatial correspondence: any fg cell is positive with any fg cell of the other view.

    Args:
        m1_fg: B×N1 (or B×1×h×w) binary fg mask of view 1; m2_fg: B×N2 of view 2.
    Returns:
        (Pos, Neg), each B×N1×N2 bool.
    """
    rule = pick(PIX_POSITIVES, positives, "pix_positives")
    f1 = _flat_binary(m1_fg, "m1_fg")
    f2 = _flat_binary(m2_fg, "m2_fg")
    if f1.shape[0] != f2.shape[0]:
        raise ValueError(f"m1_fg and m2_fg batch sizes differ: {f1.shape[0]} vs {f2.shape[0]}")
    pos = rule(f1[:, :, None], f2[:, None, :])
    return pos, ~pos


def _variant_a(pos: torch.Tensor, neg: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return -(torch.log(pos + 1.0) - torch.log(pos + 1.0 + neg + 1.0))


def _variant_b(pos: torch.Tensor, neg: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    denom = ((pos + neg) * keep).sum()
    # if every image is dropped the denominator is 0: use 1 so the (zero-weighted) terms stay finite
    denom = torch.where(denom > 0, denom, torch.ones_like(denom))
    return -(torch.log(pos + 1e-5) - torch.log(denom))


#: ``pix_variant`` → fn(pos_b B, neg_b B, keep B float) → per-image loss B.
PIX_VARIANTS = {"A": _variant_a, "B": _variant_b}


def pixel_contrastive_loss_and_stats(
        P1: torch.Tensor, P2: torch.Tensor, m1_fg: torch.Tensor, m2_fg: torch.Tensor,
        temperature: float = 0.2, variant: str = "A", positives: str = "fg_bg",
        skip_degenerate: bool = True,
        spatial_pos: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """:func:`pixel_contrastive_loss` plus detached diagnostics.

    Returns:
        (loss, stats) with stats ``frac_valid`` (fraction of images kept), ``n_valid``,
        ``pos_pair_frac`` (mean fraction of pairs that are positive), all detached 0-d tensors.
    """
    per_image_loss = pick(PIX_VARIANTS, str(variant).upper(), "pix_variant")  # "a" and "A" name the same variant
    if not temperature > 0:
        raise ValueError(f"pix_temperature must be > 0, got {temperature}")
    if P1.dim() != 3 or P2.dim() != 3 or P1.shape[:2] != P2.shape[:2]:
        raise ValueError(f"P1 and P2 must be B×D×N with equal B and D, got {tuple(P1.shape)} and {tuple(P2.shape)}")
    pos_m, neg_m = pixel_pair_masks(m1_fg, m2_fg, positives)
    b, _, n1 = P1.shape
    n2 = P2.shape[2]
    if pos_m.shape != (b, n1, n2):
        raise ValueError(f"masks give {tuple(pos_m.shape)} pairs but P1/P2 have B×N1×N2 = {(b, n1, n2)}")
    if spatial_pos is not None:
        if spatial_pos.shape != pos_m.shape:
            raise ValueError(f"spatial_pos must be B×N1×N2 = {tuple(pos_m.shape)}, got {tuple(spatial_pos.shape)}")
        # far same-region pairs become neither positive nor negative
        pos_m = pos_m & spatial_pos.to(device=pos_m.device, dtype=torch.bool)
    with torch.autocast(device_type=P1.device.type, enabled=False):
        p1 = F.normalize(P1.float(), dim=1)
        p2 = F.normalize(P2.float(), dim=1)
        sim = torch.exp(torch.einsum("bdi,bdj->bij", p1, p2) / float(temperature))  # B×N1×N2, ≤ e^{1/τ}
        pos_f = pos_m.to(sim.dtype)
        neg_f = neg_m.to(sim.dtype)
        pos = (sim * pos_f).sum(dim=(1, 2))
        neg = (sim * neg_f).sum(dim=(1, 2))
        if skip_degenerate:
            keep = ((pos_f.sum(dim=(1, 2)) > 0) & (neg_f.sum(dim=(1, 2)) > 0)).to(sim.dtype)
        else:
            keep = torch.ones_like(pos)
        per_image = per_image_loss(pos, neg, keep)
        n_keep = keep.sum()
        loss = (per_image * keep).sum() / n_keep.clamp(min=1.0)
    stats = {
        "frac_valid": (n_keep / b).detach(),
        "n_valid": n_keep.detach(),
        "pos_pair_frac": pos_f.mean().detach(),
    }
    return loss, stats


def pixel_contrastive_loss(P1: torch.Tensor, P2: torch.Tensor, m1_fg: torch.Tensor, m2_fg: torch.Tensor,
                           temperature: float = 0.2, variant: str = "A", positives: str = "fg_bg",
                           skip_degenerate: bool = True, spatial_pos: Optional[torch.Tensor] = None) -> torch.Tensor:
    """HAPiCL pixel loss L_pix(P₁, P₂) (docs/methods/hapicl.md).

    ``S_bij = exp(⟨P₁[b,:,i], P₂[b,:,j]⟩/τ)``, ``pos_b = Σ_ij S·Pos``, ``neg_b = Σ_ij S·Neg``
    (Pos/Neg from :func:`pixel_pair_masks`), then

    - variant ``A`` (case-insensitive): ``mean_b −log[(pos_b + 1) / (pos_b + 1 + neg_b + 1)]``;
    - variant ``B``: ``mean_b −log[(pos_b + 1e-5) / Σ_{b'}(pos_{b'} + neg_{b'})]`` (the denominator
      covers every kept image of the local batch, not gathered across devices).

    Computed in float32 with autocast off (sums reach ≈ N²·e^{1/τ} ≈ 3.6e5 at 7×7, τ = 0.2, which
    overflows fp16; fp32 is safe for τ ≳ 0.015). P is ℓ2-normalised along D here again (idempotent).

    ``skip_degenerate``: images with no positive or no negative pair are dropped entirely (from the
    mean and from variant B's denominator); if all are dropped the loss is 0 with a zero, finite
    gradient. ``spatial_pos`` (B×N1×N2 bool, :func:`harl.ops.mask_grid.spatial_positive_mask`) is ANDed
    into Pos; Neg stays ¬Pos of the region rule, so far same-region pairs are ignored.
    The loss is symmetric: swapping (P₁, m₁) with (P₂, m₂) gives the same value.

    Args:
        P1: B×D×N1 pixel embeddings of view 1; P2: B×D×N2 of view 2 (N = h·w, row-major).
        m1_fg, m2_fg: binary fg masks on those grids, B×N or B×1×h×w.
    Returns:
        scalar float32.
    """
    return pixel_contrastive_loss_and_stats(P1, P2, m1_fg, m2_fg, temperature, variant, positives,
                                            skip_degenerate, spatial_pos)[0]
