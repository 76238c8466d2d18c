import math

import torch

from invrender.color import linear_to_srgb, srgb_to_linear
from invrender.metrics import psnr, ssim


def test_psnr_known_mse_and_mask():
    a = torch.zeros(8, 8, 3)
    b = torch.full((8, 8, 3), 0.1)
    assert math.isclose(psnr(a, b), 20.0, rel_tol=1e-5)  # mse 0.01
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:4] = True
    b2 = b.clone()
    b2[4:] = 1.0  # errors outside the mask are ignored
    assert math.isclose(psnr(a, b2, mask), 20.0, rel_tol=1e-5)
    assert psnr(a, b2) < 10


def test_ssim_identity_and_decrease():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 32, 3, generator=g)
    assert math.isclose(float(ssim(x, x)), 1.0, abs_tol=1e-6)
    noisy = (x + 0.2 * torch.randn(32, 32, 3, generator=g)).clamp(0, 1)
    assert float(ssim(noisy, x)) < 0.9


def test_srgb_round_trip():
    x = torch.linspace(0, 1, 101)
    torch.testing.assert_close(linear_to_srgb(srgb_to_linear(x)), x, atol=1e-6, rtol=0)
    assert abs(float(srgb_to_linear(torch.tensor(0.5))) - 0.21404) < 1e-4
