"""Gaussian low-pass / high-pass filters on image batches (SGM's ``hp`` views and ``blur`` fill).

All functions are pure, batched and run on the device and dtype of their input.

Design choices
--------------
* The 2-D Gaussian is separable, so :func:`gaussian_blur` runs two depthwise 1-D convolutions
  (k×1 then 1×k): 2k instead of k² multiply-adds per pixel (31×31 fill blur: 62 vs 961).
* **Reflect padding** (``a b c | b a``, the edge pixel is not repeated), as torchvision's
  ``gaussian_blur``. Zero padding would darken the border and give the high-pass a strong
  artificial frame; replicate padding over-weights the edge pixel. When an image side is not
  larger than the half-kernel (reflect is impossible, e.g. a 31-tap blur on a 12-px image) that
  side falls back to replicate padding.
* The blur is computed as ``ref + blur(x − ref)`` with ``ref`` the top-left pixel of each
  image/channel. Mathematically identical (the kernel sums to 1), but a constant image comes
  out bit-exactly constant and its high-pass is exactly 0 (a plain convolution leaves
  ~1e-8 of rounding noise because the float kernel does not sum to exactly 1).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def _check_kernel(kernel_size: int, sigma: float) -> None:
    if int(kernel_size) != kernel_size or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"gaussian kernel_size must be a positive odd integer, got {kernel_size!r}")
    if not sigma > 0:
        raise ValueError(f"gaussian sigma must be > 0, got {sigma!r}")


def gaussian_kernel1d(kernel_size: int, sigma: float, dtype: torch.dtype = torch.float32,
                      device: Optional[torch.device] = None) -> torch.Tensor:
    """Normalised 1-D Gaussian taps ``exp(-d²/2σ²) / Σ``, d = −(k−1)/2 … (k−1)/2. Shape: (k,)."""
    _check_kernel(kernel_size, sigma)
    half = (kernel_size - 1) / 2.0
    d = torch.linspace(-half, half, kernel_size, dtype=torch.float64)
    g = torch.exp(-0.5 * (d / float(sigma)) ** 2)
    return (g / g.sum()).to(dtype=dtype, device=device)


def gaussian_kernel2d(kernel_size: int, sigma: float, dtype: torch.dtype = torch.float32,
                      device: Optional[torch.device] = None) -> torch.Tensor:
    """Normalised 2-D Gaussian kernel (outer product of :func:`gaussian_kernel1d`). Shape: k×k."""
    g = gaussian_kernel1d(kernel_size, sigma, dtype=torch.float64)
    return torch.outer(g, g).to(dtype=dtype, device=device)


def _pad_axis(x: torch.Tensor, pad: int, axis: int) -> torch.Tensor:
    """Pad ``x`` (B×C×H×W) by ``pad`` on both sides of ``axis`` (2 = H, 3 = W)."""
    if pad == 0:
        return x
    mode = "reflect" if x.shape[axis] > pad else "replicate"
    spec = (pad, pad, 0, 0) if axis == 3 else (0, 0, pad, pad)
    return F.pad(x, spec, mode=mode)


def gaussian_blur(x: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Depthwise Gaussian blur with reflect padding (see the module docstring).

    Args:
        x: B×C×H×W float images (any device / float dtype).
        kernel_size: odd number of taps per axis; sigma: standard deviation in pixels.
    Returns:
        B×C×H×W, same dtype and device.
    """
    if x.dim() != 4:
        raise ValueError(f"gaussian_blur expects B×C×H×W, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"gaussian_blur expects a float tensor, got {x.dtype}")
    _check_kernel(kernel_size, sigma)
    b, c, h, w = x.shape
    pad = kernel_size // 2
    ref = x[:, :, :1, :1]
    y = x - ref
    g = gaussian_kernel1d(kernel_size, sigma, dtype=x.dtype, device=x.device)
    y = F.conv2d(_pad_axis(y, pad, 2), g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    y = F.conv2d(_pad_axis(y, pad, 3), g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return y + ref


def highpass(x: torch.Tensor, kernel_size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """SGM's high-pass view ``x − GaussBlur(x; k, σ)``. x: B×C×H×W → B×C×H×W."""
    return x - gaussian_blur(x, kernel_size, sigma)


class HighPass(nn.Module):
    """:func:`highpass` as a parameter-free module, usable inside a transform pipeline.

    Accepts one image C×H×W (torchvision transform, after ``Normalize``) or a batch B×C×H×W.
    The linear probe of an SGM ``hp`` model must apply it to train *and* val images.
    """

    def __init__(self, kernel_size: int = 11, sigma: float = 5.0):
        super().__init__()
        _check_kernel(kernel_size, sigma)
        self.kernel_size = int(kernel_size)
        self.sigma = float(sigma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            return highpass(x.unsqueeze(0), self.kernel_size, self.sigma).squeeze(0)
        if x.dim() == 4:
            return highpass(x, self.kernel_size, self.sigma)
        raise ValueError(f"HighPass expects C×H×W or B×C×H×W, got shape {tuple(x.shape)}")

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, sigma={self.sigma}"
