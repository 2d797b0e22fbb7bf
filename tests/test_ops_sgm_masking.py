"""SGM masking (harl.ops.sgm_masking; docs/methods/sgm.md): noise, focal windows, fills, the full operator."""

from __future__ import annotations

import pytest
import torch

from harl.ops.filters import gaussian_blur
from harl.ops.sgm_cells import cells_to_pixels, saliency_from_activation, sgm_cell_counts
from harl.ops.sgm_masking import (
    SGMMaskConfig, apply_cell_noise, fill, focal_mask, focal_side, focal_window_mask, sgm_mask_batch,
    tile_cell_noise,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------ noise / focal / fill


def test_apply_cell_noise_spatial_and_channel_wise():
    x = torch.rand(4, 3, 64, 64, generator=gen(7))
    cells = torch.zeros(4, 8, 8, dtype=torch.bool)
    cells[:, 1, 2] = True
    cells[2, 7, 7] = True
    out, pix = apply_cell_noise(x, cells, 0.18, generator=gen(8))
    assert pix.shape == (4, 3, 64, 64) and torch.equal(out[~pix], x[~pix])
    patch = out[0, :, 8:16, 16:24]
    for b in range(4):  # one patch shared by the batch and by every cell
        assert torch.equal(out[b, :, 8:16, 16:24], patch)
    assert torch.equal(out[2, :, 56:64, 56:64], patch)
    per, _ = apply_cell_noise(x, cells, 0.18, noise_per_image=True, generator=gen(8))
    assert not torch.equal(per[0, :, 8:16, 16:24], per[1, :, 8:16, 16:24])
    # channel-wise: channel c's cells get channel c of the patch
    ch = torch.zeros(1, 3, 8, 8, dtype=torch.bool)
    ch[0, 0, 0, 0] = ch[0, 1, 3, 3] = ch[0, 2, 5, 1] = True
    noise = torch.randn(3, 8, 8, generator=gen(9))
    out2, pix2 = apply_cell_noise(x[:1], ch, noise=noise)
    assert pix2.sum() == 3 * 64
    assert torch.equal(out2[0, 0, 0:8, 0:8], noise[0]) and torch.equal(out2[0, 1, 24:32, 24:32], noise[1])
    assert torch.equal(out2[0, 2, 40:48, 8:16], noise[2]) and torch.equal(out2[0, 1, 0:8, 0:8], x[0, 1, 0:8, 0:8])


def test_tile_cell_noise_uneven_cells():
    patch = torch.arange(100.0).view(1, 10, 10)
    tiled = tile_cell_noise(patch, 64, 64, 7)
    assert tiled.shape == (1, 64, 64)
    assert torch.equal(tiled[0, :10, :10], patch[0]) and torch.equal(tiled[0, 10:19, 10:19], patch[0, :9, :9])


@pytest.mark.parametrize("size,frac,side", [(224, 0.893, 200), (224, 0.580, 130), (64, 0.893, 57), (64, 0.580, 37)])
def test_focal_window_sizes(size, frac, side):
    assert focal_side(size, frac) == side


@pytest.mark.parametrize("noise_inside,frac", [(False, 0.893), (True, 0.580)])
def test_focal_mask_placement(noise_inside, frac):
    x = torch.rand(64, 3, 64, 64, generator=gen(10))
    out, pix = focal_mask(x, frac, noise_inside, 0.18, gen(11))
    side = focal_side(64, frac)
    window = pix[:, 0] if noise_inside else ~pix[:, 0]
    assert torch.equal(pix, pix[:, :1].expand_as(pix))
    assert torch.equal(out[~pix], x[~pix]) and not torch.equal(out[pix], x[pix])
    tops = []
    for b in range(64):
        rows = window[b].any(1).nonzero().flatten()
        cols = window[b].any(0).nonzero().flatten()
        assert window[b].sum() == side * side
        assert rows[-1] - rows[0] + 1 == side and cols[-1] - cols[0] + 1 == side
        assert window[b, rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()
        tops.append(int(rows[0]))
    assert min(tops) >= 0 and max(tops) <= 64 - side and len(set(tops)) > 1
    if noise_inside:  # the neg window holds one patch shared by the batch (reference behaviour)
        t0, l0 = (window[0].any(1).nonzero()[0, 0], window[0].any(0).nonzero()[0, 0])
        t1, l1 = (window[1].any(1).nonzero()[0, 0], window[1].any(0).nonzero()[0, 0])
        assert torch.equal(out[0, :, t0:t0 + side, l0:l0 + side], out[1, :, t1:t1 + side, l1:l1 + side])


def test_focal_window_positions_cover_range():
    m, top, left = focal_window_mask(500, 16, 16, 0.58, True, gen(12))
    side = focal_side(16, 0.58)
    assert top.min() == 0 and top.max() == 16 - side and left.min() == 0 and left.max() == 16 - side


def test_fill_strategies():
    x = torch.rand(2, 3, 32, 32, generator=gen(13))
    m = torch.zeros(2, 1, 32, 32, dtype=torch.bool)
    m[:, :, 4:12, 8:20] = True
    mb = m.expand_as(x)
    blur = gaussian_blur(x, 31, 10.0)
    out = fill(x, m, "blur")
    assert torch.equal(out[mb], blur[mb]) and torch.equal(out[~mb], x[~mb])
    out = fill(x, m, "mean")
    mean = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    assert torch.equal(out[mb], mean[mb])
    noise = torch.randn(2, 3, 32, 32, generator=gen(14))
    assert torch.equal(fill(x, m, "hp", noise=noise)[mb], noise[mb])
    with pytest.raises(ValueError):
        fill(x, m, "hp")
    with pytest.raises(KeyError, match="did you mean 'blur'"):
        fill(x, m, "blurr")


# ------------------------------------------------------------------------------------ full operator


def _cell_aligned(pix: torch.Tensor, g: int) -> torch.Tensor:
    """B: the pixel mask is constant inside every cell of the G×G grid (needs G | S)."""
    b, c, h, w = pix.shape
    blocks = pix.view(b, c, g, h // g, g, w // g)
    return (blocks.all(dim=(3, 5)) | ~blocks.any(dim=(3, 5))).flatten(1).all(1)


@pytest.mark.parametrize("mode", ["pos", "neg"])
@pytest.mark.parametrize("strategy", ["hp", "blur", "mean"])
def test_sgm_mask_batch_runs_and_is_reproducible(mode, strategy):
    x = torch.rand(8, 3, 64, 64, generator=gen(15))
    x0 = x.clone()
    fg = saliency_from_activation(torch.rand(8, 32, 2, 2, generator=gen(16)), 8)
    cfg = SGMMaskConfig(grid_size=8, sgm_strategy=strategy)
    a, pa = sgm_mask_batch(x, fg, cfg, mode, gen(17))
    b, pb = sgm_mask_batch(x, fg, cfg, mode, gen(17))
    c, _ = sgm_mask_batch(x, fg, cfg, mode, gen(18))
    assert torch.equal(x, x0)  # input untouched
    assert torch.equal(a, b) and torch.equal(pa, pb) and not torch.equal(a, c)
    assert a.shape == x.shape and pa.shape == x.shape and pa.dtype == torch.bool
    assert torch.isfinite(a).all() and torch.equal(a[~pa], x[~pa])
    d, _ = sgm_mask_batch(x, fg, cfg, mode)  # global RNG
    assert d.shape == x.shape


def test_sgm_mask_batch_cells_match_counts():
    b, g = 64, 7
    x = torch.rand(b, 3, 64, 64, generator=gen(19))
    fg = torch.rand(b, g, g, generator=gen(20)) < 0.5
    for mode, rng in [("pos", (0.05, 0.25)), ("neg", (0.4, 0.7))]:
        cfg = SGMMaskConfig(focal_prob=0.0)
        out, pix = sgm_mask_batch(x, fg, cfg, mode, gen(21))
        # replay the documented draw order: focal coin, spatial coin, r
        rep = gen(21)
        torch.rand(b, generator=rep)
        spatial = torch.rand(b, generator=rep) < cfg.spatial_prob
        ratios = rng[0] + (rng[1] - rng[0]) * torch.rand(b, generator=rep, dtype=torch.float64)
        n_fg, n_bg = sgm_cell_counts(fg, ratios, 0.55, mode)
        # recover the cell map from the pixel mask (cell (i,j) ↔ pixel at its first row/col)
        firsts = torch.tensor([0, 10, 19, 28, 37, 46, 55])
        cells = pix[:, :, firsts][:, :, :, firsts]
        assert torch.equal(cells_to_pixels(cells, 64, 64), pix)
        fgc = fg.unsqueeze(1)
        assert torch.equal((cells & fgc).flatten(2).sum(2), n_fg.view(b, 1).expand(b, 3))
        assert torch.equal((cells & ~fgc).flatten(2).sum(2), n_bg.view(b, 1).expand(b, 3))
        same = (cells == cells[:, :1]).flatten(1).all(1)
        assert torch.equal(same | ~spatial, torch.ones(b, dtype=torch.bool))
        noise_std = getattr(cfg, f"{mode}_noise_std")
        assert out[pix].std().item() == pytest.approx(noise_std, rel=0.25)


def test_sgm_mask_batch_probabilities():
    b, g = 2000, 8
    x = torch.zeros(b, 3, 32, 32)
    fg = torch.ones(b, g, g, dtype=torch.bool)
    _, pix = sgm_mask_batch(x, fg, SGMMaskConfig(grid_size=g), "neg", gen(22))
    focal = ~_cell_aligned(pix, g)  # the 19-px neg window is never cell-aligned
    assert focal.float().mean().item() == pytest.approx(0.2, abs=0.03)
    cells_same = (pix == pix[:, :1]).flatten(1).all(1)
    assert cells_same[~focal].float().mean().item() == pytest.approx(0.3, abs=0.04)


def test_hp_cell_noise_shared_across_batch():
    b, g = 16, 8
    x = torch.zeros(b, 3, 64, 64)
    fg = torch.rand(b, g, g, generator=gen(23)) < 0.5
    cfg = SGMMaskConfig(grid_size=g, focal_prob=0.0, spatial_prob=1.0)
    out, pix = sgm_mask_batch(x, fg, cfg, "pos", gen(24))
    blocks = out.view(b, 3, g, 8, g, 8).permute(0, 2, 4, 1, 3, 5).reshape(b * g * g, 3, 8, 8)
    masked = pix.view(b, 3, g, 8, g, 8)[:, 0, :, 0, :, 0].reshape(-1)
    chosen = blocks[masked]
    assert chosen.shape[0] > 10 and torch.equal(chosen, chosen[:1].expand_as(chosen))
    # spatial and channel-wise images use two different batch patches (as the reference)
    cfg_half = SGMMaskConfig(grid_size=g, focal_prob=0.0, spatial_prob=0.5)
    out3, pix3 = sgm_mask_batch(x, fg, cfg_half, "pos", gen(25))
    rep = gen(25)
    torch.rand(b, generator=rep)
    spatial = torch.rand(b, generator=rep) < 0.5
    assert spatial.any() and (~spatial).any()
    c3 = pix3.view(b, 3, g, 8, g, 8)[:, :, :, 0, :, 0]  # B×3×G×G
    blk = out3.view(b, 3, g, 8, g, 8).permute(0, 1, 2, 4, 3, 5)  # B×3×G×G×8×8
    sp = blk[spatial][c3[spatial]]
    ch0 = blk[~spatial][:, 0][c3[~spatial][:, 0]]
    assert sp.shape[0] > 0 and ch0.shape[0] > 0
    assert torch.equal(ch0, ch0[:1].expand_as(ch0)) and not torch.equal(ch0[0], blk[spatial][:, 0][c3[spatial][:, 0]][0])
    cfg2 = SGMMaskConfig(grid_size=g, focal_prob=0.0, spatial_prob=1.0, noise_per_image=True)
    out2, pix2 = sgm_mask_batch(x, fg, cfg2, "pos", gen(24))
    blocks2 = out2.view(b, 3, g, 8, g, 8).permute(0, 2, 4, 1, 3, 5)  # B×G×G×3×8×8
    masked2 = pix2.view(b, 3, g, 8, g, 8)[:, 0, :, 0, :, 0]  # B×G×G
    firsts = []
    for i in range(b):
        mine = blocks2[i][masked2[i]]
        if mine.shape[0] == 0:
            continue
        assert torch.equal(mine, mine[:1].expand_as(mine))  # one patch per image
        firsts.append(mine[0])
    assert len(firsts) > 2 and not torch.equal(firsts[0], firsts[1])  # ... differing across images


def test_config_from_kwargs_and_errors():
    cfg = SGMMaskConfig.from_kwargs({"pos_ratio": [0.1, 0.2], "grid_size": 8, "proj_hidden_dim": 2048})
    assert cfg.pos_ratio == (0.1, 0.2) and cfg.grid_size == 8
    with pytest.raises(ValueError, match="neg_ratio"):
        SGMMaskConfig(neg_ratio=(0.7, 0.4))
    with pytest.raises(KeyError, match="sgm_strategy"):
        SGMMaskConfig(sgm_strategy="zeros")
    x = torch.rand(2, 3, 64, 64)
    with pytest.raises(ValueError, match="grid_size"):
        sgm_mask_batch(x, torch.ones(2, 8, 8, dtype=torch.bool), SGMMaskConfig(), "pos")
    with pytest.raises(KeyError, match="did you mean 'neg'"):
        sgm_mask_batch(x, torch.ones(2, 7, 7, dtype=torch.bool), SGMMaskConfig(), "negg")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_matches_cpu_with_cpu_generator():
    x = torch.rand(4, 3, 64, 64, generator=gen(25))
    fg = torch.rand(4, 7, 7, generator=gen(26)) < 0.5
    a, pa = sgm_mask_batch(x, fg, SGMMaskConfig(), "pos", gen(27))
    b, pb = sgm_mask_batch(x.cuda(), fg.cuda(), SGMMaskConfig(), "pos", gen(27))
    assert b.device.type == "cuda" and torch.equal(pa, pb.cpu()) and torch.allclose(a, b.cpu(), atol=1e-6)


def test_sgm_mask_batch_focal_noise():
    b = 6
    x = torch.zeros(b, 3, 64, 64)
    fg = torch.ones(b, 7, 7, dtype=torch.bool)
    cfg = SGMMaskConfig(focal_prob=1.0)
    out, pix = sgm_mask_batch(x, fg, cfg, "neg", gen(30))
    side = focal_side(64, cfg.neg_focal_frac)
    windows = []
    for i in range(b):
        assert pix[i].sum() == 3 * side * side
        t = int(pix[i, 0].any(1).nonzero()[0, 0])
        l = int(pix[i, 0].any(0).nonzero()[0, 0])
        windows.append(out[i, :, t:t + side, l:l + side])
    assert all(torch.equal(w, windows[0]) for w in windows)  # one neg patch for the batch
    assert windows[0].std().item() == pytest.approx(cfg.neg_noise_std, rel=0.1)
    out, pix = sgm_mask_batch(x, fg, cfg, "pos", gen(31))
    side = focal_side(64, cfg.pos_focal_frac)
    assert torch.equal(pix.flatten(1).sum(1), torch.full((b,), 3 * (64 * 64 - side * side)))
    assert out[pix].std().item() == pytest.approx(cfg.pos_noise_std, rel=0.1)
    both = pix[0] & pix[1]
    assert both.sum() > 100 and not torch.equal(out[0][both], out[1][both])  # fresh noise per image
