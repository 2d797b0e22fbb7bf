"""harl.losses.hapicl: pixel pairs and the pixel contrastive loss (docs/methods/hapicl.md)."""

import math

import pytest
import torch
import torch.nn.functional as F

from harl.losses.hapicl import pixel_contrastive_loss, pixel_contrastive_loss_and_stats, pixel_pair_masks
from harl.ops.mask_grid import spatial_positive_mask

E2 = math.exp(2.0)


def _pairs_loop(f1, f2, positives):
    b, n1 = f1.shape
    n2 = f2.shape[1]
    pos = torch.zeros(b, n1, n2, dtype=torch.bool)
    for n in range(b):
        for i in range(n1):
            for j in range(n2):
                ff = bool(f1[n, i]) and bool(f2[n, j])
                bb = (not f1[n, i]) and (not f2[n, j])
                pos[n, i, j] = ff or (bb and positives == "fg_bg")
    return pos, ~pos


def _loss_loop(P1, P2, f1, f2, tau, variant, positives, skip, spatial=None):
    """Naive loop in float64: per image, per pair."""
    b, d, n1 = P1.shape
    n2 = P2.shape[2]
    P1 = F.normalize(P1.double(), dim=1)
    P2 = F.normalize(P2.double(), dim=1)
    pos_mask, neg_mask = _pairs_loop(f1, f2, positives)
    if spatial is not None:
        pos_mask = pos_mask & spatial
    pos, neg, keep = [], [], []
    for n in range(b):
        sp = sn = 0.0
        cp = cn = 0
        for i in range(n1):
            for j in range(n2):
                s = math.exp(sum(float(P1[n, k, i]) * float(P2[n, k, j]) for k in range(d)) / tau)
                if pos_mask[n, i, j]:
                    sp += s; cp += 1
                if neg_mask[n, i, j]:
                    sn += s; cn += 1
        pos.append(sp); neg.append(sn)
        keep.append((cp > 0 and cn > 0) if skip else True)
    idx = [n for n in range(b) if keep[n]]
    if not idx:
        return 0.0
    if variant == "A":
        terms = [-math.log((pos[n] + 1) / (pos[n] + 1 + neg[n] + 1)) for n in idx]
    else:
        den = sum(pos[n] + neg[n] for n in idx)
        terms = [-math.log((pos[n] + 1e-5) / den) for n in idx]
    return sum(terms) / len(terms)


def test_pixel_pair_masks_match_loop():
    g = torch.Generator().manual_seed(0)
    f1 = torch.rand(3, 6, generator=g) > 0.5
    f2 = torch.rand(3, 5, generator=g) > 0.5
    for positives in ("fg_bg", "fg_only"):
        pos, neg = pixel_pair_masks(f1.float(), f2.to(torch.uint8), positives)
        rpos, rneg = _pairs_loop(f1, f2, positives)
        assert torch.equal(pos, rpos) and torch.equal(neg, rneg)
    # B×1×h×w input is flattened row-major
    m = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    pos, _ = pixel_pair_masks(m, m)
    assert pos[0, 0, 0] and pos[0, 3, 3] and not pos[0, 0, 3]
    with pytest.raises(ValueError, match="did you mean 'fg_only'"):
        pixel_pair_masks(f1, f2, "fg_onyl")
    with pytest.raises(ValueError, match="binary"):
        pixel_pair_masks(torch.full((1, 4), 0.5), torch.ones(1, 4))


def _eye_views():
    # two cells per view, unit vectors e1, e2 in both views: S = [[e^{1/τ}, 1], [1, e^{1/τ}]]
    P = torch.eye(2).unsqueeze(0)  # 1×D(2)×N(2); column i is cell i
    return P.clone(), P.clone()


def test_hand_computed_2x2_variant_a_and_b():
    P1, P2 = _eye_views()
    tau = 0.5  # e^{1/τ} = e²
    m = torch.tensor([[1.0, 0.0]])
    # fg_bg: Pos = diagonal (fg–fg and bg–bg), Neg = off-diagonal → pos = 2e², neg = 2
    a = pixel_contrastive_loss(P1, P2, m, m, tau, "A")
    assert a.item() == pytest.approx(-math.log((2 * E2 + 1) / (2 * E2 + 1 + 2 + 1)), abs=1e-6)
    b = pixel_contrastive_loss(P1, P2, m, m, tau, "B")
    assert b.item() == pytest.approx(-math.log((2 * E2 + 1e-5) / (2 * E2 + 2)), abs=1e-6)
    # fg_only: Pos = {(0,0)}, Neg = the other three → pos = e², neg = e² + 2
    a_f = pixel_contrastive_loss(P1, P2, m, m, tau, "A", positives="fg_only")
    assert a_f.item() == pytest.approx(-math.log((E2 + 1) / (E2 + 1 + E2 + 2 + 1)), abs=1e-6)


def test_hand_computed_two_images_variant_b_shares_denominator():
    P1, P2 = _eye_views()
    P1, P2 = P1.repeat(2, 1, 1), P2.repeat(2, 1, 1)
    m1 = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    m2 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # image 0: pos 2e², neg 2. image 1: view-1 all fg → Pos = column 0 → pos = e² + 1, neg = 1 + e²
    den = (2 * E2 + 2) + (2 * E2 + 2)
    ref_b = 0.5 * (-math.log((2 * E2 + 1e-5) / den) - math.log((E2 + 1 + 1e-5) / den))
    ref_a = 0.5 * (-math.log((2 * E2 + 1) / (2 * E2 + 4)) + math.log(2.0))
    assert pixel_contrastive_loss(P1, P2, m1, m2, 0.5, "B").item() == pytest.approx(ref_b, abs=1e-6)
    assert pixel_contrastive_loss(P1, P2, m1, m2, 0.5, "A").item() == pytest.approx(ref_a, abs=1e-6)


@pytest.mark.parametrize("variant", ["A", "B"])
@pytest.mark.parametrize("positives", ["fg_bg", "fg_only"])
@pytest.mark.parametrize("skip", [True, False])
def test_loss_matches_naive_loop(variant, positives, skip):
    g = torch.Generator().manual_seed(1)
    b, d, n = 4, 5, 9
    P1, P2 = torch.randn(b, d, n, generator=g), torch.randn(b, d, n, generator=g)
    f1 = torch.rand(b, n, generator=g) > 0.5
    f2 = torch.rand(b, n, generator=g) > 0.5
    f1[0] = True; f2[0] = True           # image 0 degenerate under fg_bg (all positive)
    f1[1] = False                        # image 1 degenerate under fg_only (no positive)
    got = pixel_contrastive_loss(P1, P2, f1, f2, 0.2, variant, positives, skip)
    ref = _loss_loop(P1, P2, f1, f2, 0.2, variant, positives, skip)
    assert got.item() == pytest.approx(ref, rel=1e-5)


def test_spatial_positives_and_against_loop():
    g = torch.Generator().manual_seed(2)
    b, d, h, w = 3, 4, 3, 3
    P1, P2 = torch.randn(b, d, h * w, generator=g), torch.randn(b, d, h * w, generator=g)
    f1 = torch.rand(b, h * w, generator=g) > 0.4
    f2 = torch.rand(b, h * w, generator=g) > 0.4
    c1 = torch.tensor([[0.0, 0.0, 0.6, 0.6], [0.1, 0.2, 0.9, 0.8], [0.7, 0.1, 0.2, 0.6]])
    c2 = torch.tensor([[0.2, 0.1, 0.8, 0.7], [0.9, 0.2, 0.1, 0.8], [0.3, 0.3, 0.9, 0.9]])
    sp = spatial_positive_mask(c1, c2, h, w)
    for variant in ("A", "B"):
        got = pixel_contrastive_loss(P1, P2, f1, f2, 0.2, variant, spatial_pos=sp)
        ref = _loss_loop(P1, P2, f1, f2, 0.2, variant, "fg_bg", True, spatial=sp)
        assert got.item() == pytest.approx(ref, rel=1e-5)
    # all-True spatial mask changes nothing; a restrictive one changes the loss
    full = torch.ones(b, h * w, h * w, dtype=torch.bool)
    base = pixel_contrastive_loss(P1, P2, f1, f2)
    assert pixel_contrastive_loss(P1, P2, f1, f2, spatial_pos=full).item() == pytest.approx(base.item())
    assert abs(pixel_contrastive_loss(P1, P2, f1, f2, spatial_pos=sp).item() - base.item()) > 1e-4


def test_loss_changes_with_masks_and_is_symmetric():
    g = torch.Generator().manual_seed(3)
    P1, P2 = torch.randn(2, 8, 25, generator=g), torch.randn(2, 8, 25, generator=g)
    fa1, fa2 = torch.rand(2, 25, generator=g) > 0.5, torch.rand(2, 25, generator=g) > 0.5
    fb1, fb2 = torch.rand(2, 25, generator=g) > 0.5, torch.rand(2, 25, generator=g) > 0.5
    for variant in ("A", "B"):
        la = pixel_contrastive_loss(P1, P2, fa1, fa2, variant=variant)
        lb = pixel_contrastive_loss(P1, P2, fb1, fb2, variant=variant)
        assert abs(la.item() - lb.item()) > 1e-4
        swapped = pixel_contrastive_loss(P2, P1, fa2, fa1, variant=variant)
        assert swapped.item() == pytest.approx(la.item(), rel=1e-6)


def test_gradient_reaches_pixel_head_and_embeddings():
    torch.manual_seed(4)
    head = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                               torch.nn.Conv2d(16, 6, 1))
    feat1, feat2 = torch.randn(3, 8, 5, 5), torch.randn(3, 8, 5, 5)
    P1 = F.normalize(head(feat1).flatten(2), dim=1)
    P2 = F.normalize(head(feat2).flatten(2), dim=1)
    P1.retain_grad(); P2.retain_grad()
    m1 = (torch.rand(3, 1, 5, 5) > 0.5).float()
    m2 = (torch.rand(3, 1, 5, 5) > 0.5).float()
    m1[:, 0, 0, 0] = 1; m1[:, 0, 0, 1] = 0; m2[:, 0, 0, 0] = 1; m2[:, 0, 0, 1] = 0   # no degenerate image
    for variant in ("A", "B"):
        head.zero_grad(); P1.grad = P2.grad = None
        loss = pixel_contrastive_loss(P1, P2, m1, m2, variant=variant)
        loss.backward(retain_graph=True)
        assert P1.grad.abs().sum() > 0 and P2.grad.abs().sum() > 0
        for prm in head.parameters():
            assert prm.grad is not None and torch.isfinite(prm.grad).all()
        assert head[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("variant", ["A", "B"])
def test_all_degenerate_gives_zero_loss_and_zero_finite_gradient(variant):
    P1 = torch.randn(2, 4, 9, requires_grad=True)
    P2 = torch.randn(2, 4, 9, requires_grad=True)
    ones, zeros = torch.ones(2, 9), torch.zeros(2, 9)
    cases = [(ones, ones, "fg_bg"), (zeros, zeros, "fg_bg"), (zeros, ones, "fg_bg"), (zeros, zeros, "fg_only")]
    for m1, m2, positives in cases:
        P1.grad = P2.grad = None
        loss, stats = pixel_contrastive_loss_and_stats(P1, P2, m1, m2, variant=variant, positives=positives)
        assert loss.item() == 0.0 and stats["frac_valid"].item() == 0.0
        loss.backward()
        for grad in (P1.grad, P2.grad):
            assert torch.isfinite(grad).all() and torch.all(grad == 0)
    # faithful (no skipping): degenerate images still give a finite loss with finite gradients
    P1.grad = P2.grad = None
    loss = pixel_contrastive_loss(P1, P2, ones, ones, variant=variant, skip_degenerate=False)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert torch.isfinite(P1.grad).all()


def test_stats_fraction_valid():
    P = torch.randn(4, 3, 4)
    m1 = torch.tensor([[1, 0, 1, 0], [1, 1, 1, 1], [0, 1, 0, 0], [0, 0, 0, 0]])
    m2 = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 1], [0, 0, 0, 0]])
    _, stats = pixel_contrastive_loss_and_stats(P, P.flip(2), m1, m2)
    assert stats["frac_valid"].item() == 0.5 and stats["n_valid"].item() == 2
    pos, _ = pixel_pair_masks(m1, m2)
    assert stats["pos_pair_frac"].item() == pytest.approx(pos.float().mean().item())


def test_large_sums_stay_fp32_under_half_precision_inputs():
    # 7×7 grid, identical unit vectors, τ = 0.2: pos + neg = 2401·e⁵ ≈ 3.6e5 > fp16 max (65504)
    n = 49
    P = F.normalize(torch.ones(2, 16, n), dim=1)
    m1 = torch.zeros(2, n); m1[:, :20] = 1
    m2 = torch.zeros(2, n); m2[:, 10:35] = 1
    for variant in ("A", "B"):
        ref = _loss_loop(P, P, m1 > 0, m2 > 0, 0.2, variant, "fg_bg", True)
        for dtype in (torch.float16, torch.bfloat16):
            got = pixel_contrastive_loss(P.to(dtype), P.to(dtype), m1, m2, variant=variant)
            assert got.dtype == torch.float32 and torch.isfinite(got)
            assert got.item() == pytest.approx(ref, rel=1e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_finite_under_cpu_autocast(dtype):
    torch.manual_seed(6)
    head = torch.nn.Conv2d(8, 32, 1)
    feat1, feat2 = torch.randn(2, 8, 7, 7), torch.randn(2, 8, 7, 7)
    m1 = (torch.rand(2, 1, 7, 7) > 0.3).float()
    m2 = (torch.rand(2, 1, 7, 7) > 0.3).float()
    try:
        with torch.autocast("cpu", dtype=dtype):
            P1 = F.normalize(head(feat1).flatten(2), dim=1)
            P2 = F.normalize(head(feat2).flatten(2), dim=1)
            losses = [pixel_contrastive_loss(P1, P2, m1, m2, variant=v) for v in ("A", "B")]
            full = pixel_contrastive_loss(P1, P2, torch.ones(2, 49), torch.ones(2, 49))
    except RuntimeError as exc:  # pragma: no cover - old torch without CPU fp16 autocast
        pytest.skip(f"CPU autocast {dtype} unsupported: {exc}")
    for loss in losses:
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert full.item() == 0.0
    sum(losses).backward()
    assert torch.isfinite(head.weight.grad).all() and head.weight.grad.abs().sum() > 0


def test_bad_arguments():
    P = torch.randn(1, 2, 4)
    m = torch.tensor([[1, 0, 1, 0]])
    assert pixel_contrastive_loss(P, P, m, m, variant="a").item() == pixel_contrastive_loss(P, P, m, m).item()
    with pytest.raises(ValueError, match="pix_variant 'C'; choose one of: A, B"):
        pixel_contrastive_loss(P, P, m, m, variant="c")
    with pytest.raises(ValueError, match="temperature"):
        pixel_contrastive_loss(P, P, m, m, temperature=0.0)
    with pytest.raises(ValueError, match="B×N1×N2"):
        pixel_contrastive_loss(P, P, torch.ones(1, 5), torch.ones(1, 4))
    with pytest.raises(ValueError, match="spatial_pos"):
        pixel_contrastive_loss(P, P, m, m, spatial_pos=torch.ones(1, 3, 3, dtype=torch.bool))
