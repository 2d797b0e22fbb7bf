"""SGM cells (harl.ops.sgm_cells; docs/methods/sgm.md): cell geometry, saliency rules, cell counts and draws."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from harl.ops.sgm_cells import (
    cell_index, cells_to_pixels, draw_cells, saliency_from_activation, saliency_from_mask, sample_cell_masks,
    sample_noise_cells, sgm_cell_counts,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


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
