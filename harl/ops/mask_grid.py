"""Masks on the feature-map grid: downsampling, masked pooling and cell geometry (docs/augmentation.md,
docs/methods/harl.md, docs/methods/hapicl.md).

Pure tensor functions, no module state. Conventions: a full-resolution mask is B×1×S×S (uint8, bool
or float; a pixel is fg ⇔ value > 0); a grid mask is float B×1×h×w; a feature map is B×C×h×w; flat
grids are row-major (cell (r, c) is index r·w + c, as ``feat.flatten(2)``). ``mask_mode`` is
validated once by the method's ``check_cfg``; here it is only looked up (:func:`harl.registry.pick`).
"""

from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from harl.registry import pick

__all__ = [
    "MASK_MODES",
    "mask_to_grid",
    "masked_mean_pool",
    "gap_masked_pool",
    "pixel_shuffle_pool",
    "cell_centers",
    "spatial_positive_mask",
]

Size = Union[int, Sequence[int]]


def _as_b1hw(mask: torch.Tensor, what: str) -> torch.Tensor:
    if mask.dim() == 3:
        mask = mask.unsqueeze(1)
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"{what} must be B×1×H×W (or B×H×W), got shape {tuple(mask.shape)}")
    return mask


def _grid_binary(a: torch.Tensor, threshold: float) -> Tuple[torch.Tensor, torch.Tensor]:
    fg = (a > threshold).to(a.dtype)
    return fg, 1.0 - fg


def _grid_soft(a: torch.Tensor, threshold: float) -> Tuple[torch.Tensor, torch.Tensor]:
    return a, 1.0 - a


#: ``mask_mode`` → rule turning the per-cell fg fraction ``a`` into (M_f, M_b).
MASK_MODES = {"binary": _grid_binary, "soft": _grid_soft}


def mask_to_grid(mask: torch.Tensor, size: Size, mode: str = "binary",
                 threshold: float = 0.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Downsample a full-resolution mask to the feature grid (docs/augmentation.md).

    ``a = adaptive_avg_pool2d(1[mask > 0], (h, w))`` is the fg fraction of each cell, then

    - ``binary``: ``M_f = 1[a > threshold]``, ``M_b = 1 − M_f``. ``threshold = 0.0`` (faithful to the
      reference) makes *any* fg coverage an fg cell (dilates fg, so large objects often leave M_b
      empty); ``0.5`` is strict-majority assignment (a cell exactly half covered is bg).
    - ``soft``: ``M_f = a``, ``M_b = 1 − a`` (``threshold`` is ignored).

    Args:
        mask: B×1×S×S (or B×S×S), any dtype; fg ⇔ value > 0. Non-square S×S′ also works.
        size: (h, w) of the actual feature map (an int means h = w).
        mode: ``binary`` or ``soft``.
        threshold: the binary threshold on ``a``, in [0, 1).
    Returns:
        (M_f, M_b), each float32 B×1×h×w on ``mask``'s device.
    """
    rule = pick(MASK_MODES, mode, "mask_mode")
    if not 0.0 <= float(threshold) < 1.0:
        raise ValueError(f"mask_threshold must be in [0, 1), got {threshold}")
    hw = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"grid size must be a positive int or (h, w), got {size!r}")
    fg = (_as_b1hw(mask, "mask") > 0).to(torch.float32)
    a = F.adaptive_avg_pool2d(fg, hw)
    return rule(a, float(threshold))


def _check_feat_mask(feat: torch.Tensor, m: torch.Tensor, scale: int = 1) -> torch.Tensor:
    if feat.dim() != 4:
        raise ValueError(f"feature map must be B×C×h×w, got shape {tuple(feat.shape)}")
    m = _as_b1hw(m, "grid mask")
    want = (feat.shape[0], scale * feat.shape[2], scale * feat.shape[3])
    got = (m.shape[0], m.shape[2], m.shape[3])
    if got != want:
        raise ValueError(f"grid mask B×1×h×w = {tuple(m.shape)} does not match the feature map "
                         f"{tuple(feat.shape)} (expected B×1×{want[1]}×{want[2]}); build the mask grid "
                         f"from the actual feature-map size")
    return m.to(feat.dtype)


def masked_mean_pool(feat: torch.Tensor, m: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """``h = Σ_hw(F ⊙ M) / (Σ_hw M + eps)`` (docs/methods/harl.md; ``eps = pool_eps = 1.0`` as the reference).

    Note the +eps in the denominator: a region of n fully-fg cells is shrunk by n/(n+1); an empty
    region pools to the zero vector.

    Args:
        feat: B×C×h×w; m: B×1×h×w (or B×h×w) weights, binary or soft.
    Returns:
        B×C.
    """
    m = _check_feat_mask(feat, m)
    return (feat * m).sum(dim=(2, 3)) / (m.sum(dim=(2, 3)) + eps)


def gap_masked_pool(feat: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``h = Σ_hw(F ⊙ M) / (h·w)`` (TF reference's GAP of the masked map; option ``gap_masked``).

    Args:
        feat: B×C×h×w; m: B×1×h×w (or B×h×w).
    Returns:
        B×C.
    """
    m = _check_feat_mask(feat, m)
    return (feat * m).sum(dim=(2, 3)) / float(feat.shape[2] * feat.shape[3])


def pixel_shuffle_pool(feat: torch.Tensor, m_fine: torch.Tensor, eps: float = 1.0,
                       upscale: int = 2) -> torch.Tensor:
    """Masked pooling of a depth-to-space map, re-assembled to C channels (``c5_pixel_shuffle``, docs/methods/harl.md).

    Depth-to-space with r = ``upscale`` (``F.pixel_shuffle`` order) turns the C×h×w map into a
    (C/r²)×rh×rw map whose pixel (c, r·i+δ_y, r·j+δ_x) is input channel k = (c, δ) = c·r² + δ_y·r + δ_x
    at (i, j). Each sub-position δ = (δ_y, δ_x) is pooled with the fine mask M (rh×rw) and the
    results are put back at channel k::

        h[k = (c, δ)] = Σ_ij F[k, i, j] · M[r·i + δ_y, r·j + δ_x] / (ΣM / r² + eps)

    (at R50: C = 2048, 7×7 → 512×14×14, M = M14, r = 2.) With M all ones this is the plain mean
    except for eps.

    Args:
        feat: B×C×h×w, C divisible by r²; m_fine: B×1×(r·h)×(r·w) (or B×(r·h)×(r·w)).
    Returns:
        B×C.
    """
    r = int(upscale)
    if feat.dim() == 4 and feat.shape[1] % (r * r):
        raise ValueError(f"pixel_shuffle_pool needs C divisible by {r * r}, got C = {feat.shape[1]}")
    m = _check_feat_mask(feat, m_fine, scale=r)
    b, c, h, w = feat.shape
    sub = F.pixel_unshuffle(m, r)  # B×r²×h×w: channel δ_y·r + δ_x holds M[r·i+δ_y, r·j+δ_x]
    num = (feat.view(b, c // (r * r), r * r, h, w) * sub.unsqueeze(1)).sum(dim=(3, 4)).reshape(b, c)
    den = m.sum(dim=(1, 2, 3)) / float(r * r) + eps
    return num / den.unsqueeze(1)


def _check_coords(coords: torch.Tensor, what: str) -> torch.Tensor:
    if coords.dim() != 2 or coords.shape[1] != 4:
        raise ValueError(f"{what} must be B×4 [x0, y0, x1, y1], got shape {tuple(coords.shape)}")
    return coords.to(torch.promote_types(coords.dtype, torch.float32))


def cell_centers(coords: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Centres of the h×w grid cells of each view, in normalised original-image coordinates (docs/methods/hapicl.md).

    Cell (r, c) of a view with ``coords = [x0, y0, x1, y1]`` has centre
    ``((c + ½)(x1 − x0)/w + x0, (r + ½)(y1 − y0)/h + y0)``. A horizontally flipped view stores
    x0 > x1, so its column 0 lies at the original box's right edge (the mirror is exact).

    Args:
        coords: B×4, normalised to [0, 1] of the original image.
    Returns:
        B×(h·w)×2 as (x, y), row-major cell order (index r·w + c).
    """
    coords = _check_coords(coords, "coords")
    x0, y0, x1, y1 = coords.unbind(dim=1)
    cols = torch.arange(w, device=coords.device, dtype=coords.dtype) + 0.5
    rows = torch.arange(h, device=coords.device, dtype=coords.dtype) + 0.5
    cx = cols[None, :] * ((x1 - x0) / w)[:, None] + x0[:, None]  # B×w
    cy = rows[None, :] * ((y1 - y0) / h)[:, None] + y0[:, None]  # B×h
    return torch.stack([cx[:, None, :].expand(-1, h, -1), cy[:, :, None].expand(-1, -1, w)],
                       dim=-1).reshape(coords.shape[0], h * w, 2)


def spatial_positive_mask(coords1: torch.Tensor, coords2: torch.Tensor, h: int, w: int,
                          radius: float = 0.7) -> torch.Tensor:
    """PixPro-style spatial correspondence of two views' cells (``pix_spatial``, docs/methods/hapicl.md).

    ``d_ij = ‖centre1_i − centre2_j‖ / max(diag1, diag2)`` with a view's bin diagonal
    ``√(((x1 − x0)/w)² + ((y1 − y0)/h)²)``; the pair is spatially positive iff ``d_ij < radius``.

    Args:
        coords1, coords2: B×4 [x0, y0, x1, y1] of each view (x0 > x1 when flipped).
        h, w: the grid both views are pooled on.
    Returns:
        B×(h·w)×(h·w) bool.
    """
    c1 = cell_centers(coords1, h, w)
    c2 = cell_centers(coords2, h, w)
    if c1.shape[0] != c2.shape[0]:
        raise ValueError(f"coords1 and coords2 batch sizes differ: {c1.shape[0]} vs {c2.shape[0]}")

    def diag(c: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(((c[:, 2] - c[:, 0]) / w) ** 2 + ((c[:, 3] - c[:, 1]) / h) ** 2)

    scale = torch.maximum(diag(_check_coords(coords1, "coords1")), diag(_check_coords(coords2, "coords2")))
    # explicit differences (cdist's matmul path is inexact next to the threshold)
    dist = (c1[:, :, None, :] - c2[:, None, :, :]).norm(dim=-1)  # B×N1×N2
    return dist / scale[:, None, None] < radius
