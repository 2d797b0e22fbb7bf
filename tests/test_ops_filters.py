"""harl.ops.filters: Gaussian low-pass / high-pass (SGM's ``hp`` views and ``blur`` fill, docs/methods/sgm.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harl.ops.filters import HighPass, gaussian_blur, gaussian_kernel1d, gaussian_kernel2d, highpass


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
