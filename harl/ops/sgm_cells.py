"""Saliency-guided masking (SGM, WACV 2024), part 1: cells, saliency and which cells to mask.

Pure, batched tensor functions (plus an optional ``torch.Generator``) that run on the device of
their input; nothing holds state. docs/methods/sgm.md describes the procedure. This module has

* the cell geometry: :func:`cell_index`, :func:`cell_offsets`, :func:`cells_to_pixels`;
* saliency → a B×G×G boolean fg-cell map: :func:`saliency_from_activation` (channel sum of a c5
  map, element-wise ``A ≥ mean − k·std`` rule) or :func:`saliency_from_mask` (fg fraction of a
  joint mask per cell);
* which cells to mask: :func:`sgm_cell_counts` (n_fg / n_bg per image), :func:`draw_cells`,
  :func:`sample_cell_masks`, :func:`sample_noise_cells` (spatial vs channel-wise), with the
  ``pos`` / ``neg`` modes (:data:`MASK_MODES`).

What goes into the masked cells (noise, focal windows, fills) and the whole per-image operator
:func:`~harl.ops.sgm_masking.sgm_mask_batch` are in :mod:`harl.ops.sgm_masking`; the
hard-negative logits are a loss term (:func:`harl.losses.sgm.hard_negative_logits`).

Cell geometry
-------------
An image side of S pixels is cut into G cells; pixel ``s`` belongs to cell ``⌊s·G/S⌋`` (see
:func:`cell_index`). When G divides S every cell is S/G px (224/7 → 32 px, 64/8 → 8 px);
otherwise cells differ by at most one pixel (64/7 → one 10-px cell, then six 9-px cells) and the
partition still covers every pixel exactly once. Noise patches are ``ceil(S/G)`` px wide and a
smaller cell takes the patch's top-left corner. Height and width are handled independently.

Randomness
----------
All draws come from ``generator`` when given (same seed → identical output) in a fixed order
that does not depend on the data. A generator living on another device than the input is fine:
numbers are drawn on the generator's device and moved, so a CPU generator reproduces the same
masks on a GPU batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from harl.registry import Registry

__all__ = [
    "MASK_MODES", "cell_index", "cell_offsets", "cells_to_pixels",
    "saliency_from_activation", "saliency_from_mask",
    "sgm_cell_counts", "draw_cells", "sample_cell_masks", "sample_noise_cells",
]


# --------------------------------------------------------------------------------------------
# randomness helpers


def _rand(shape: Sequence[int], generator: Optional[torch.Generator], device: torch.device,
          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    gdev = generator.device if generator is not None else device
    return torch.rand(tuple(shape), generator=generator, device=gdev, dtype=dtype).to(device)


def _randn(shape: Sequence[int], generator: Optional[torch.Generator], device: torch.device,
           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    gdev = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=gdev, dtype=dtype).to(device)


def _randint(high: int, shape: Sequence[int], generator: Optional[torch.Generator],
             device: torch.device) -> torch.Tensor:
    """Integers uniform in [0, high) (high ≥ 1)."""
    gdev = generator.device if generator is not None else device
    return torch.randint(0, int(high), tuple(shape), generator=generator, device=gdev).to(device)




# --------------------------------------------------------------------------------------------
# masking modes


@dataclass(frozen=True)
class _ModeSpec:
    ratio_key: str
    noise_std_key: str
    focal_frac_key: str
    focal_noise_inside: bool
    mask_background: bool


MASK_MODES: Registry[_ModeSpec] = Registry("SGM masking mode")
MASK_MODES.register("pos", _ModeSpec("pos_ratio", "pos_noise_std", "pos_focal_frac",
                                     focal_noise_inside=False, mask_background=True))
MASK_MODES.register("neg", _ModeSpec("neg_ratio", "neg_noise_std", "neg_focal_frac",
                                     focal_noise_inside=True, mask_background=False))


# --------------------------------------------------------------------------------------------
# cell geometry


def _check_grid(size: int, grid_size: int) -> None:
    if not 1 <= grid_size <= size:
        raise ValueError(f"grid_size must be in [1, {size}] for a {size}-px side, got {grid_size}")


def cell_index(size: int, grid_size: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """Cell id ``⌊s·G/S⌋`` of every pixel s of a side of ``size`` px. Shape: (S,) long."""
    _check_grid(size, grid_size)
    return torch.arange(size, device=device) * grid_size // size


def cell_offsets(size: int, grid_size: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """Offset of every pixel inside its cell (0 … cell side − 1). Shape: (S,) long."""
    idx = cell_index(size, grid_size, device)
    starts = torch.div(torch.arange(grid_size, device=device) * size + grid_size - 1, grid_size,
                       rounding_mode="floor")  # first pixel of cell g = ceil(g·S/G)
    return torch.arange(size, device=device) - starts[idx]


def cells_to_pixels(cells: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Expand a cell map (…×G×G) to pixels (…×H×W) with the partition of :func:`cell_index`."""
    g = cells.shape[-1]
    if cells.shape[-2] != g:
        raise ValueError(f"cell map must be square (…×G×G), got shape {tuple(cells.shape)}")
    iy = cell_index(height, g, cells.device)
    ix = cell_index(width, g, cells.device)
    return cells.index_select(-2, iy).index_select(-1, ix)


# --------------------------------------------------------------------------------------------
# saliency


def saliency_from_activation(act: torch.Tensor, grid_size: int = 7, std_factor: float = 0.6) -> torch.Tensor:
    """Foreground cells from a frozen backbone's c5 activation (docs/methods/sgm.md, ``supervised_r50``/``online``).

    A = Σ_c act (B×h×w), adaptive-average-pooled to G×G when h×w ≠ G×G; a cell is fg iff
    ``A_ij ≥ mean(A) − std_factor·std(A)``, element-wise per image. ``std`` is the **population**
    std (divide by G², ``correction=0``): it describes the G² values of this map rather than
    estimating a larger population, and it is what the reference computes (``np.std``). The
    largest cell is therefore always fg, and a constant map is all fg.

    This is *not* the reference's buggy rule, which compares a row-sorted copy of A with the
    threshold (fg cells end up at the right end of each row); see tests/test_ops_sgm_cells.py.

    Args:
        act: B×C×h×w activation (any float dtype; the sum is done in float64).
    Returns:
        B×G×G bool.
    """
    if act.dim() != 4:
        raise ValueError(f"saliency_from_activation expects B×C×h×w, got shape {tuple(act.shape)}")
    a = act.detach().to(torch.float64).sum(dim=1)
    if tuple(a.shape[-2:]) != (grid_size, grid_size):
        a = F.adaptive_avg_pool2d(a.unsqueeze(1), grid_size).squeeze(1)
    # subtracting one cell's value makes ties exact (a constant map gives 0 ≥ 0 - 0, all fg)
    a = a - a[:, :1, :1]
    flat = a.flatten(1)
    thr = flat.mean(dim=1) - std_factor * flat.std(dim=1, correction=0)
    return a >= thr.view(-1, 1, 1)


def saliency_from_mask(mask: torch.Tensor, grid_size: int = 7, threshold: float = 0.5) -> torch.Tensor:
    """Foreground cells from a pixel mask (``heuristic_mask``): fg fraction per cell > threshold.

    Cells follow :func:`cell_index` (exact partition, also when G does not divide S).

    Args:
        mask: B×1×H×W or B×H×W, values in [0, 1] (bool or float; fg = 1).
    Returns:
        B×G×G bool.
    """
    if mask.dim() == 4:
        if mask.shape[1] != 1:
            raise ValueError(f"saliency_from_mask expects B×1×H×W, got shape {tuple(mask.shape)}")
        mask = mask[:, 0]
    if mask.dim() != 3:
        raise ValueError(f"saliency_from_mask expects B×1×H×W or B×H×W, got shape {tuple(mask.shape)}")
    m = mask.to(torch.float64)
    h, w = m.shape[-2:]
    ph = F.one_hot(cell_index(h, grid_size, m.device), grid_size).to(m.dtype)  # H×G
    pw = F.one_hot(cell_index(w, grid_size, m.device), grid_size).to(m.dtype)  # W×G
    sums = ph.T @ m @ pw  # B×G×G
    areas = ph.sum(0).view(-1, 1) * pw.sum(0).view(1, -1)
    return sums / areas > threshold


# --------------------------------------------------------------------------------------------
# which cells


def _check_fg(fg: torch.Tensor) -> torch.Tensor:
    if fg.dim() != 3 or fg.shape[1] != fg.shape[2]:
        raise ValueError(f"fg cell map must be B×G×G, got shape {tuple(fg.shape)}")
    return fg.bool()


def sgm_cell_counts(fg: torch.Tensor, ratios: torch.Tensor, fg_cap: float = 0.55,
                    mode: str = "pos") -> Tuple[torch.Tensor, torch.Tensor]:
    """Number of fg and bg cells to mask per image (docs/methods/sgm.md, step 2).

    FG_ratio = |FG|/G²; n_fg = round(min(r·FG_ratio, fg_cap)·G²) (round half to even, as
    Python's ``round``); n_bg = ⌊G²·r⌋ − n_fg for ``pos``, 0 for ``neg``; then each is clamped to
    [0, available cells]. Computed in float64.

    Args:
        fg: B×G×G bool fg cells; ratios: (B,) mask ratios r; mode: ``pos`` | ``neg``.
    Returns:
        (n_fg, n_bg): two (B,) long tensors.
    """
    spec = MASK_MODES.get(mode)
    fg = _check_fg(fg)
    n_cells = fg.shape[1] * fg.shape[2]
    avail_fg = fg.flatten(1).sum(dim=1)
    r = ratios.to(device=fg.device, dtype=torch.float64).reshape(-1)
    if r.shape[0] != fg.shape[0]:
        raise ValueError(f"ratios has {r.shape[0]} entries for a batch of {fg.shape[0]}")
    fg_ratio = avail_fg.to(torch.float64) / n_cells
    n_fg = torch.round(torch.clamp(r * fg_ratio, max=fg_cap) * n_cells).long()
    if spec.mask_background:
        n_bg = torch.floor(n_cells * r).long() - n_fg
    else:
        n_bg = torch.zeros_like(n_fg)
    n_fg = torch.minimum(n_fg.clamp(min=0), avail_fg)
    n_bg = torch.minimum(n_bg.clamp(min=0), n_cells - avail_fg)
    return n_fg, n_bg


def draw_cells(fg: torch.Tensor, n_fg: torch.Tensor, n_bg: torch.Tensor, num_masks: Optional[int] = None,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Pick exactly n_fg fg cells and n_bg bg cells per image, uniformly at random (vectorised).

    Each (image, mask) gets i.i.d. uniform scores; fg cells get score u, bg cells 2 + u, so one
    ascending sort lists the fg cells in random order followed by the bg cells in random order;
    the first n_fg and the first n_bg of the bg block are taken. Counts must already be clamped
    (:func:`sgm_cell_counts`).

    Args:
        fg: B×G×G bool; n_fg, n_bg: (B,) long.
        num_masks: None → one mask per image (B×G×G); K → K independent masks per image with the
            same counts (B×K×G×G), e.g. one per channel.
    Returns:
        bool B×G×G or B×K×G×G.
    """
    fg = _check_fg(fg)
    b, g, _ = fg.shape
    k = 1 if num_masks is None else int(num_masks)
    fgf = fg.view(b, 1, g * g)
    scores = _rand((b, k, g * g), generator, fg.device) + 2.0 * (~fgf).float()
    order = scores.argsort(dim=-1)
    ranks = torch.empty_like(order).scatter_(-1, order, torch.arange(g * g, device=fg.device).expand_as(order))
    n_avail = fgf.sum(dim=-1, keepdim=True)  # B×1×1
    nf = n_fg.to(fg.device).view(b, 1, 1)
    nb = n_bg.to(fg.device).view(b, 1, 1)
    chosen = torch.where(fgf, ranks < nf, (ranks >= n_avail) & (ranks < n_avail + nb))
    chosen = chosen.view(b, k, g, g)
    return chosen[:, 0] if num_masks is None else chosen


def _draw_ratios(batch: int, ratio_range: Sequence[float], generator, device) -> torch.Tensor:
    lo, hi = (float(v) for v in ratio_range)
    return lo + (hi - lo) * _rand((batch,), generator, device, torch.float64)


def sample_cell_masks(fg: torch.Tensor, ratio_range: Sequence[float], fg_cap: float = 0.55, mode: str = "pos",
                      generator: Optional[torch.Generator] = None, *, num_masks: Optional[int] = None,
                      ratios: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per image draw r ~ U[ratio_range] and mask exactly the :func:`sgm_cell_counts` cells.

    Args:
        fg: B×G×G bool fg cells.
        ratio_range: (lo, hi) for r (ignored when ``ratios`` is given).
        num_masks: see :func:`draw_cells` (K masks per image sharing r and the counts).
        ratios: optional (B,) r values to use instead of drawing them.
    Returns:
        bool B×G×G (or B×K×G×G); True = masked.
    """
    fg = _check_fg(fg)
    if ratios is None:
        ratios = _draw_ratios(fg.shape[0], ratio_range, generator, fg.device)
    n_fg, n_bg = sgm_cell_counts(fg, ratios, fg_cap, mode)
    return draw_cells(fg, n_fg, n_bg, num_masks=num_masks, generator=generator)


def sample_noise_cells(fg: torch.Tensor, ratio_range: Sequence[float], fg_cap: float = 0.55, mode: str = "pos",
                       spatial_prob: float = 0.3, channels: int = 3, generator: Optional[torch.Generator] = None,
                       *, ratios: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-channel cell masks: with p ``spatial_prob`` one mask for all channels (spatial),
    otherwise every channel draws its own cells with the same n_fg / n_bg (channel-wise).

    Returns:
        (cells B×C×G×G bool, spatial (B,) bool).
    """
    fg = _check_fg(fg)
    b = fg.shape[0]
    spatial = _rand((b,), generator, fg.device) < spatial_prob
    cells = sample_cell_masks(fg, ratio_range, fg_cap, mode, generator, num_masks=channels, ratios=ratios)
    cells = torch.where(spatial.view(b, 1, 1, 1), cells[:, :1].expand_as(cells), cells)
    return cells, spatial
