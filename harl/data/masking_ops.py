"""Saliency-guided masking (SGM, WACV 2024): pure, batched tensor operators.

Everything here is a function of tensors (plus an optional ``torch.Generator``) and runs on the
device of its input; nothing holds state. docs/methods/sgm.md describes the procedure; the pieces are:

* saliency → a B×G×G boolean fg-cell map: :func:`saliency_from_activation` (channel sum of a c5
  map, element-wise ``A ≥ mean − k·std`` rule) or :func:`saliency_from_mask` (fg fraction of a
  joint mask per cell);
* which cells to mask: :func:`sgm_cell_counts` (n_fg / n_bg per image), :func:`draw_cells`,
  :func:`sample_cell_masks`, :func:`sample_noise_cells` (spatial vs channel-wise);
* what to put there: :func:`apply_cell_noise`, :func:`focal_mask`, :func:`fill`;
* the whole per-image procedure: :func:`sgm_mask_batch` with a :class:`SGMMaskConfig`;
* the loss side: :func:`hard_negative_logits` (α·q·t/T, the extra MoCo / NT-Xent columns).

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

import math
from dataclasses import dataclass, fields
from typing import Callable, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from harl.data.filters import gaussian_blur
from harl.registry import Registry

__all__ = [
    "SGMMaskConfig", "MASK_MODES", "FILL_STRATEGIES",
    "cell_index", "cell_offsets", "cells_to_pixels",
    "saliency_from_activation", "saliency_from_mask",
    "sgm_cell_counts", "draw_cells", "sample_cell_masks", "sample_noise_cells",
    "draw_noise_patch", "tile_cell_noise", "apply_cell_noise",
    "focal_side", "focal_window_mask", "focal_mask", "fill", "sgm_mask_batch",
    "hard_negative_logits",
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
# configuration and registries


@dataclass(frozen=True)
class SGMMaskConfig:
    """The masking hyper-parameters of docs/methods/sgm.md (``sgm_*`` method_kwargs, same names/defaults).

    ``pos`` = masked query (r ~ U[pos_ratio], noise std 0.18, focal window 0.893·S, noise
    outside); ``neg`` = hard negative (r ~ U[neg_ratio], std 0.14, window 0.580·S, noise inside,
    fg cells only).
    """

    grid_size: int = 7
    fg_std_factor: float = 0.6
    fg_cap: float = 0.55
    pos_ratio: Tuple[float, float] = (0.05, 0.25)
    neg_ratio: Tuple[float, float] = (0.4, 0.7)
    pos_noise_std: float = 0.18
    neg_noise_std: float = 0.14
    focal_prob: float = 0.2
    pos_focal_frac: float = 0.893
    neg_focal_frac: float = 0.580
    spatial_prob: float = 0.3
    noise_per_image: bool = False
    sgm_strategy: str = "hp"
    fill_blur_kernel: int = 31
    fill_blur_sigma: float = 10.0

    def __post_init__(self):
        for name in ("pos_ratio", "neg_ratio"):
            lo_hi = tuple(float(v) for v in getattr(self, name))
            if len(lo_hi) != 2 or not 0.0 <= lo_hi[0] <= lo_hi[1] <= 1.0:
                raise ValueError(f"SGM method_kwargs.{name} must be [lo, hi] with 0 ≤ lo ≤ hi ≤ 1, "
                                 f"got {getattr(self, name)!r}")
            object.__setattr__(self, name, lo_hi)
        for name in ("focal_prob", "spatial_prob", "fg_cap", "pos_focal_frac", "neg_focal_frac"):
            v = getattr(self, name)
            if not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"SGM method_kwargs.{name} must be in [0, 1], got {v!r}")
        for name in ("pos_noise_std", "neg_noise_std"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"SGM method_kwargs.{name} must be ≥ 0, got {getattr(self, name)!r}")
        if int(self.grid_size) < 1:
            raise ValueError(f"SGM method_kwargs.grid_size must be ≥ 1, got {self.grid_size!r}")
        FILL_STRATEGIES.get(self.sgm_strategy)  # clear error for an unknown strategy

    @classmethod
    def from_kwargs(cls, kwargs: Mapping) -> "SGMMaskConfig":
        """Build from a method_kwargs mapping; keys that are not masking parameters are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if k.endswith("_ratio") else v)
                      for k, v in dict(kwargs).items() if k in names})


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


def _mean_source(x: torch.Tensor, noise, blur_kernel, blur_sigma) -> torch.Tensor:
    return x.mean(dim=(2, 3), keepdim=True)


def _blur_source(x: torch.Tensor, noise, blur_kernel, blur_sigma) -> torch.Tensor:
    return gaussian_blur(x, blur_kernel, blur_sigma)


def _noise_source(x: torch.Tensor, noise, blur_kernel, blur_sigma) -> torch.Tensor:
    if noise is None:
        raise ValueError("fill strategy 'hp' needs a noise tensor (broadcastable to x)")
    return noise


#: fill strategy name → ``source(x, noise, blur_kernel, blur_sigma)``; masked pixels take source.
FILL_STRATEGIES: Registry[Callable] = Registry("SGM fill strategy (sgm_strategy)")
FILL_STRATEGIES.register("hp", _noise_source)
FILL_STRATEGIES.register("blur", _blur_source)
FILL_STRATEGIES.register("mean", _mean_source)


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
    threshold (fg cells end up at the right end of each row); see tests/test_sgm_ops.py.

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


# --------------------------------------------------------------------------------------------
# noise


def draw_noise_patch(channels: int, height: int, width: int, std: float, batch: Optional[int] = None,
                     generator: Optional[torch.Generator] = None, device=None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """N(0, std²) noise, C×h×w (shared by the batch) or B×C×h×w when ``batch`` is given."""
    shape = (channels, height, width) if batch is None else (batch, channels, height, width)
    device = torch.device("cpu") if device is None else torch.device(device)
    return (_randn(shape, generator, device) * float(std)).to(dtype)


def tile_cell_noise(patch: torch.Tensor, height: int, width: int, grid_size: int) -> torch.Tensor:
    """Repeat a cell-sized noise patch into every cell of an H×W image.

    Pixel (y, x) takes ``patch[..., off_y, off_x]`` with its offsets inside its cell
    (:func:`cell_offsets`). patch: …×C×P×Q with P ≥ the tallest cell (``ceil(H/G)``) and
    Q ≥ ``ceil(W/G)``. Returns …×C×H×W.
    """
    oy = cell_offsets(height, grid_size, patch.device)
    ox = cell_offsets(width, grid_size, patch.device)
    if patch.shape[-2] <= int(oy.max()) or patch.shape[-1] <= int(ox.max()):
        raise ValueError(f"noise patch {tuple(patch.shape[-2:])} is smaller than a cell of an "
                         f"{height}×{width} image on a {grid_size}×{grid_size} grid")
    return patch.index_select(-2, oy).index_select(-1, ox)


def _check_images(x: torch.Tensor) -> None:
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"expected float images B×C×H×W, got {x.dtype} of shape {tuple(x.shape)}")


def _cell_pixel_mask(cells: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    if cells.dim() == 3:
        cells = cells.unsqueeze(1)
    if cells.dim() != 4 or cells.shape[0] != b or cells.shape[1] not in (1, c):
        raise ValueError(f"cells must be B×G×G or B×C×G×G for images {tuple(x.shape)}, got {tuple(cells.shape)}")
    return cells_to_pixels(cells.bool(), h, w).expand(b, c, h, w)


def apply_cell_noise(x: torch.Tensor, cells: torch.Tensor, noise_std: float = 0.18, *,
                     noise: Optional[torch.Tensor] = None, noise_per_image: bool = False,
                     generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fill the masked cells of x with a tiled cell-sized noise patch.

    Args:
        x: B×C×H×W images (not modified).
        cells: B×G×G (spatial: the same cells in every channel) or B×C×G×G (channel-wise: each
            channel its own cells, see :func:`sample_noise_cells`); channel c's cells get
            channel c of the patch.
        noise_std: std of the patch when ``noise`` is not given.
        noise: optional C×P×Q (shared by the batch) or B×C×P×Q patch, P ≥ ceil(H/G), Q ≥ ceil(W/G).
        noise_per_image: draw one patch per image instead of one per batch.
    Returns:
        (masked x B×C×H×W, pixel mask B×C×H×W bool).
    """
    _check_images(x)
    b, c, h, w = x.shape
    g = cells.shape[-1]
    pix = _cell_pixel_mask(cells, x)
    if noise is None:
        noise = draw_noise_patch(c, math.ceil(h / g), math.ceil(w / g), noise_std,
                                 b if noise_per_image else None, generator, x.device, x.dtype)
    src = tile_cell_noise(noise.to(device=x.device, dtype=x.dtype), h, w, g)
    return torch.where(pix, src, x), pix


# --------------------------------------------------------------------------------------------
# focal masking


def focal_side(size: int, keep_frac: float) -> int:
    """Side of the focal window, ``round(keep_frac·S)`` (224: 0.893 → 200, 0.580 → 130)."""
    return min(size, max(0, int(round(keep_frac * size))))


def focal_window_mask(batch: int, height: int, width: int, keep_frac: float, noise_inside: bool,
                      generator: Optional[torch.Generator] = None, device=None
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random window of round(keep_frac·H) × round(keep_frac·W) px per image, placed uniformly.

    Returns:
        (mask B×1×H×W bool — True = to fill: the window if ``noise_inside`` else its outside,
        top (B,) long, left (B,) long).
    """
    device = torch.device("cpu") if device is None else torch.device(device)
    sh, sw = focal_side(height, keep_frac), focal_side(width, keep_frac)
    top = _randint(height - sh + 1, (batch,), generator, device)
    left = _randint(width - sw + 1, (batch,), generator, device)
    ys = torch.arange(height, device=device).view(1, -1)
    xs = torch.arange(width, device=device).view(1, -1)
    in_y = (ys >= top.view(-1, 1)) & (ys < top.view(-1, 1) + sh)  # B×H
    in_x = (xs >= left.view(-1, 1)) & (xs < left.view(-1, 1) + sw)  # B×W
    inside = (in_y.unsqueeze(2) & in_x.unsqueeze(1)).unsqueeze(1)
    return (inside if noise_inside else ~inside), top, left


def _place_patch(patch: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """B×C×H×W image whose window at (top, left) holds ``patch`` (B×C×h×w); clamped outside."""
    b = top.shape[0]
    ph, pw = patch.shape[-2:]
    iy = (torch.arange(height, device=top.device).view(1, -1) - top.view(-1, 1)).clamp(0, max(ph - 1, 0))
    ix = (torch.arange(width, device=top.device).view(1, -1) - left.view(-1, 1)).clamp(0, max(pw - 1, 0))
    bi = torch.arange(b, device=top.device).view(-1, 1, 1)
    return patch[bi, :, iy.unsqueeze(2), ix.unsqueeze(1)].permute(0, 3, 1, 2)  # B×H×W×C → B×C×H×W


def _focal_noise(shape, side_h: int, side_w: int, top, left, noise_inside: bool, std: float,
                 noise_per_image: bool, generator, device, dtype) -> torch.Tensor:
    """Noise for focal masking, faithful to the reference: inside (``neg``) a side×side patch
    aligned with the window (one per batch unless ``noise_per_image``); outside (``pos``) fresh
    noise for every image."""
    b, c, h, w = shape
    if not noise_inside:
        return draw_noise_patch(c, h, w, std, b, generator, device, dtype)
    patch = draw_noise_patch(c, max(side_h, 1), max(side_w, 1), std, b if noise_per_image else None,
                             generator, device, dtype)
    return _place_patch(patch.expand(b, c, -1, -1), top, left, h, w)


def focal_mask(x: torch.Tensor, keep_frac: float, noise_inside: bool, noise_std: float,
               generator: Optional[torch.Generator] = None, *, noise_per_image: bool = False
               ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Focal masking: a random square window of side round(keep_frac·S); noise outside it
    (``pos``: keep_frac 0.893) or inside it (``neg``: keep_frac 0.580).

    Args:
        x: B×C×H×W images (not modified).
    Returns:
        (masked x B×C×H×W, pixel mask B×C×H×W bool).
    """
    _check_images(x)
    b, c, h, w = x.shape
    win, top, left = focal_window_mask(b, h, w, keep_frac, noise_inside, generator, x.device)
    noise = _focal_noise(x.shape, focal_side(h, keep_frac), focal_side(w, keep_frac), top, left,
                         noise_inside, noise_std, noise_per_image, generator, x.device, x.dtype)
    pix = win.expand(b, c, h, w)
    return torch.where(pix, noise, x), pix


# --------------------------------------------------------------------------------------------
# fill and the full operator


def fill(x: torch.Tensor, pixel_mask: torch.Tensor, strategy: str = "hp", *, noise: Optional[torch.Tensor] = None,
         blur_kernel: int = 31, blur_sigma: float = 10.0) -> torch.Tensor:
    """Replace the masked pixels of x (``sgm_strategy``).

    * ``hp``: masked pixels take ``noise`` (broadcastable to x); the caller has already
      high-passed the view (:func:`harl.data.filters.highpass`).
    * ``blur``: GaussBlur(blur_kernel, blur_sigma) of the same (un-filtered) view.
    * ``mean``: the per-image, per-channel mean of the view.

    Args:
        x: B×C×H×W; pixel_mask: bool broadcastable to x (B×1×H×W or B×C×H×W).
    Returns:
        B×C×H×W (x is not modified).
    """
    _check_images(x)
    source = FILL_STRATEGIES.get(strategy)(x, noise, blur_kernel, blur_sigma)
    return torch.where(pixel_mask.bool(), source.to(x.dtype), x)


def sgm_mask_batch(x: torch.Tensor, fg_cells: torch.Tensor, cfg: Optional[SGMMaskConfig] = None,
                   mode: str = "pos", generator: Optional[torch.Generator] = None
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """SGM's masking operator on a batch (docs/methods/sgm.md "Masking operator").

    Per image: with p ``focal_prob`` focal masking (window 0.893·S, noise outside for ``pos``;
    0.580·S, noise inside for ``neg``); otherwise r ~ U[ratio], n_fg / n_bg cells
    (:func:`sgm_cell_counts`; ``neg`` masks fg cells only), spatial with p ``spatial_prob``
    (same cells in all channels) else channel-wise (each channel its own cells, same counts).
    Fill: ``hp`` → N(0, std²) noise, cell patches drawn once per batch (separate patches for
    spatial and channel-wise images, as the reference) unless ``noise_per_image``; ``blur`` /
    ``mean`` → :func:`fill` (x is then the un-filtered view).

    Draw order (fixed; it depends on the drawn coins, never on x or fg_cells): focal coin,
    spatial coin, r, cell scores, window position, then (``hp``) the spatial and channel-wise
    cell patches and the focal noise (``neg``: one window-sized patch per batch or per image;
    ``pos``: a fresh full-size field for each focal image only).

    Args:
        x: B×C×H×W views (``hp``: already high-passed); fg_cells: B×G×G bool saliency.
        cfg: :class:`SGMMaskConfig` (defaults of docs/methods/sgm.md); mode: ``pos`` | ``neg``.
    Returns:
        (masked x B×C×H×W, pixel mask B×C×H×W bool, True = filled).
    """
    cfg = SGMMaskConfig() if cfg is None else cfg
    spec = MASK_MODES.get(mode)
    _check_images(x)
    fg = _check_fg(fg_cells).to(x.device)
    b, c, h, w = x.shape
    g = fg.shape[-1]
    if fg.shape[0] != b:
        raise ValueError(f"fg_cells has batch {fg.shape[0]}, images have {b}")
    if g != cfg.grid_size:
        raise ValueError(f"fg_cells is {g}×{g} but method_kwargs.grid_size is {cfg.grid_size}")
    dev = x.device
    std = float(getattr(cfg, spec.noise_std_key))
    keep = float(getattr(cfg, spec.focal_frac_key))

    focal = _rand((b,), generator, dev) < cfg.focal_prob
    cells, spatial = sample_noise_cells(fg, getattr(cfg, spec.ratio_key), cfg.fg_cap, mode, cfg.spatial_prob,
                                        c, generator)
    win, top, left = focal_window_mask(b, h, w, keep, spec.focal_noise_inside, generator, dev)
    pix = torch.where(focal.view(b, 1, 1, 1), win.expand(b, c, h, w), _cell_pixel_mask(cells, x))

    noise = None
    if cfg.sgm_strategy == "hp":
        per = b if cfg.noise_per_image else None
        ph, pw = math.ceil(h / g), math.ceil(w / g)
        spatial_patch = draw_noise_patch(c, ph, pw, std, per, generator, dev, x.dtype)
        channel_patch = draw_noise_patch(c, ph, pw, std, per, generator, dev, x.dtype)
        noise = torch.where(spatial.view(b, 1, 1, 1), tile_cell_noise(spatial_patch, h, w, g),
                            tile_cell_noise(channel_patch, h, w, g))
        # focal noise only for the focal images (drawing B full-size fields costs more than the rest)
        sel = focal.nonzero().flatten()
        if spec.focal_noise_inside:
            sh, sw = focal_side(h, keep), focal_side(w, keep)
            patch = draw_noise_patch(c, max(sh, 1), max(sw, 1), std, per, generator, dev, x.dtype)
            patch = patch.expand(b, c, -1, -1)[sel]
            noise[sel] = _place_patch(patch, top[sel], left[sel], h, w)
        else:
            noise[sel] = draw_noise_patch(c, h, w, std, sel.numel(), generator, dev, x.dtype)
    out = fill(x, pix, cfg.sgm_strategy, noise=noise, blur_kernel=cfg.fill_blur_kernel,
               blur_sigma=cfg.fill_blur_sigma)
    return out, pix


# --------------------------------------------------------------------------------------------
# loss side


def hard_negative_logits(q: torch.Tensor, t: torch.Tensor, scale: float = 2.0, temperature: float = 0.2) -> torch.Tensor:
    """SGM hard-negative logits ``α·q̂·t̂_m / T`` (α applied before /T).

    The same numbers as the extra columns of :func:`harl.losses.moco.moco_logits`; for SimCLR
    pass them as ``nt_xent_loss(..., extra_neg_logits=...)``. ``t`` is detached (hard negatives
    come from the key / stop-gradient encoder).

    Args:
        q: B×D queries; t: B×M×D hard negatives (B×D is read as M = 1).
    Returns:
        B×M logits.
    """
    if t.dim() == 2:
        t = t.unsqueeze(1)
    if q.dim() != 2 or t.dim() != 3 or t.shape[0] != q.shape[0] or t.shape[2] != q.shape[1]:
        raise ValueError(f"hard_negative_logits expects q B×D and t B×M×D, got {tuple(q.shape)} and {tuple(t.shape)}")
    qn = F.normalize(q, dim=-1)
    tn = F.normalize(t.detach(), dim=-1).to(qn.dtype)
    return scale * torch.einsum("bd,bmd->bm", qn, tn) / temperature
