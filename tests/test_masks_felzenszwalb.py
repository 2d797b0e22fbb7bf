"""The felzenszwalb mask generator (docs/masks.md): sizes, statistics, scores, selection, guards."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.color import rgb2lab

from harl.masks.felzenszwalb import (
    FelzenszwalbParams,
    center_box,
    felzenszwalb_mask,
    scaled_min_size,
    segment_scores,
    segment_stats,
    select_segments,
    working_size,
)
from harl.masks.ops import resize_mask_nearest


def iou(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return (a & b).sum() / max((a | b).sum(), 1)


# --------------------------------------------------------------------------------------------- step 1–2


@pytest.mark.parametrize("hw, expected", [
    ((375, 500), (375, 500)),      # already in range
    ((1000, 800), (500, 400)),     # longest side → 500
    ((600, 600), (500, 500)),
    ((100, 50), (256, 128)),       # shortest side → 128 (bicubic upscale)
    ((128, 300), (128, 300)),
    ((2000, 100), (2560, 128)),    # aspect > 500/128: the shortest-side rule wins
    ((999, 333), (500, 167)),      # 333·0.5005 = 166.67 → 167
])
def test_working_size(hw, expected):
    assert working_size(*hw) == expected


def test_working_size_bounds_can_be_disabled():
    assert working_size(1000, 800, long_side=0, short_side=128) == (1000, 800)
    assert working_size(50, 60, long_side=500, short_side=0) == (50, 60)


def test_scaled_min_size_rule():
    # min_size = max(20, round(1000·A/187500))
    assert scaled_min_size(500 * 375) == 1000                 # the paper's scale
    assert scaled_min_size(500 * 500) == 1333                 # 1333.33
    assert scaled_min_size(128 * 128) == 87                   # 87.38
    assert scaled_min_size(100 * 20) == 20                    # 10.67 → floor 20
    assert scaled_min_size(375 * 250) == 500
    # halves round up (Python's round() would give 2 here)
    assert scaled_min_size(2500, min_size=1, ref_area=1000, floor=1) == 3
    assert scaled_min_size(1500, min_size=1, ref_area=1000, floor=1) == 2


def test_generator_uses_scaled_min_size():
    img = np.full((300, 400, 3), 128, np.uint8)
    _, info = felzenszwalb_mask(img)
    assert info["work_size"] == (300, 400)
    assert info["min_size"] == round(1000 * 300 * 400 / 187500)  # 640
    _, info = felzenszwalb_mask(np.full((60, 90, 3), 128, np.uint8))
    assert info["work_size"] == (128, 192) and info["min_size"] == max(20, round(1000 * 128 * 192 / 187500))


# --------------------------------------------------------------------------------------------- step 3–4


def _naive_stats(labels, lab):
    h, w = labels.shape
    k = labels.max() + 1
    out = {"count": [], "area": [], "color": [], "centroid": [], "edge": []}
    for s in range(k):
        ys, xs = np.nonzero(labels == s)
        n = len(ys)
        out["count"].append(n)
        out["area"].append(n / (h * w))
        out["color"].append([lab[ys, xs, c].mean() for c in range(3)])
        out["centroid"].append([np.mean((ys + 0.5) / h), np.mean((xs + 0.5) / w)])
        e = 0
        for y, x in zip(ys, xs):
            if y == 0 or x == 0 or y == h - 1 or x == w - 1:
                e += 1
        out["edge"].append(e)
    return {k2: np.asarray(v, float) for k2, v in out.items()}


def test_segment_stats_match_a_naive_loop():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=(7, 9))
    lab = rng.normal(size=(7, 9, 3)) * 20
    fast, slow = segment_stats(labels, lab), _naive_stats(labels, lab)
    for key in slow:
        np.testing.assert_allclose(fast[key], slow[key], rtol=1e-12, atol=1e-12, err_msg=key)
    assert fast["edge"].sum() == 2 * 7 + 2 * 9 - 4  # every frame pixel counted once


def test_segment_scores_match_the_formulas():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=(6, 8))
    lab = rng.normal(size=(6, 8, 3)) * 30
    st = segment_stats(labels, lab)
    sc = segment_scores(st, center_sigma=0.25)
    k = len(st["count"])
    a_work = 6 * 8
    raw = [sum(st["area"][j] * math.dist(st["color"][i], st["color"][j]) for j in range(k) if j != i)
           for i in range(k)]
    for i in range(k):
        c = raw[i] / max(raw)
        mu = st["centroid"][i]
        p = math.exp(-((mu[0] - 0.5) ** 2 + (mu[1] - 0.5) ** 2) / (2 * 0.25 ** 2))
        b = 1 - math.exp(-((st["edge"][i] / math.sqrt(st["area"][i] * a_work)) ** 2) / 2)
        assert sc["contrast"][i] == pytest.approx(c, rel=1e-12)
        assert sc["center"][i] == pytest.approx(p, rel=1e-12)
        assert sc["boundary"][i] == pytest.approx(b, rel=1e-12, abs=1e-15)
        assert sc["score"][i] == pytest.approx(c * p * (1 - b), rel=1e-9, abs=1e-15)


def test_contrast_is_zero_for_a_single_colour():
    labels = np.array([[0, 0, 1], [1, 1, 1]])
    lab = np.ones((2, 3, 3))
    sc = segment_scores(segment_stats(labels, lab))
    assert np.all(sc["contrast"] == 0) and np.all(sc["score"] == 0)


# --------------------------------------------------------------------------------------------- step 5–6


def test_selection_without_guard():
    sel, fb = select_segments(np.array([1.0, 0.6, 0.4]), np.array([0.3, 0.3, 0.4]))
    assert fb == "" and sel.tolist() == [True, True, False]   # s ≥ 0.5·max


def test_guard_center_when_all_scores_are_zero():
    sel, fb = select_segments(np.zeros(3), np.array([0.2, 0.3, 0.5]))
    assert sel is None and fb == "center"


def test_guard_min_area_keeps_the_best_segment_only():
    # selected {0, 1}: 1.5 % < 2 % → best segment (0) only
    sel, fb = select_segments(np.array([1.0, 0.8, 0.1]), np.array([0.005, 0.010, 0.985]))
    assert fb == "min_area" and sel.tolist() == [True, False, False]


def test_guard_max_area_drops_weakest_until_small_enough():
    # all four selected (fg = 100 %); drop s = 0.55 (→ 95 %), then s = 0.6 (→ 45 %) and stop
    sel, fb = select_segments(np.array([0.6, 0.9, 1.0, 0.55]), np.array([0.5, 0.3, 0.15, 0.05]))
    assert fb == "max_area" and sel.tolist() == [False, True, True, False]


def test_guard_max_area_center_when_the_best_segment_alone_is_too_big():
    sel, fb = select_segments(np.array([1.0, 0.9]), np.array([0.95, 0.05]))
    assert sel is None and fb == "max_area+center"


def test_center_box():
    m = center_box(8, 12)
    assert m.sum() == 4 * 6 and m[2:6, 3:9].all()


# --------------------------------------------------------------------------------------------- the generator


def _disk_image(h=240, w=320, r=60, seed=0):
    """A textured warm-coloured disk at the centre of a noisy green-grey gradient background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    bg = np.stack([70 + 40 * xx / w, 110 + 30 * yy / h, 90 + 0 * xx], axis=-1)
    obj = np.stack([210 + 0 * xx, 90 + 20 * np.sin(xx / 7.0), 40 + 0 * xx], axis=-1)
    disk = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= r ** 2
    img = np.where(disk[..., None], obj, bg) + rng.normal(0, 6, size=(h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8), disk


def test_central_object_is_found():
    img, disk = _disk_image()
    mask, info = felzenszwalb_mask(img)
    assert mask.shape == disk.shape and mask.dtype == bool
    assert info["fallback"] == ""
    # FH with σ = 0.8 moves a high-contrast boundary by ~1 px: for r = 60 that costs
    # ≈ 2πr·1.5/(πr²) = 5 % of IoU; noise may add a few pixels more. 0.85 leaves room for that
    # and still fails for any wrong selection (the background alone has IoU 0, the whole image 0.15).
    assert iou(mask, disk) > 0.85


def test_large_image_is_processed_at_work_size_and_mapped_back():
    img, disk = _disk_image(h=480, w=1000, r=120, seed=3)
    mask, info = felzenszwalb_mask(img)
    assert info["work_size"] == (240, 500) and info["min_size"] == 640
    assert mask.shape == (480, 1000)
    assert iou(mask, disk) > 0.85


def test_guard_center_on_a_uniform_image():
    img = np.full((120, 160, 3), 90, np.uint8)
    mask, info = felzenszwalb_mask(img)
    assert info["fallback"] == "center" and info["n_segments"] == 1
    np.testing.assert_array_equal(mask, center_box(120, 160))


def _two_small_squares():
    img = np.full((300, 300, 3), 128, np.uint8)   # min_size = round(1000·90000/187500) = 480
    img[137:163, 137:163] = (230, 20, 20)         # 26×26 = 676 px (0.75 %) at the centre
    img[137:163, 190:216] = (20, 20, 230)         # a second square, off-centre
    return img


def test_guard_min_area_on_a_crafted_image():
    img = _two_small_squares()
    mask, info = felzenszwalb_mask(img, return_details=True)
    assert info["min_size"] == 480 and info["n_segments"] == 3
    assert info["fallback"] == "min_area"
    # both squares pass s ≥ 0.5·max, together 1.5 % < 2 % → the best one only
    sc, labels = info["scores"]["score"], info["labels"]
    assert (sc >= 0.5 * sc.max()).sum() == 2
    best = labels == int(np.argmax(sc))
    assert 26 * 26 <= best.sum() <= 28 * 28          # the square (σ-blur adds at most a 1-px ring)
    np.testing.assert_array_equal(mask, best)
    assert mask[150, 150] != mask[150, 200]          # exactly one of the two squares


# FH's σ-blur turns the razor-sharp edges of these synthetic images into thin ring segments
# (with no frame contact, hence high scores), so the max_area crafts use sigma = 0: clean regions.


def _quadrants():
    img = np.zeros((200, 200, 3), np.uint8)
    img[:100, :100] = (220, 40, 40)
    img[:100, 100:] = (40, 200, 40)
    img[100:, :100] = (40, 40, 220)
    img[100:, 100:] = (220, 220, 40)
    return img


def test_guard_max_area_on_a_crafted_image():
    mask, info = felzenszwalb_mask(_quadrants(), FelzenszwalbParams(sigma=0.0), return_details=True)
    assert info["n_segments"] == 4
    sc, labels = info["scores"]["score"], info["labels"]
    assert (sc >= 0.5 * sc.max()).all()              # all four selected: fg = 100 % > 90 %
    assert info["fallback"] == "max_area"
    np.testing.assert_array_equal(mask, labels != int(np.argmin(sc)))  # the weakest quadrant dropped


def test_guard_max_area_center_on_a_crafted_image():
    # a 3-px grey frame around one red region: the best segment alone covers 94 %
    img = np.full((200, 200, 3), 128, np.uint8)
    img[3:-3, 3:-3] = (220, 40, 40)
    mask, info = felzenszwalb_mask(img, FelzenszwalbParams(sigma=0.0))
    assert info["n_segments"] == 2 and info["fallback"] == "max_area+center"
    np.testing.assert_array_equal(mask, center_box(200, 200))


def test_holes_are_filled():
    # a ring-shaped object whose inside has the background colour: the hole is filled
    h = w = 200
    yy, xx = np.mgrid[0:h, 0:w]
    d2 = (yy - 100) ** 2 + (xx - 100) ** 2
    img = np.full((h, w, 3), 120, np.uint8)
    img[(d2 <= 50 ** 2) & (d2 >= 30 ** 2)] = (230, 30, 30)
    mask, info = felzenszwalb_mask(img)
    assert info["fallback"] == ""
    assert mask[100, 100] and iou(mask, d2 <= 50 ** 2) > 0.9


def test_params_are_validated():
    with pytest.raises(ValueError, match="min_area"):
        FelzenszwalbParams(min_area=0.5, max_area=0.4)
    with pytest.raises(ValueError, match="sigma"):
        FelzenszwalbParams(sigma=-1)
    with pytest.raises(ValueError, match="uint8"):
        felzenszwalb_mask(np.zeros((10, 10), np.uint8))


def test_skimage_photo_runs_and_is_deterministic():
    from skimage import data

    img = data.coffee()
    m1, i1 = felzenszwalb_mask(img)
    m2, i2 = felzenszwalb_mask(img.copy())
    np.testing.assert_array_equal(m1, m2)
    assert i1["n_segments"] == i2["n_segments"] > 1
    assert 0.02 <= m1.mean() <= 0.9


def test_resize_mask_nearest():
    m = np.array([[1, 0], [0, 1]], bool)
    np.testing.assert_array_equal(resize_mask_nearest(m, 4, 4), np.kron(m, np.ones((2, 2), bool)))
    big = np.kron(m, np.ones((3, 3), bool))
    np.testing.assert_array_equal(resize_mask_nearest(big, 2, 2), m)


def test_fill_holes_equals_scipy():
    from scipy import ndimage as ndi

    from harl.masks.felzenszwalb import fill_holes

    rng = np.random.default_rng(0)
    for p in (0.3, 0.5, 0.6, 0.75):
        for shape in ((1, 7), (5, 1), (9, 13), (40, 31)):
            m = rng.random(shape) < p
            np.testing.assert_array_equal(fill_holes(m), ndi.binary_fill_holes(m))
    assert not fill_holes(np.zeros((4, 4), bool)).any() and fill_holes(np.ones((4, 4), bool)).all()


def test_float32_lab_matches_skimage_uint8_lab():
    from skimage import data

    img = data.coffee()[:120, :160]
    np.testing.assert_allclose(rgb2lab(img.astype(np.float32) / 255), rgb2lab(img), atol=2e-3)
