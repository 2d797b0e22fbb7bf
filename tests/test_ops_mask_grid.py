"""harl.ops.mask_grid: mask → feature grid, masked pooling, cell geometry (docs/augmentation.md,
docs/methods/harl.md, docs/methods/hapicl.md).

Every formula is checked against a naive Python loop or a hand computation.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from harl.ops.mask_grid import (cell_centers, gap_masked_pool, mask_to_grid, masked_mean_pool, pixel_shuffle_pool,
                             spatial_positive_mask)


def _random_mask(b, s, seed, p=0.4):
    g = torch.Generator().manual_seed(seed)
    # blobby masks: a few random rectangles, stored as {0, 255} uint8 like the PNGs
    m = torch.zeros(b, 1, s, s, dtype=torch.uint8)
    for i in range(b):
        for _ in range(3):
            y0, x0 = torch.randint(0, s, (2,), generator=g).tolist()
            hh, ww = torch.randint(1, s // 2 + 1, (2,), generator=g).tolist()
            m[i, 0, y0:y0 + hh, x0:x0 + ww] = 255
    # a few isolated pixels (exercise thr 0 vs 0.5)
    noise = torch.rand(b, 1, s, s, generator=g) < 0.01
    m[noise] = 255
    return m


def _grid_loop(mask, h, w, mode, thr):
    """Naive per-cell fg fraction with adaptive pooling's bins [floor(i·S/h), ceil((i+1)·S/h))."""
    b, _, sh, sw = mask.shape
    fg = torch.zeros(b, 1, h, w, dtype=torch.float64)
    bg = torch.zeros_like(fg)
    for n in range(b):
        for i in range(h):
            y0, y1 = (i * sh) // h, -((-(i + 1) * sh) // h)
            for j in range(w):
                x0, x1 = (j * sw) // w, -((-(j + 1) * sw) // w)
                cnt = 0
                for y in range(y0, y1):
                    for x in range(x0, x1):
                        cnt += int(mask[n, 0, y, x] > 0)
                a = cnt / ((y1 - y0) * (x1 - x0))
                if mode == "soft":
                    fg[n, 0, i, j], bg[n, 0, i, j] = a, 1 - a
                else:
                    f = 1.0 if a > thr else 0.0
                    fg[n, 0, i, j], bg[n, 0, i, j] = f, 1 - f
    return fg, bg


@pytest.mark.parametrize("s,size", [(28, 7), (32, 7), (20, 5), (32, 5)])
@pytest.mark.parametrize("mode,thr", [("binary", 0.0), ("binary", 0.5), ("soft", 0.0)])
def test_mask_to_grid_matches_loop(s, size, mode, thr):
    mask = _random_mask(2, s, seed=s * 10 + size)
    fg, bg = mask_to_grid(mask, size, mode=mode, threshold=thr)
    assert fg.shape == bg.shape == (2, 1, size, size) and fg.dtype == torch.float32
    ref_fg, ref_bg = _grid_loop(mask, size, size, mode, thr)
    torch.testing.assert_close(fg.double(), ref_fg, atol=1e-6, rtol=0)
    torch.testing.assert_close(bg.double(), ref_bg, atol=1e-6, rtol=0)


def test_mask_to_grid_threshold_semantics_by_hand():
    # 14×14 → 7×7: each cell is 2×2 pixels
    m = torch.zeros(1, 1, 14, 14)
    m[0, 0, 0, 0] = 1            # cell (0,0): 1/4 covered
    m[0, 0, 0:2, 2:4] = 1        # cell (0,1): fully covered
    m[0, 0, 2, 0:2] = 1          # cell (1,0): exactly half covered
    fg0, bg0 = mask_to_grid(m, 7, "binary", 0.0)
    fg5, _ = mask_to_grid(m, 7, "binary", 0.5)
    soft, soft_bg = mask_to_grid(m, 7, "soft")
    # thr 0: any coverage → fg
    assert fg0[0, 0, 0, 0] == 1 and fg0[0, 0, 0, 1] == 1 and fg0[0, 0, 1, 0] == 1 and fg0.sum() == 3
    assert bg0.sum() == 49 - 3
    # thr 0.5: strict majority; exactly half is bg
    assert fg5[0, 0, 0, 0] == 0 and fg5[0, 0, 0, 1] == 1 and fg5[0, 0, 1, 0] == 0 and fg5.sum() == 1
    assert soft[0, 0, 0, 0] == 0.25 and soft[0, 0, 0, 1] == 1 and soft[0, 0, 1, 0] == 0.5
    torch.testing.assert_close(soft + soft_bg, torch.ones_like(soft))


def test_mask_to_grid_dtypes_agree_and_fg_is_positive():
    m = _random_mask(2, 32, seed=3)
    ref = mask_to_grid(m, 5)[0]
    for variant in (m > 0, (m > 0).float(), (m > 0).to(torch.uint8), m[:, 0]):
        torch.testing.assert_close(mask_to_grid(variant, (5, 5))[0], ref)
    # values ≤ 0 are bg (fg ⇔ > 0)
    neg = torch.full((1, 1, 10, 10), -1.0)
    assert mask_to_grid(neg, 5)[0].sum() == 0


def test_mask_to_grid_bad_input():
    m = torch.zeros(1, 1, 8, 8)
    with pytest.raises(ValueError, match="did you mean 'binary'"):
        mask_to_grid(m, 4, mode="binnary")
    with pytest.raises(ValueError, match="threshold"):
        mask_to_grid(m, 4, threshold=1.0)
    with pytest.raises(ValueError, match="B×1×H×W"):
        mask_to_grid(torch.zeros(1, 3, 8, 8), 4)


def _pool_loop(feat, m, eps, gap=False):
    b, c, h, w = feat.shape
    out = torch.zeros(b, c, dtype=torch.float64)
    for n in range(b):
        msum = sum(float(m[n, 0, i, j]) for i in range(h) for j in range(w))
        for k in range(c):
            num = sum(float(feat[n, k, i, j]) * float(m[n, 0, i, j]) for i in range(h) for j in range(w))
            out[n, k] = num / (h * w) if gap else num / (msum + eps)
    return out


@pytest.mark.parametrize("soft", [False, True])
def test_masked_pools_match_loop(soft):
    torch.manual_seed(0)
    feat = torch.randn(3, 4, 5, 5)
    fg, bg = mask_to_grid(_random_mask(3, 20, seed=7), 5, "soft" if soft else "binary", 0.0)
    for m in (fg, bg, torch.zeros_like(fg), torch.ones_like(fg)):
        torch.testing.assert_close(masked_mean_pool(feat, m, eps=1.0).double(), _pool_loop(feat, m, 1.0),
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(masked_mean_pool(feat, m, eps=0.5).double(), _pool_loop(feat, m, 0.5),
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(gap_masked_pool(feat, m).double(), _pool_loop(feat, m, 0.0, gap=True),
                                   atol=1e-5, rtol=1e-5)


def test_masked_mean_pool_by_hand():
    feat = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])       # 1×1×2×2
    m = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    assert masked_mean_pool(feat, m).item() == pytest.approx(5.0 / 3.0)   # (1+4)/(2+1): the +1 denominator
    assert gap_masked_pool(feat, m).item() == pytest.approx(5.0 / 4.0)
    assert masked_mean_pool(feat, torch.zeros_like(m)).item() == 0.0      # empty → zero vector


def test_pool_rejects_wrong_grid():
    with pytest.raises(ValueError, match="actual feature-map size"):
        masked_mean_pool(torch.randn(2, 3, 7, 7), torch.ones(2, 1, 5, 5))
    with pytest.raises(ValueError, match="actual feature-map size"):
        pixel_shuffle_pool(torch.randn(2, 8, 7, 7), torch.ones(2, 1, 7, 7))
    with pytest.raises(ValueError, match="divisible"):
        pixel_shuffle_pool(torch.randn(2, 6, 7, 7), torch.ones(2, 1, 14, 14))


def _pixel_shuffle_loop(feat, m14, eps):
    """h[(c,δ)] = Σ_ij F[(c,δ),i,j]·M14[2i+δy, 2j+δx] / (¼ΣM14 + ε), channel (c,δ) = 4c + 2δy + δx."""
    b, C, h, w = feat.shape
    out = torch.zeros(b, C, dtype=torch.float64)
    for n in range(b):
        den = float(m14[n].sum()) / 4 + eps
        for c in range(C // 4):
            for dy in range(2):
                for dx in range(2):
                    k = 4 * c + 2 * dy + dx
                    s = 0.0
                    for i in range(h):
                        for j in range(w):
                            s += float(feat[n, k, i, j]) * float(m14[n, 0, 2 * i + dy, 2 * j + dx])
                    out[n, k] = s / den
    return out


def test_pixel_shuffle_pool_matches_loop_and_depth_to_space():
    torch.manual_seed(1)
    feat = torch.randn(2, 8, 4, 4)
    m14 = mask_to_grid(_random_mask(2, 32, seed=11), 8)[0]
    out = pixel_shuffle_pool(feat, m14, eps=1.0)
    assert out.shape == (2, 8)
    torch.testing.assert_close(out.double(), _pixel_shuffle_loop(feat, m14, 1.0), atol=1e-5, rtol=1e-5)
    # second route: depth-to-space map (C/4 × 8 × 8), pool each sub-position δ with the fine mask
    shuffled = F.pixel_shuffle(feat, 2)
    den = m14.sum(dim=(1, 2, 3)) / 4 + 1.0
    parts = torch.zeros(2, 2, 2, 2)  # B × C/4 × δy × δx
    for dy in range(2):
        for dx in range(2):
            parts[:, :, dy, dx] = (shuffled[:, :, dy::2, dx::2] * m14[:, :, dy::2, dx::2]).sum(dim=(2, 3)) / den[:, None]
    torch.testing.assert_close(out, parts.reshape(2, 8), atol=1e-5, rtol=1e-5)
    # full mask: plain mean up to eps
    ones = torch.ones(2, 1, 8, 8)
    torch.testing.assert_close(pixel_shuffle_pool(feat, ones, eps=0.0), feat.mean(dim=(2, 3)), atol=1e-5, rtol=1e-5)


def test_cell_centers_by_hand_and_flip():
    coords = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.2, 0.1, 0.6, 0.5]])
    c = cell_centers(coords, 2, 2)
    assert c.shape == (2, 4, 2)
    torch.testing.assert_close(c[0], torch.tensor([[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]))
    torch.testing.assert_close(c[1], torch.tensor([[0.3, 0.2], [0.5, 0.2], [0.3, 0.4], [0.5, 0.4]]))
    # the same box flipped: x0 > x1; column c of the flipped view shows the content of column w−1−c
    flipped = torch.tensor([[0.6, 0.1, 0.2, 0.5]])
    h, w = 3, 4
    cf = cell_centers(flipped, h, w).view(h, w, 2)
    cu = cell_centers(coords[1:], h, w).view(h, w, 2)
    torch.testing.assert_close(cf, cu.flip(1))
    assert cf[0, 0, 0] == pytest.approx(0.6 - 0.05)  # column 0 sits at the box's right edge


def _spatial_loop(coords1, coords2, h, w, radius):
    b = coords1.shape[0]
    out = torch.zeros(b, h * w, h * w, dtype=torch.bool)
    for n in range(b):
        def centres(cd):
            x0, y0, x1, y1 = [float(v) for v in cd]
            return [((c + .5) * (x1 - x0) / w + x0, (r + .5) * (y1 - y0) / h + y0) for r in range(h) for c in range(w)]

        def diag(cd):
            x0, y0, x1, y1 = [float(v) for v in cd]
            return math.sqrt(((x1 - x0) / w) ** 2 + ((y1 - y0) / h) ** 2)

        c1, c2 = centres(coords1[n]), centres(coords2[n])
        scale = max(diag(coords1[n]), diag(coords2[n]))
        for i in range(h * w):
            for j in range(h * w):
                out[n, i, j] = math.dist(c1[i], c2[j]) / scale < radius
    return out


def test_spatial_positive_mask_by_hand():
    # view 1: top-left quarter; view 2: shifted right by a quarter and flipped. 2×2 grids, bin diagonal 0.25·√2
    v1 = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
    v2 = torch.tensor([[0.75, 0.0, 0.25, 0.5]])
    # centres: v1 cols x = .125, .375; v2 (flipped) cols x = .625, .375; rows y = .125, .375
    pos = spatial_positive_mask(v1, v2, 2, 2, radius=0.7)[0]
    # cell 1 of v1 (x .375, y .125) coincides with cell 1 of v2 (x .375, y .125) → d = 0
    assert pos[1, 1] and pos[3, 3]
    # v1 cell 0 (.125, .125) vs v2 cell 1 (.375, .125): d = .25/(.25√2) = 0.7071 > 0.7
    assert not pos[0, 1]
    assert spatial_positive_mask(v1, v2, 2, 2, radius=0.71)[0, 0, 1]
    # v2 column 0 (x .625) is ≥ .25 from every v1 column → d ≥ .707 → never positive
    assert not pos[:, 0].any()
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[1, 1] = expected[3, 3] = True
    assert torch.equal(pos, expected)


def test_spatial_positive_mask_matches_loop():
    g = torch.Generator().manual_seed(5)
    b, h, w = 4, 3, 4
    def boxes():
        x0 = torch.rand(b, generator=g) * 0.5
        y0 = torch.rand(b, generator=g) * 0.5
        x1 = x0 + 0.2 + torch.rand(b, generator=g) * 0.3
        y1 = y0 + 0.2 + torch.rand(b, generator=g) * 0.3
        flip = torch.rand(b, generator=g) < 0.5
        x0, x1 = torch.where(flip, x1, x0), torch.where(flip, x0, x1)
        return torch.stack([x0, y0, x1, y1], dim=1).double()
    c1, c2 = boxes(), boxes()
    for radius in (0.7, 1.5, 3.0):
        assert torch.equal(spatial_positive_mask(c1, c2, h, w, radius), _spatial_loop(c1, c2, h, w, radius))
    # identical views: the diagonal is always positive
    assert spatial_positive_mask(c1, c1, h, w).diagonal(dim1=1, dim2=2).all()
