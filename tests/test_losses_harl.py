"""harl.losses.harl: region pooling + empty policy, weighted BYOL, total loss table, α/β schedules
(docs/methods/harl.md), against naive loops and hand computations."""

import math

import pytest
import torch

from harl.losses import byol_loss
from harl.losses.harl import (alpha_schedule, beta_schedule, cosine_coefficient, harl_branch_loss,
                              harl_loss_weights, harl_total_loss, pool_regions, region_validity,
                              weighted_byol_loss)
from harl.ops.mask_grid import mask_to_grid, masked_mean_pool
from harl.optim.schedulers import cosine_increase


def _cos_loop(p, z):
    out = []
    for a, b in zip(p.tolist(), z.tolist()):
        dot = sum(x * y for x, y in zip(a, b))
        out.append(dot / max(math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)), 1e-8))
    return out


def _weighted_byol_loop(p, z, w):
    cos = _cos_loop(p, z)
    sw = sum(w)
    if sw == 0:
        return 0.0
    return 2 - 2 * sum(wi * ci for wi, ci in zip(w, cos)) / max(1.0, sw)


# ---------------------------------------------------------------- validity and pooling

def test_region_validity_needs_both_views():
    m1 = torch.zeros(4, 1, 3, 3)
    m2 = torch.zeros(4, 1, 3, 3)
    m1[0, 0, 0, 0] = m2[0, 0, 1, 1] = 1   # both non-empty
    m1[1, 0, 2, 2] = 1                    # empty in view 2
    m2[2, 0, 0, 1] = 1                    # empty in view 1
    assert region_validity(m1, m2).tolist() == [True, False, False, False]


def _masks(b, seed):
    g = torch.Generator().manual_seed(seed)
    m = (torch.rand(b, 1, 5, 5, generator=g) > 0.5).float()
    return m, 1 - m


def test_pool_regions_exclude_and_faithful():
    torch.manual_seed(0)
    feat = torch.randn(4, 6, 5, 5)
    fg, bg = _masks(4, 1)
    fg[1] = 1.0; bg[1] = 0.0          # sample 1: bg empty
    fg[2] = 0.0; bg[2] = 1.0          # sample 2: fg empty
    h_g = feat.mean(dim=(2, 3))

    ex = pool_regions(feat, fg, bg, empty_policy="exclude")
    torch.testing.assert_close(ex["h_g"], h_g)
    assert ex["valid_f"].tolist() == [True, True, False, True]
    assert ex["valid_b"].tolist() == [True, False, True, True]
    assert ex["w_f"].tolist() == [1.0, 1.0, 0.0, 1.0] and ex["w_b"].tolist() == [1.0, 0.0, 1.0, 1.0]
    # empty region → h_g; others → Σ(F⊙M)/(ΣM+1)
    torch.testing.assert_close(ex["h_b"][1], h_g[1])
    torch.testing.assert_close(ex["h_f"][2], h_g[2])
    for i in (0, 3):
        torch.testing.assert_close(ex["h_f"][i], masked_mean_pool(feat, fg)[i])
        torch.testing.assert_close(ex["h_b"][i], masked_mean_pool(feat, bg)[i])

    fa = pool_regions(feat, fg, bg, empty_policy="faithful")
    assert torch.all(fa["h_b"][1] == 0) and torch.all(fa["h_f"][2] == 0)   # the reference's zero vector
    assert fa["w_f"].tolist() == [1.0] * 4 and fa["w_b"].tolist() == [1.0] * 4
    assert fa["valid_b"].tolist() == [True, False, True, True]            # still reported for logging


def test_pool_regions_cross_view_validity_overrides():
    torch.manual_seed(1)
    feat = torch.randn(3, 4, 5, 5)
    fg1, bg1 = _masks(3, 2)
    fg2, bg2 = _masks(3, 3)
    fg2[0] = 0.0                      # fg of sample 0 empty only in view 2
    valid_f = region_validity(fg1, fg2)
    r1 = pool_regions(feat, fg1, bg1, valid_f=valid_f, valid_b=region_validity(bg1, bg2))
    assert r1["valid_f"].tolist() == [False, True, True]
    torch.testing.assert_close(r1["h_f"][0], r1["h_g"][0])   # replaced in view 1 too
    assert r1["w_f"][0] == 0


def test_pool_regions_poolings_and_optional_bg():
    torch.manual_seed(2)
    feat = torch.randn(2, 8, 4, 4)
    fg, bg = mask_to_grid((torch.rand(2, 1, 16, 16) > 0.6), 4)
    gap = pool_regions(feat, fg, bg, pooling="gap_masked")
    torch.testing.assert_close(gap["h_f"], (feat * fg).sum(dim=(2, 3)) / 16)
    fine_fg, fine_bg = mask_to_grid((torch.rand(2, 1, 16, 16) > 0.6), 8)
    ps = pool_regions(feat, fine_fg, fine_bg, pooling="pixel_shuffle", eps=1.0)
    assert ps["h_f"].shape == (2, 8)
    no_bg = pool_regions(feat, fg, None)
    assert no_bg["h_b"] is None and no_bg["w_b"] is None and no_bg["h_f"] is not None
    with pytest.raises(ValueError, match="did you mean 'masked_mean'"):
        pool_regions(feat, fg, bg, pooling="masked_maen")
    with pytest.raises(ValueError, match="did you mean 'exclude'"):
        pool_regions(feat, fg, bg, empty_policy="exlcude")


# ---------------------------------------------------------------- losses

def test_weighted_byol_loss_matches_loop():
    torch.manual_seed(3)
    p, z = torch.randn(6, 5), torch.randn(6, 5)
    for w in ([1, 1, 1, 1, 1, 1], [1, 0, 1, 0, 0, 1], [0, 0, 0, 0, 0, 1], [0.5, 0.25, 0, 0, 0, 0]):
        got = weighted_byol_loss(p, z, torch.tensor(w, dtype=torch.float32))
        assert got.item() == pytest.approx(_weighted_byol_loop(p, z, w), abs=1e-5)
    torch.testing.assert_close(weighted_byol_loss(p, z), byol_loss(p, z))
    torch.testing.assert_close(weighted_byol_loss(p, z, torch.ones(6, dtype=torch.bool)), byol_loss(p, z))


def test_weighted_byol_loss_no_valid_sample_is_exact_zero_with_zero_grad():
    p = torch.randn(4, 3, requires_grad=True)
    z = torch.randn(4, 3)
    loss = weighted_byol_loss(p, z, torch.zeros(4))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(p.grad).all() and torch.all(p.grad == 0)
    # zero vectors (faithful pooling of an empty region) stay finite too
    p0 = torch.zeros(2, 3, requires_grad=True)
    weighted_byol_loss(p0, torch.zeros(2, 3), torch.ones(2)).backward()
    assert torch.isfinite(p0.grad).all()


def test_weighted_byol_loss_gradient_ignores_excluded_samples():
    p = torch.randn(3, 4, requires_grad=True)
    z = torch.randn(3, 4, requires_grad=True)
    weighted_byol_loss(p, z, torch.tensor([1.0, 0.0, 1.0])).backward()
    assert torch.all(p.grad[1] == 0) and p.grad[0].abs().sum() > 0
    assert z.grad is None   # target gradient stopped


def test_harl_branch_loss_is_symmetric_sum():
    torch.manual_seed(4)
    p1, p2, z1, z2 = (torch.randn(5, 4) for _ in range(4))
    w = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0])
    got = harl_branch_loss(p1, p2, z1, z2, w)
    ref = _weighted_byol_loop(p1, z2, w.tolist()) + _weighted_byol_loop(p2, z1, w.tolist())
    assert got.item() == pytest.approx(ref, abs=1e-5)


def test_harl_total_loss_table():
    Lg, Lf, Lb = torch.tensor(1.3), torch.tensor(0.7), torch.tensor(2.9)
    a, b, w = 0.8, 0.35, 0.6
    mask = a * 0.7 + (1 - a) * 2.9
    expected = {
        ("byol", "cosine_decay_global"): 1.3,
        ("mask", "cosine_decay_global"): mask,
        ("hybrid", "cosine_decay_global"): b * 1.3 + (1 - b) * mask,
        ("byol_f", "cosine_decay_global"): b * 1.3 + (1 - b) * 0.7,
        ("f", "cosine_decay_global"): 0.7,
        ("hybrid", "fixed_mask_weight"): w * mask + (1 - w) * 1.3,
        ("byol_f", "fixed_mask_weight"): w * 0.7 + (1 - w) * 1.3,
        ("mask", "fixed_mask_weight"): mask,
    }
    for (lt, hm), ref in expected.items():
        got = harl_total_loss(Lg, Lf, Lb, lt, a, b, mask_weight=w, hybrid_mode=hm)
        assert got.item() == pytest.approx(ref, abs=1e-6), (lt, hm)
    assert set(harl_loss_weights("byol_f", a, b)) == {"g", "f"}
    # unused branches may be None; needed ones may not
    assert harl_total_loss(Lg, Lf, None, "byol_f", a, b).item() == pytest.approx(b * 1.3 + (1 - b) * 0.7)
    with pytest.raises(ValueError, match="needs L_b"):
        harl_total_loss(Lg, Lf, None, "hybrid", a, b)
    with pytest.raises(ValueError, match="did you mean 'hybrid'"):
        harl_total_loss(Lg, Lf, Lb, "hybird", a, b)
    with pytest.raises(ValueError, match="did you mean 'fixed_mask_weight'"):
        harl_total_loss(Lg, Lf, Lb, "hybrid", a, b, hybrid_mode="fixed_mask_weigth")


# ---------------------------------------------------------------- schedules

def test_cosine_coefficient_endpoints_and_fp64():
    K = 1000
    assert cosine_coefficient(0, K) == 1.0 and cosine_coefficient(K, K) == 0.0
    assert cosine_coefficient(K // 2, K) == pytest.approx(0.5, abs=1e-15)
    assert cosine_coefficient(K + 10, K) == 0.0 and cosine_coefficient(-3, K) == 1.0
    assert cosine_coefficient(5, 0) == 0.0   # K clamped to 1, k to K


@pytest.mark.parametrize("base", [0.7, 0.6, 0.3])
def test_alpha_schedule_modes(base):
    K = 400
    assert alpha_schedule(0, K, base, "cosine") == pytest.approx(base, abs=1e-12)
    assert alpha_schedule(K // 2, K, base, "cosine") == pytest.approx(1 - (1 - base) * 0.5, abs=1e-12)
    assert alpha_schedule(K, K, base, "cosine") == pytest.approx(1.0, abs=1e-12)
    for k in (0, 17, K // 2, K):
        assert alpha_schedule(k, K, base, "cosine") == pytest.approx(cosine_increase(k, K, base, 1.0), abs=1e-15)
        assert alpha_schedule(k, K, base, "fixed") == base
    # step: by epoch when given, else by step/total; α_base ignored
    assert [alpha_schedule(0, 1, base, "step", epoch=e, max_epochs=100) for e in (0, 69, 70, 89, 90, 99)] == \
        [0.5, 0.5, 0.7, 0.7, 0.9, 0.9]
    assert [alpha_schedule(k, K, base, "step") for k in (0, K // 2, K)] == [0.5, 0.5, 0.9]
    assert alpha_schedule(int(0.75 * K), K, base, "step") == 0.7


def test_beta_schedule_modes():
    K = 400
    assert beta_schedule(0, K, 0.7, "cosine") == pytest.approx(0.7)
    assert beta_schedule(K // 2, K, 0.7, "cosine") == pytest.approx(0.35)
    assert beta_schedule(K, K, 0.7, "cosine") == 0.0
    # HAPiCLR clamps at 0.3
    assert beta_schedule(K, K, 0.7, "cosine", beta_min=0.3) == 0.3
    assert beta_schedule(K // 2, K, 0.7, "cosine", beta_min=0.3) == pytest.approx(0.35)
    assert [beta_schedule(k, K, 0.7, "fixed") for k in (0, K // 2, K)] == [0.7, 0.7, 0.7]
    with pytest.raises(ValueError, match="did you mean 'cosine'"):
        beta_schedule(0, K, 0.7, "cosin")
    with pytest.raises(ValueError, match="alpha_mode"):
        alpha_schedule(0, K, 0.7, "linear")


# ---------------------------------------------------------------- end to end (tiny)

def _harl_step(feat1, feat2, full1, full2, policy="exclude", loss_type="hybrid"):
    """Two views through grid → pooling → a shared linear 'projector' → branch losses → total."""
    torch.manual_seed(9)
    proj = torch.nn.Linear(feat1.shape[1], 6)
    pred = torch.nn.Linear(6, 6)
    size = feat1.shape[-1]
    f1, b1 = mask_to_grid(full1, size)
    f2, b2 = mask_to_grid(full2, size)
    vf, vb = region_validity(f1, f2), region_validity(b1, b2)
    r1 = pool_regions(feat1, f1, b1, empty_policy=policy, valid_f=vf, valid_b=vb)
    r2 = pool_regions(feat2, f2, b2, empty_policy=policy, valid_f=vf, valid_b=vb)
    L = {}
    for k in ("g", "f", "b"):
        z1, z2 = proj(r1[f"h_{k}"]), proj(r2[f"h_{k}"])
        L[k] = harl_branch_loss(pred(z1), pred(z2), z1.detach(), z2.detach(), r1.get(f"w_{k}"))
    return harl_total_loss(L["g"], L["f"], L["b"], loss_type, alpha_schedule(10, 100, 0.7), beta_schedule(10, 100, 0.7)), L


def test_end_to_end_loss_depends_on_masks_and_stays_finite():
    torch.manual_seed(5)
    feat1 = torch.randn(3, 8, 5, 5, requires_grad=True)
    feat2 = torch.randn(3, 8, 5, 5, requires_grad=True)
    g = torch.Generator().manual_seed(0)
    ma = (torch.rand(3, 1, 40, 40, generator=g) > 0.97)
    mb = torch.zeros(3, 1, 40, 40, dtype=torch.bool)
    mb[:, :, 10:30, 5:20] = True
    la, _ = _harl_step(feat1, feat2, ma, ma)
    lb, _ = _harl_step(feat1, feat2, mb, mb)
    assert abs(la.item() - lb.item()) > 1e-4
    # empty (all bg) and full (all fg) masks: finite loss and gradients under both policies
    for policy in ("exclude", "faithful"):
        for full in (torch.zeros(3, 1, 40, 40), torch.ones(3, 1, 40, 40)):
            feat1.grad = feat2.grad = None
            loss, L = _harl_step(feat1, feat2, full, full, policy=policy)
            assert torch.isfinite(loss)
            loss.backward()
            assert torch.isfinite(feat1.grad).all() and torch.isfinite(feat2.grad).all()
            if policy == "exclude":
                empty = "f" if full.sum() == 0 else "b"
                assert L[empty].item() == 0.0
