"""Real spherical harmonics up to degree 3, in the basis and sign convention of the 3DGS reference,
so that SH coefficients exported to a .ply render identically in other splat viewers."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from invrender.splat.project import resolve_backend

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


def sh_colors(degree: int, coeffs: Tensor, dirs: Tensor, backend: str = "torch") -> Tensor:
    """Display colour ``(eval_sh(degree, coeffs, dirs) + 0.5).clamp(min=0)`` [N, 3], as 3DGS.

    ``coeffs`` [N, K, 3] (K >= (degree+1)^2), ``dirs`` [N, 3] unit view directions, same dtype
    and device. ``backend``: ``torch`` (this module's ops, autograd), ``native`` (one fused kernel
    per pass, ``cuda/project.h``) or ``auto`` (native for float32/float64 on CPU/CUDA). The native
    kernel treats ``dirs`` as constants (as :func:`~invrender.splat.gaussians.render_view`
    detaches them): ``native`` refuses ``dirs`` that require grad, ``auto`` then uses torch.
    """
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree must be in 0..3, got {degree}")
    if coeffs.ndim != 3 or coeffs.shape[-1] != 3:
        raise ValueError(f"coeffs must be [N, K, 3], got {tuple(coeffs.shape)}")
    if dirs.shape != (coeffs.shape[0], 3):
        raise ValueError(f"dirs must be [N, 3] with N={coeffs.shape[0]}, got {tuple(dirs.shape)}")
    k = num_sh_bases(degree)
    if coeffs.shape[1] < k:
        raise ValueError(f"coeffs hold {coeffs.shape[1]} bases, degree {degree} needs {k}")
    impl = resolve_backend(backend, coeffs.device, coeffs.dtype, dirs.requires_grad)
    if impl == "native":
        if dirs.requires_grad:
            raise ValueError("backend='native' gives no gradient w.r.t. dirs; detach them or use backend='torch'")
        from invrender.splat.native import NativeSHColors  # builds the extension on first use

        # directions are constants read as raw buffers: match the coefficients' dtype and device
        # (a float64 camera with float32 parameters is fine)
        dirs = dirs.to(device=coeffs.device, dtype=coeffs.dtype).contiguous()
        return NativeSHColors.apply(degree, coeffs.contiguous(), dirs)
    return (eval_sh(degree, coeffs, dirs) + 0.5).clamp(min=0.0)
