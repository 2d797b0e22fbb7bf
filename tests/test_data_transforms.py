"""JointViewTransform (docs/augmentation.md), the N-crop wrapper and the evaluation transforms."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image, ImageFilter, ImageOps

from harl.data import (
    EvalGeometry,
    EvalTransform,
    JointViewTransform,
    LinearTrainTransform,
    MaskCropOptions,
    MultiViewTransform,
    resize_mask_nearest,
    sample_crop_box,
)

NO_PHOTO = {"horizontal_flip": {"prob": 0.5}}
ZERO, ONE = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


def _aug(crop, **kw):
    d = {"crop_size": crop, "num_crops": 1, "horizontal_flip": {"prob": 0.5}}
    d.update(kw)
    return d


def _random_pattern(h, w, seed):
    return np.random.default_rng(seed).integers(0, 2, (h, w)).astype(np.uint8)


def _pattern_image(p):
    return Image.fromarray(np.repeat((p * 255)[..., None], 3, axis=2))


def _reference_mask(mask, coords, size):
    """The mask a view must carry, rebuilt independently from its coords with PIL."""
    h, w = mask.shape
    x0, y0, x1, y1 = coords.tolist()
    hflip, vflip = x0 > x1, y0 > y1
    left, right = sorted((x0, x1))
    top, bottom = sorted((y0, y1))
    box = (round(left * w), round(top * h), round(right * w), round(bottom * h))
    crop = Image.fromarray(mask * 255).crop(box).resize((size, size), Image.NEAREST)
    if hflip:
        crop = ImageOps.mirror(crop)
    if vflip:
        crop = ImageOps.flip(crop)
    return (np.asarray(crop) > 0).astype(np.uint8), box, hflip, vflip


# ------------------------------------------------------------------------------ geometry


def test_mask_resize_matches_pil_nearest_exactly():
    rng = np.random.default_rng(0)
    for _ in range(300):
        h, w = rng.integers(1, 90, 2)
        oh, ow = rng.integers(1, 90, 2)
        m = rng.integers(0, 256, (h, w)).astype(np.uint8)
        ref = np.asarray(Image.fromarray(m).resize((int(ow), int(oh)), Image.NEAREST))
        out = resize_mask_nearest(torch.from_numpy(m)[None], (oh, ow))[0].numpy()
        np.testing.assert_array_equal(out, ref)


def test_image_and_mask_stay_aligned_200_random_views():
    """Coordinate-free property: a random binary pattern drawn into the image and the mask must
    coincide pixel for pixel after crop + resize + h/v flips (image resized with nearest here)."""
    torch.manual_seed(0)
    random.seed(0)
    flips = {"h": 0, "v": 0}
    for k in range(200):
        h, w = 20 + (k * 7) % 45, 20 + (k * 11) % 50
        crop = (16, 24, 40)[k % 3]
        p = _random_pattern(h, w, k)
        t = JointViewTransform(_aug(crop), ZERO, ONE, interpolation="nearest",
                               masks={"min_fg_frac": 0.3, "max_tries": 3, "vflip_prob": 0.5})
        x, m, c = t(_pattern_image(p), p)
        assert x.shape == (3, crop, crop) and m.shape == (1, crop, crop) and m.dtype == torch.uint8
        img_bits = (x[0] > 0.5).to(torch.uint8)
        assert torch.equal(img_bits, m[0]), f"view {k} misaligned"
        ref, _, hf, vf = _reference_mask(p, c, crop)
        np.testing.assert_array_equal(m[0].numpy(), ref)
        flips["h"] += hf
        flips["v"] += vf
    assert 60 < flips["h"] < 140 and 60 < flips["v"] < 140  # both flips were exercised


def test_bicubic_view_matches_box_from_coords():
    """Default (bicubic) image path: image and mask both equal an independent PIL rebuild from coords."""
    torch.manual_seed(1)
    random.seed(1)
    for k in range(40):
        h, w = 30 + k, 45 - k // 2
        arr = np.random.default_rng(k).integers(0, 256, (h, w, 3)).astype(np.uint8)
        p = _random_pattern(h, w, 100 + k)
        t = JointViewTransform(_aug(24), ZERO, ONE, masks={"min_fg_frac": None, "vflip_prob": 0.3})
        x, m, c = t(Image.fromarray(arr), p)
        ref_m, box, hf, vf = _reference_mask(p, c, 24)
        np.testing.assert_array_equal(m[0].numpy(), ref_m)
        ref = Image.fromarray(arr).crop(box).resize((24, 24), Image.BICUBIC)
        if hf:
            ref = ImageOps.mirror(ref)
        if vf:
            ref = ImageOps.flip(ref)
        assert torch.equal(x, T.ToTensor()(ref))


def test_coords_normalised_and_flipped():
    torch.manual_seed(3)
    img = Image.new("RGB", (80, 50))
    mask = np.ones((50, 80), np.uint8)
    t = JointViewTransform(_aug(16, horizontal_flip={"prob": 1.0}), ZERO, ONE, masks={"min_fg_frac": None})
    torch.manual_seed(3)
    _, _, c = t(img, mask)
    torch.manual_seed(3)
    top, left, hh, ww = T.RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3])
    expected = torch.tensor([(left + ww) / 80, top / 50, left / 80, (top + hh) / 50], dtype=torch.float32)
    assert torch.equal(c, expected) and c[0] > c[2]
    t = JointViewTransform(_aug(16, horizontal_flip={"prob": 0.0}), ZERO, ONE, masks={"min_fg_frac": None})
    _, _, c = t(img, mask)
    assert c[0] < c[2] and c[1] < c[3] and c.min() >= 0 and c.max() <= 1
    t = JointViewTransform(_aug(16, rrc={"enabled": False}, horizontal_flip={"prob": 0.0}), ZERO, ONE,
                           masks={"min_fg_frac": None})
    x, m, c = t(img, mask)
    assert c.tolist() == [0.0, 0.0, 1.0, 1.0] and x.shape == (3, 16, 25) and m.shape == (1, 16, 25)


def test_photometrics_leave_mask_bit_identical():
    strong = _aug(32, rrc={"enabled": False}, horizontal_flip={"prob": 0.0},
                  color_jitter={"prob": 1.0, "brightness": 0.8, "contrast": 0.8, "saturation": 0.8, "hue": 0.2},
                  grayscale={"prob": 1.0}, gaussian_blur={"prob": 1.0}, solarization={"prob": 1.0},
                  equalization={"prob": 1.0})
    plain = _aug(32, rrc={"enabled": False}, horizontal_flip={"prob": 0.0})
    rng = np.random.default_rng(5)
    for k in range(20):
        arr = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
        p = _random_pattern(32, 32, k)
        xs, ms, _ = JointViewTransform(strong, ZERO, ONE, masks={"min_fg_frac": 0.2})(Image.fromarray(arr), p)
        xp, mp, _ = JointViewTransform(plain, ZERO, ONE, masks={"min_fg_frac": 0.2})(Image.fromarray(arr), p)
        assert torch.equal(ms[0], torch.from_numpy(p)) and torch.equal(ms, mp)
        assert not torch.equal(xs, xp)  # the image did change
    # with random crops too: the mask is still exactly the geometric rebuild from coords
    torch.manual_seed(7)
    random.seed(7)
    strong_rrc = dict(strong, rrc={"enabled": True}, horizontal_flip={"prob": 0.5})
    for k in range(30):
        p = _random_pattern(40, 36, k)
        _, m, c = JointViewTransform(strong_rrc, ZERO, ONE, masks={"min_fg_frac": 0.2})(_pattern_image(p), p)
        np.testing.assert_array_equal(m[0].numpy(), _reference_mask(p, c, 32)[0])


# ------------------------------------------------------------------------------ fg acceptance


def _naive_fg(mask, box):
    top, left, h, w = box
    s = 0
    for r in range(top, top + h):
        for col in range(left, left + w):
            s += int(mask[r, col] > 0)
    return s / (h * w)


def _expected_box(img, mask, thr, tries, fallback, seed):
    torch.manual_seed(seed)
    boxes = [tuple(T.RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3])) for _ in range(tries)]
    fracs = [_naive_fg(mask, b) for b in boxes]
    for b, f in zip(boxes, fracs):
        if f > thr:
            return b, boxes.index(b) + 1
    if fallback == "last":
        return boxes[-1], tries
    return boxes[int(np.argmax(fracs))], tries


@pytest.mark.parametrize("fallback", ["last", "best"])
def test_fg_acceptance_and_fallback_match_naive_loop(fallback):
    img = Image.new("RGB", (60, 40))
    mask = np.zeros((40, 60), np.uint8)
    mask[2:12, 3:15] = 1  # small object in a corner: many boxes fail
    opts = MaskCropOptions(min_fg_frac=0.2, max_tries=5, crop_fallback=fallback)
    n_fallback = 0
    for seed in range(150):
        exp, used = _expected_box(img, mask, 0.2, 5, fallback, seed)
        torch.manual_seed(seed)
        box = sample_crop_box(img, (0.08, 1.0), mask, opts)
        assert box == exp
        # exactly `used` get_params calls were consumed
        after = torch.rand(1)
        _expected_box(img, mask, 0.2, used, fallback, seed)
        assert torch.equal(after, torch.rand(1))
        n_fallback += _naive_fg(mask, box) <= 0.2
    assert n_fallback > 10  # fallbacks were exercised


def test_fg_acceptance_raises_fg_fraction():
    img = Image.new("RGB", (64, 64))
    mask = np.zeros((64, 64), np.uint8)
    mask[40:60, 5:25] = 1
    torch.manual_seed(0)
    acc = [_naive_fg(mask, sample_crop_box(img, (0.08, 1.0), mask, MaskCropOptions(0.2, 5, "best")))
           for _ in range(300)]
    plain = [_naive_fg(mask, sample_crop_box(img, (0.08, 1.0), mask, MaskCropOptions(None))) for _ in range(300)]
    assert np.mean(np.array(acc) > 0.2) > np.mean(np.array(plain) > 0.2) + 0.2


def test_empty_mask_and_null_threshold_take_one_draw():
    img = Image.new("RGB", (50, 30))
    for mask, opts in [(np.zeros((30, 50), np.uint8), MaskCropOptions(0.2, 5)),
                       (np.ones((30, 50), np.uint8), MaskCropOptions(None, 5)), (None, None)]:
        torch.manual_seed(11)
        box = sample_crop_box(img, (0.08, 1.0), mask, opts)
        nxt = torch.rand(1)
        torch.manual_seed(11)
        assert box == tuple(T.RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3]))
        assert torch.equal(nxt, torch.rand(1))


# ------------------------------------------------------------------------------ solo-learn parity


class _SoloBlur:
    def __call__(self, img):
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))


class _SoloSolarize:
    def __call__(self, img):
        return ImageOps.solarize(img)


class _SoloEqualize:
    def __call__(self, img):
        return ImageOps.equalize(img)


def _solo_pipeline(crop, mean, std, rrc=True):
    """solo-learn's build_transform_pipeline, written out with torchvision v1 transforms."""
    first = (T.RandomResizedCrop(crop, scale=(0.08, 1.0), interpolation=T.InterpolationMode.BICUBIC) if rrc
             else T.Resize(crop, interpolation=T.InterpolationMode.BICUBIC))
    return T.Compose([
        first,
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([_SoloBlur()], p=0.5),
        T.RandomApply([_SoloSolarize()], p=0.2),
        T.RandomApply([_SoloEqualize()], p=0.3),
        T.RandomHorizontalFlip(p=0.5),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


SOLO_AUG = {
    "color_jitter": {"prob": 0.8, "brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1},
    "grayscale": {"prob": 0.2}, "gaussian_blur": {"prob": 0.5}, "solarization": {"prob": 0.2},
    "equalization": {"prob": 0.3}, "horizontal_flip": {"prob": 0.5},
}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.mark.parametrize("rrc", [True, False])
def test_no_mask_pipeline_equals_solo_learn_under_same_seed(rrc):
    arr = np.random.default_rng(0).integers(0, 256, (45, 37, 3)).astype(np.uint8)
    img = Image.fromarray(arr)
    mine = JointViewTransform(_aug(24, rrc={"enabled": rrc}, **SOLO_AUG), MEAN, STD)
    ref = _solo_pipeline(24, MEAN, STD, rrc=rrc)
    for seed in range(40):
        torch.manual_seed(seed)
        random.seed(seed)
        a = mine(img)
        torch.manual_seed(seed)
        random.seed(seed)
        b = ref(img)
        assert torch.equal(a, b), seed


def test_mask_mode_image_equals_solo_learn_when_acceptance_is_off():
    arr = np.random.default_rng(1).integers(0, 256, (40, 52, 3)).astype(np.uint8)
    img = Image.fromarray(arr)
    mine = JointViewTransform(_aug(24, **SOLO_AUG), MEAN, STD, masks={"min_fg_frac": None, "vflip_prob": 0.0})
    ref = _solo_pipeline(24, MEAN, STD)
    for seed in range(20):
        torch.manual_seed(seed)
        random.seed(seed)
        a, _, _ = mine(img, np.ones((40, 52), np.uint8))
        torch.manual_seed(seed)
        random.seed(seed)
        assert torch.equal(a, ref(img))


def test_transform_does_not_use_numpy_global_rng():
    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, (30, 30, 3)).astype(np.uint8))
    t = JointViewTransform(_aug(16, **SOLO_AUG), MEAN, STD, masks={"min_fg_frac": 0.5})
    outs = []
    for np_seed in (0, 1):
        np.random.seed(np_seed)
        torch.manual_seed(5)
        random.seed(5)
        outs.append(t(img, _random_pattern(30, 30, 0)))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_multiview_order_and_shapes():
    img = Image.new("RGB", (40, 40), (200, 10, 10))
    p1 = JointViewTransform(_aug(32), MEAN, STD)
    p2 = JointViewTransform(_aug(16), MEAN, STD)
    views = MultiViewTransform([p1, p2], [2, 3])(img)
    assert [v.shape[-1] for v in views] == [32, 32, 16, 16, 16]
    m = MultiViewTransform([JointViewTransform(_aug(32), MEAN, STD, masks={}),
                            JointViewTransform(_aug(16), MEAN, STD, masks={})], [1, 1])
    v, ms, cs = m(img, np.ones((40, 40), np.uint8))
    assert [x.shape[-1] for x in v] == [32, 16] and [x.shape for x in ms] == [(1, 32, 32), (1, 16, 16)]
    assert all(c.shape == (4,) and c.dtype == torch.float32 for c in cs)
    with pytest.raises(ValueError):
        MultiViewTransform([p1, JointViewTransform(_aug(16), MEAN, STD, masks={})], [1, 1])


def test_mask_mode_requires_mask_and_matching_size():
    t = JointViewTransform(_aug(16), MEAN, STD, masks={})
    with pytest.raises(ValueError, match="needs a mask"):
        t(Image.new("RGB", (20, 20)))
    with pytest.raises(ValueError, match="mask is"):
        t(Image.new("RGB", (20, 20)), np.ones((10, 20), np.uint8))


# ------------------------------------------------------------------------------ evaluation transforms


@pytest.mark.parametrize("size", [(300, 200), (120, 257), (64, 64)])
def test_eval_transform_equals_torchvision_resize_center_crop(size):
    arr = np.random.default_rng(3).integers(0, 256, (size[1], size[0], 3)).astype(np.uint8)
    img = Image.fromarray(arr)
    mine = EvalTransform(EvalGeometry(resize=256, center_crop=224), MEAN, STD)
    ref = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(MEAN, STD)])
    assert torch.equal(mine(img), ref(img))
    p = _random_pattern(size[1], size[0], 4)
    x, m = mine(img, p)
    assert torch.equal(x, ref(img))
    big = Image.fromarray(p * 255).resize(T.Resize(256)(img).size, Image.NEAREST)
    ref_m = (np.asarray(T.CenterCrop(224)(big)) > 0).astype(np.uint8)
    np.testing.assert_array_equal(m[0].numpy(), ref_m)


def test_eval_transform_native_and_square():
    img = Image.fromarray(np.random.default_rng(4).integers(0, 256, (28, 28, 3)).astype(np.uint8))
    assert torch.equal(EvalTransform(EvalGeometry(), MEAN, STD)(img), T.Normalize(MEAN, STD)(T.ToTensor()(img)))
    out = EvalTransform(EvalGeometry(resize=(96, 96)), MEAN, STD)(Image.new("RGB", (50, 70)))
    assert out.shape == (3, 96, 96)


def test_linear_train_transform_equals_solo_learn():
    arr = np.random.default_rng(5).integers(0, 256, (50, 61, 3)).astype(np.uint8)
    img = Image.fromarray(arr)
    ref = T.Compose([T.RandomResizedCrop(32, scale=(0.08, 1.0)), T.RandomHorizontalFlip(), T.ToTensor(),
                     T.Normalize(MEAN, STD)])
    mine = LinearTrainTransform(32, MEAN, STD)
    for seed in range(20):
        torch.manual_seed(seed)
        a = mine(img)
        torch.manual_seed(seed)
        assert torch.equal(a, ref(img))
        torch.manual_seed(seed)
        x, m = mine(img, np.ones((50, 61), np.uint8))
        assert torch.equal(x, a) and m.shape == (1, 32, 32) and bool(m.all())


def test_rrc_params_equals_torchvision_get_params():
    from harl.data.transforms import rrc_params

    rng = np.random.default_rng(0)
    cases = [((h, w), scale) for h, w in [(64, 64), (3, 200), (200, 3), (1, 1), (37, 90), (500, 375)]
             for scale in [(0.08, 1.0), (0.9, 1.0), (0.2, 0.3)]]
    for (h, w), scale in cases:
        img = Image.new("RGB", (w, h))
        for seed in rng.integers(0, 2**31, 25):
            torch.manual_seed(int(seed))
            ref = T.RandomResizedCrop.get_params(img, list(scale), [3 / 4, 4 / 3])
            nxt_ref = torch.rand(1)
            torch.manual_seed(int(seed))
            assert rrc_params(h, w, scale) == tuple(ref), ((h, w), scale, seed)
            assert torch.equal(torch.rand(1), nxt_ref)
