"""Saliency-guided masking (SGM, WACV 2024), part 2: what fills the masked cells, and the operator.

Pure, batched tensor functions (plus an optional ``torch.Generator``) that run on the device of
their input; nothing holds state. docs/methods/sgm.md describes the procedure. This module has

* the masking hyper-parameters: :class:`SGMMaskConfig` (the ``sgm_*`` method_kwargs);
* what to put into the masked cells: :func:`draw_noise_patch`, :func:`tile_cell_noise`,
  :func:`apply_cell_noise`, :func:`focal_mask`, :func:`fill` (:data:`FILL_STRATEGIES`);
* the whole per-image procedure: :func:`sgm_mask_batch` with a :class:`SGMMaskConfig`.

Cells, saliency and the choice of cells are in :mod:`harl.ops.sgm_cells` (its docstring describes
the cell geometry and the randomness contract, which hold here too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Callable, Mapping, Optional, Tuple

import torch

from harl.ops.filters import gaussian_blur
from harl.ops.sgm_cells import (
    MASK_MODES, _check_fg, _rand, _randint, _randn, cell_offsets, cells_to_pixels, sample_noise_cells,
)
from harl.registry import Registry

__all__ = [
    "SGMMaskConfig", "FILL_STRATEGIES",
    "draw_noise_patch", "tile_cell_noise", "apply_cell_noise",
    "focal_side", "focal_window_mask", "focal_mask", "fill", "sgm_mask_batch",
]


# --------------------------------------------------------------------------------------------
# configuration and fill strategies


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
      high-passed the view (:func:`harl.ops.filters.highpass`).
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
