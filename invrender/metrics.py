"""Image-quality metrics on display-space images in [0, 1], shaped [H, W, 3] or [B, H, W, 3].

SSIM is the usual 11x11 Gaussian-window SSIM (sigma 1.5, Wang et al. 2004) that the 3DGS and
NeRF papers report; the same function is the D-SSIM term of the training loss.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor


def psnr(pred: Tensor, gt: Tensor, mask: Tensor | None = None) -> float:
    """PSNR in dB. ``mask`` [..., H, W] or [..., H, W, 1] restricts the mean to those pixels."""
    err = (pred - gt) ** 2
    if mask is not None:
        m = mask.reshape(mask.shape[: err.ndim - 1] + (1,)).to(err.dtype).expand_as(err)
        if m.sum() == 0:
            return float("nan")
        mse = (err * m).sum() / m.sum()
    else:
        mse = err.mean()
    return float(-10.0 * torch.log10(mse.clamp(min=1e-12)))


def _gaussian_window(size: int, sigma: float, channels: int, device, dtype) -> Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim_map(pred: Tensor, gt: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Per-pixel SSIM [B, C, H', W'] ('valid' windows) of images [B, H, W, C] or [H, W, C]."""
    if pred.ndim == 3:
        pred, gt = pred[None], gt[None]
    x = pred.permute(0, 3, 1, 2)
    y = gt.permute(0, 3, 1, 2)
    c = x.shape[1]
    w = _gaussian_window(window, sigma, c, x.device, x.dtype)
    mu_x = F.conv2d(x, w, groups=c)
    mu_y = F.conv2d(y, w, groups=c)
    sxx = F.conv2d(x * x, w, groups=c) - mu_x**2
    syy = F.conv2d(y * y, w, groups=c) - mu_y**2
    sxy = F.conv2d(x * y, w, groups=c) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))


def ssim(pred: Tensor, gt: Tensor) -> Tensor:
    """Mean SSIM (a scalar tensor, differentiable)."""
    return ssim_map(pred, gt).mean()


class LPIPSUnavailable(RuntimeError):
    pass


def load_lpips(device: str = "cpu"):
    """The LPIPS (AlexNet) metric when the ``lpips`` package and its backbone weights are already on
    this machine; raises :class:`LPIPSUnavailable` saying what is missing otherwise. Nothing is
    downloaded: evaluation reports LPIPS as absent instead."""
    try:
        import lpips  # noqa: PLC0415  (optional, heavy)
    except ImportError as e:
        raise LPIPSUnavailable("the 'lpips' package is not installed (pip install lpips)") from e
    hub = torch.hub.get_dir()
    ckpt = f"{hub}/checkpoints/alexnet-owt-7be5be79.pth"
    import os

    if not os.path.exists(ckpt):
        raise LPIPSUnavailable(f"AlexNet backbone weights not found at {ckpt}; LPIPS needs them locally")
    return lpips.LPIPS(net="alex", verbose=False).to(device).eval()


def lpips_score(model, pred: Tensor, gt: Tensor) -> float:
    with torch.no_grad():
        x = pred.permute(2, 0, 1)[None] * 2 - 1
        y = gt.permute(2, 0, 1)[None] * 2 - 1
        return float(model(x, y).mean())
