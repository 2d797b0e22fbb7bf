"""Saliency-guided masking operators (docs/methods/sgm.md): filters, saliency, counts, masks, logits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from harl.data.filters import HighPass, gaussian_blur, gaussian_kernel1d, gaussian_kernel2d, highpass
from harl.data.masking_ops import (
    SGMMaskConfig, apply_cell_noise, cell_index, cells_to_pixels, draw_cells, fill, focal_mask,
    focal_side, focal_window_mask, hard_negative_logits, saliency_from_activation, saliency_from_mask,
    sample_cell_masks, sample_noise_cells, sgm_cell_counts, sgm_mask_batch, tile_cell_noise,
)
from harl.losses.moco import moco_logits


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------ filters


def test_gaussian_kernel_matches_formula():
    k = gaussian_kernel2d(5, 1.5, dtype=torch.float64)
    d = np.arange(5) - 2.0
    g = np.exp(-d ** 2 / (2 * 1.5 ** 2))
    want = np.outer(g, g) / np.outer(g, g).sum()
    np.testing.assert_allclose(k.numpy(), want, rtol=1e-12)
    assert gaussian_kernel1d(11, 5.0).sum().item() == pytest.approx(1.0, abs=1e-6)
    for bad in [(4, 1.0), (0, 1.0), (3, 0.0)]:
        with pytest.raises(ValueError):
            gaussian_kernel2d(*bad)


def _naive_blur(img: np.ndarray, k: int, sigma: float) -> np.ndarray:
    """Reflect-pad (numpy 'reflect' = no edge repetition) and a plain 2-D correlation loop."""
    kern = gaussian_kernel2d(k, sigma, dtype=torch.float64).numpy()
    p = k // 2
    out = np.zeros_like(img)
    for c in range(img.shape[0]):
        padded = np.pad(img[c], p, mode="reflect")
        for i in range(img.shape[1]):
            for j in range(img.shape[2]):
                out[c, i, j] = (padded[i:i + k, j:j + k] * kern).sum()
    return out


def test_gaussian_blur_matches_naive_reflect_convolution():
    x = torch.rand(2, 3, 12, 9, generator=gen(1), dtype=torch.float64)
    got = gaussian_blur(x, 5, 1.3)
    for b in range(2):
        np.testing.assert_allclose(got[b].numpy(), _naive_blur(x[b].numpy(), 5, 1.3), atol=1e-12)
    hp = highpass(x, 5, 1.3)
    np.testing.assert_allclose(hp[1].numpy(), x[1].numpy() - _naive_blur(x[1].numpy(), 5, 1.3), atol=1e-12)


def test_highpass_of_constant_is_exactly_zero_and_ramp_is_zero_inside():
    for value in (0.1, -1.7, 3.14159):
        const = torch.full((2, 3, 64, 64), value)
        assert torch.equal(highpass(const), torch.zeros_like(const))
        assert torch.equal(gaussian_blur(const, 31, 10.0), const)
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    ramp = (0.03 * xs - 0.02 * ys + 0.5).expand(2, 3, 64, 64).contiguous()
    hp = highpass(ramp, 11, 5.0)
    assert hp[..., 5:-5, 5:-5].abs().max() < 1e-5  # a symmetric kernel preserves linear functions
    assert hp.abs().max() > 1e-3  # ... but reflect padding does not, at the border


def test_highpass_module_and_small_images():
    hp = HighPass(11, 5.0)
    assert len(list(hp.parameters())) == 0 and len(list(hp.buffers())) == 0
    x = torch.rand(3, 32, 32, generator=gen(2))
    assert torch.allclose(hp(x), highpass(x.unsqueeze(0))[0])
    assert hp(x.unsqueeze(0)).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError):
        hp(torch.rand(32, 32))
    tiny = torch.rand(1, 3, 8, 8, generator=gen(3))  # 31-tap blur on 8 px: replicate fallback
    out = gaussian_blur(tiny, 31, 10.0)
    assert out.shape == tiny.shape and torch.isfinite(out).all()


# ------------------------------------------------------------------------------------ saliency


def _buggy_reference_rule(a: np.ndarray, std_factor: float = 0.6) -> np.ndarray:
    """The reference implementation's rule, kept ONLY here as a regression witness: it compares a
    row-sorted copy of A (np.sort sorts along the last axis) with the threshold, and visits the
    cells in the order of a global argsort — so the result is 'sorted row ≥ thr'."""
    g = a.shape[0]
    sorted_a = np.sort(a)
    order = np.dstack(np.unravel_index(np.argsort(-a.ravel()), (g, g)))[0]
    mean, std = sorted_a.mean(), np.std(sorted_a)
    fg = np.zeros((g, g), dtype=bool)
    for i, j in order:
        if sorted_a[i, j] >= mean or abs(sorted_a[i, j] - mean) <= std_factor * std:
            fg[i, j] = True
    return fg


HAND_A = np.array([[5.0, 5.0, 0.0],
                   [5.0, 5.0, 5.0],
                   [1.0, 5.0, 5.0]])
# mean = 36/9 = 4; population var = 176/9 − 16 = 32/9, std = 1.8856; thr = 4 − 0.6·1.8856 = 2.869
# → background = the cells holding 0 (0,2) and 1 (2,0).
HAND_FG = np.array([[1, 1, 0],
                    [1, 1, 1],
                    [0, 1, 1]], dtype=bool)


def test_fg_rule_on_hand_example():
    # two channels whose sum is HAND_A
    act = torch.tensor(np.stack([HAND_A - 1.0, np.ones((3, 3))]))[None]
    fg = saliency_from_activation(act, grid_size=3, std_factor=0.6)
    assert fg.shape == (1, 3, 3) and fg.dtype == torch.bool
    assert np.array_equal(fg[0].numpy(), HAND_FG)


def test_buggy_reference_rule_picks_different_cells():
    buggy = _buggy_reference_rule(HAND_A)
    # row 0 sorted is [0, 5, 5]: the buggy rule drops (0,0) and keeps the empty cell (0,2)
    assert np.array_equal(buggy, np.array([[0, 1, 1], [1, 1, 1], [0, 1, 1]], dtype=bool))
    assert not np.array_equal(buggy, HAND_FG)
    ours = saliency_from_activation(torch.tensor(HAND_A)[None, None], grid_size=3)[0].numpy()
    assert np.array_equal(ours, HAND_FG) and not np.array_equal(ours, buggy)


def test_fg_rule_uses_population_std():
    a = torch.tensor([[0.0, 10.0], [10.0, 10.0]])[None, None]
    # mean 7.5; population std √18.75 = 4.330 → thr(1.6) = 0.572 > 0: (0,0) is background;
    # the sample std (5.0) would give thr = −0.5 and call it foreground.
    fg = saliency_from_activation(a, grid_size=2, std_factor=1.6)[0]
    assert fg.tolist() == [[False, True], [True, True]]


def test_fg_rule_matches_numpy_on_random_maps_and_pools():
    rng = np.random.default_rng(0)
    act = rng.random((16, 8, 7, 7))
    fg = saliency_from_activation(torch.tensor(act, dtype=torch.float32), 7, 0.6).numpy()
    for b in range(16):
        a = act[b].sum(0)
        assert np.array_equal(fg[b], a >= a.mean() - 0.6 * np.std(a))
        assert fg[b].any()
    # a 14×14 map is average-pooled over 2×2 blocks first
    big = rng.random((2, 4, 14, 14))
    fg14 = saliency_from_activation(torch.tensor(big), 7).numpy()
    for b in range(2):
        a = big[b].sum(0).reshape(7, 2, 7, 2).mean(axis=(1, 3))
        assert np.array_equal(fg14[b], a >= a.mean() - 0.6 * np.std(a))
    # constant map: everything is foreground
    assert saliency_from_activation(torch.full((1, 3, 7, 7), 0.1), 7).all()


def test_saliency_from_mask_matches_loop():
    rng = np.random.default_rng(1)
    for size, g in [(64, 8), (64, 7), (32, 5)]:
        m = (rng.random((3, 1, size, size)) < 0.5).astype(np.float32)
        m[0, 0, : size // 2] = 1.0
        got = saliency_from_mask(torch.tensor(m), g, 0.5).numpy()
        cell = [s * g // size for s in range(size)]
        for b in range(3):
            want = np.zeros((g, g), dtype=bool)
            for i in range(g):
                for j in range(g):
                    rows = [s for s in range(size) if cell[s] == i]
                    cols = [s for s in range(size) if cell[s] == j]
                    want[i, j] = m[b, 0][np.ix_(rows, cols)].mean() > 0.5
            assert np.array_equal(got[b], want)
    with pytest.raises(ValueError):
        saliency_from_mask(torch.zeros(2, 3, 8, 8), 4)


def test_cell_partition():
    assert cell_index(224, 7).bincount().tolist() == [32] * 7
    assert cell_index(64, 7).bincount().tolist() == [10, 9, 9, 9, 9, 9, 9]
    cells = torch.zeros(1, 7, 7, dtype=torch.bool)
    cells[0, 1, 2] = True
    pix = cells_to_pixels(cells, 224, 224)
    assert pix.sum() == 32 * 32 and pix[0, 32:64, 64:96].all()


# ------------------------------------------------------------------------------------ counts


def _naive_counts(fg_map: np.ndarray, r: float, cap: float, mode: str):
    g2 = fg_map.size
    nf = int(fg_map.sum())
    n_fg = round(min(r * (nf / g2), cap) * g2)
    n_bg = int(g2 * r) - n_fg if mode == "pos" else 0
    return min(max(n_fg, 0), nf), min(max(n_bg, 0), g2 - nf)


@pytest.mark.parametrize("mode,ratio_range", [("pos", (0.05, 0.25)), ("neg", (0.4, 0.7)), ("pos", (0.0, 1.0))])
@pytest.mark.parametrize("g", [7, 8])
def test_exact_counts_on_random_saliency(mode, ratio_range, g):
    torch.manual_seed(0)
    b = 300
    fg = torch.rand(b, g, g) < torch.rand(b, 1, 1)  # fg densities from 0 to 1
    fg[0] = True   # all foreground
    fg[1] = False  # all background
    lo, hi = ratio_range
    ratios = lo + (hi - lo) * torch.rand(b, dtype=torch.float64)
    n_fg, n_bg = sgm_cell_counts(fg, ratios, 0.55, mode)
    masks = sample_cell_masks(fg, ratio_range, 0.55, mode, gen(5), ratios=ratios)
    assert masks.shape == (b, g, g) and masks.dtype == torch.bool
    got_fg = (masks & fg).flatten(1).sum(1)
    got_bg = (masks & ~fg).flatten(1).sum(1)
    for i in range(b):
        want = _naive_counts(fg[i].numpy(), ratios[i].item(), 0.55, mode)
        assert (n_fg[i].item(), n_bg[i].item()) == want
        assert (got_fg[i].item(), got_bg[i].item()) == want
    assert got_fg[1] == 0 and got_bg[0] == 0
    if mode == "neg":
        assert got_bg.sum() == 0


def test_counts_clamp_and_cap():
    g = 7
    all_fg = torch.ones(1, g, g, dtype=torch.bool)
    all_bg = torch.zeros(1, g, g, dtype=torch.bool)
    r = torch.tensor([0.7], dtype=torch.float64)
    # all fg, r = 0.7: min(0.7, 0.55)·49 = 26.95 → 27 fg; ⌊34.3⌋ − 27 = 7 bg wanted, none available
    assert [int(v) for v in sgm_cell_counts(all_fg, r, 0.55, "pos")] == [27, 0]
    assert [int(v) for v in sgm_cell_counts(all_bg, r, 0.55, "pos")] == [0, 34]
    assert [int(v) for v in sgm_cell_counts(all_bg, r, 0.55, "neg")] == [0, 0]
    # round half to even, as Python: 0.5·(5/49)·49 = 2.5 → 2
    five = torch.zeros(1, g, g, dtype=torch.bool)
    five.view(-1)[:5] = True
    assert int(sgm_cell_counts(five, torch.tensor([0.5], dtype=torch.float64), 0.55, "pos")[0]) == round(0.5 * (5 / 49) * 49)
    for fg in (all_fg, all_bg):
        m = sample_cell_masks(fg.expand(50, g, g), (0.0, 1.0), 0.55, "pos", gen(0))
        assert m.shape == (50, g, g)


def test_drawn_ratios_stay_in_range():
    fg = torch.rand(500, 7, 7, generator=gen(1)) < 0.4
    m = sample_cell_masks(fg, (0.05, 0.25), 0.55, "pos", gen(2))
    n = m.flatten(1).sum(1)
    assert n.max() <= math.floor(49 * 0.25) and n.min() >= 0
    assert n.float().mean() > 3  # ≈ 49·0.15


def test_cell_choice_is_uniform():
    fg = torch.zeros(4000, 4, 4, dtype=torch.bool)
    fg[:, :2] = True  # 8 fg cells, 8 bg cells
    n_fg = torch.full((4000,), 2)
    n_bg = torch.full((4000,), 6)
    m = draw_cells(fg, n_fg, n_bg, generator=gen(3)).float().mean(0)
    assert torch.allclose(m[:2], torch.full((2, 4), 2 / 8), atol=0.03)
    assert torch.allclose(m[2:], torch.full((2, 4), 6 / 8), atol=0.03)


def test_channel_wise_cells_are_independent_with_exact_counts():
    b, g = 200, 7
    fg = torch.rand(b, g, g, generator=gen(4)) < 0.5
    ratios = 0.2 + 0.5 * torch.rand(b, dtype=torch.float64, generator=gen(5))
    n_fg, n_bg = sgm_cell_counts(fg, ratios, 0.55, "pos")
    cells, spatial = sample_noise_cells(fg, (0.2, 0.7), 0.55, "pos", spatial_prob=0.0, channels=3,
                                        generator=gen(6), ratios=ratios)
    assert cells.shape == (b, 3, g, g) and not spatial.any()
    fgc = fg.unsqueeze(1)
    assert torch.equal((cells & fgc).flatten(2).sum(2), n_fg.view(b, 1).expand(b, 3))
    assert torch.equal((cells & ~fgc).flatten(2).sum(2), n_bg.view(b, 1).expand(b, 3))
    differ = (cells[:, 0] != cells[:, 1]).flatten(1).any(1)
    assert differ.float().mean() > 0.9  # channels pick their own cells
    cells1, spatial1 = sample_noise_cells(fg, (0.2, 0.7), 0.55, "pos", spatial_prob=1.0, generator=gen(6),
                                          ratios=ratios)
    assert spatial1.all() and torch.equal(cells1, cells1[:, :1].expand_as(cells1))


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


# ------------------------------------------------------------------------------------ logits


def test_hard_negative_logits_hand_computation():
    q = torch.tensor([[3.0, 4.0]])
    t = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    # q̂ = (0.6, 0.8); α·q̂·t̂/T = 2·0.6/0.2 = 6, 2·0.8/0.2 = 8
    assert torch.allclose(hard_negative_logits(q, t, 2.0, 0.2), torch.tensor([[6.0, 8.0]]))
    assert torch.allclose(hard_negative_logits(q, t[:, 0], 2.0, 0.2), torch.tensor([[6.0]]))


def test_hard_negative_logits_agree_with_moco_logits():
    g = gen(28)
    q, k = torch.randn(5, 16, generator=g), torch.randn(5, 16, generator=g)
    queue = torch.nn.functional.normalize(torch.randn(16, 10, generator=g), dim=0)
    t = torch.randn(5, 2, 16, generator=g)
    full = moco_logits(q, k, queue, 0.2, hard_negatives=t, hard_negative_scale=2.0)
    assert torch.allclose(full[:, 11:], hard_negative_logits(q, t, 2.0, 0.2), atol=1e-6)
    qg = q.clone().requires_grad_(True)
    tg = t.clone().requires_grad_(True)
    hard_negative_logits(qg, tg).sum().backward()
    assert qg.grad is not None and tg.grad is None  # stop-gradient on the hard negatives


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
