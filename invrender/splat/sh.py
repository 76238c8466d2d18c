"""Real spherical harmonics up to degree 3, in the basis and sign convention of the 3DGS reference,
so that SH coefficients exported to a .ply render identically in other splat viewers."""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Normalization constants of the real SH basis Y_lm (l <= 3).
C0 = 0.5 / math.sqrt(math.pi)
C1 = math.sqrt(3.0 / (4.0 * math.pi))
C2 = (
    0.5 * math.sqrt(15.0 / math.pi),
    -0.5 * math.sqrt(15.0 / math.pi),
    0.25 * math.sqrt(5.0 / math.pi),
    -0.5 * math.sqrt(15.0 / math.pi),
    0.25 * math.sqrt(15.0 / math.pi),
)
C3 = (
    -0.25 * math.sqrt(35.0 / (2.0 * math.pi)),
    0.5 * math.sqrt(105.0 / math.pi),
    -0.25 * math.sqrt(21.0 / (2.0 * math.pi)),
    0.25 * math.sqrt(7.0 / math.pi),
    -0.25 * math.sqrt(21.0 / (2.0 * math.pi)),
    0.25 * math.sqrt(105.0 / math.pi),
    -0.25 * math.sqrt(35.0 / (2.0 * math.pi)),
)


def num_sh_bases(degree: int) -> int:
    return (degree + 1) ** 2


def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """Basis values [..., (degree+1)^2] for unit directions [..., 3]."""
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree must be in 0..3, got {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, C0)]
    if degree >= 1:
        out += [-C1 * y, C1 * z, -C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [C2[0] * xy, C2[1] * yz, C2[2] * (2 * zz - xx - yy), C2[3] * xz, C2[4] * (xx - yy)]
    if degree >= 3:
        out += [
            C3[0] * y * (3 * xx - yy),
            C3[1] * xy * z,
            C3[2] * y * (4 * zz - xx - yy),
            C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            C3[4] * x * (4 * zz - xx - yy),
            C3[5] * z * (xx - yy),
            C3[6] * x * (xx - 3 * yy),
        ]
    return torch.stack(out, dim=-1)


def eval_sh(degree: int, coeffs: Tensor, dirs: Tensor) -> Tensor:
    """Colour [N, 3] from coefficients [N, K, 3] (K >= (degree+1)^2; extra ones ignored) and
    unit view directions [N, 3] (from the camera towards the Gaussian)."""
    k = num_sh_bases(degree)
    if coeffs.shape[-2] < k:
        raise ValueError(f"coeffs hold {coeffs.shape[-2]} bases, degree {degree} needs {k}")
    basis = sh_basis(degree, dirs)  # [N, k]
    return (basis[..., :, None] * coeffs[..., :k, :]).sum(dim=-2)


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    """DC coefficient that renders display colour ``rgb`` (colour = SH + 0.5, as in 3DGS)."""
    return (rgb - 0.5) / C0
