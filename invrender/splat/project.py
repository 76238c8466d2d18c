"""EWA projection of 3D Gaussians to screen space (Zwicker et al. 2001; Kerbl et al. 2023, eq. 5).

Two implementations with the same signature and the same math (``backend=``):

- ``torch``: vectorized torch with autograd, any device; the reference twin;
- ``native``: fused per-Gaussian forward and backward kernels (``cuda/project.h``, CPU OpenMP or
  CUDA, JIT-built on first use), which avoid the dozens of small elementwise ops of the twin;
- ``auto``: ``native`` for float32/float64 tensors on CPU or CUDA, else ``torch``.

The output feeds :func:`invrender.splat.composite.composite` for every rasterizer backend, so all
of them see the same 2D Gaussians and only the per-pixel compositing differs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class Projected(NamedTuple):
    means2d: Tensor  # [N, 2] pixel coordinates, pixel (i, j) has its centre at (j + 0.5, i + 0.5)
    conics: Tensor  # [N, 3] (a, b, c): upper triangle of the inverse 2D covariance
    depths: Tensor  # [N] camera-space z
    radii: Tensor  # [N] int32, 3-sigma screen radius in pixels; 0 = culled


BACKENDS = ("auto", "torch", "native")
_NATIVE_DTYPES = (torch.float32, torch.float64)


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype, constants_need_grad: bool) -> str:
    """``torch`` or ``native`` for ``backend`` in :data:`BACKENDS` (shared with :mod:`.sh`).

    ``auto`` only picks ``native`` where it computes the same gradients as the twin: float32 or
    float64 on CPU or CUDA, and no gradient wanted for what the kernels treat as constants.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    supported = device.type in ("cpu", "cuda") and dtype in _NATIVE_DTYPES
    if backend == "auto":
        return "native" if supported and not constants_need_grad else "torch"
    if backend == "native" and not supported:
        raise ValueError(f"backend='native' needs float32/float64 on CPU or CUDA, got {dtype} on {device}")
    return backend


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] from (unnormalized) quaternions [..., 4] in wxyz order."""
    q = quats / quats.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(q.shape[:-1] + (3, 3))


def shortest_axes(quats: Tensor, scales: Tensor) -> Tensor:
    """The local axis of each Gaussian's smallest scale ``[N, 3]`` (world space, sign from the
    quaternion) from quats [N, 4] (wxyz, unnormalized) and scales [N, 3] (log or activated: only
    their order is read). Differentiable through ``quats``; the choice of axis is not."""
    R = quat_to_rotmat(quats)  # [N, 3, 3], columns are the local axes
    idx = scales.detach().argmin(dim=-1)  # [N]
    return R.gather(2, idx[:, None, None].expand(-1, 3, 1))[..., 0]


def covariance_3d(quats: Tensor, scales: Tensor) -> Tensor:
    """World covariance R S S^T R^T [N, 3, 3] from quats [N, 4] (wxyz) and scales [N, 3] (activated)."""
    M = quat_to_rotmat(quats) * scales[..., None, :]  # [N, 3, 3] = R S
    return M @ M.transpose(-1, -2)


def project_gaussians(
    means: Tensor,  # [N, 3] world
    quats: Tensor,  # [N, 4] wxyz
    scales: Tensor,  # [N, 3] activated (positive)
    viewmat: Tensor,  # [4, 4] world-to-camera, OpenCV axes
    K: Tensor,  # [3, 3] pixel intrinsics
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    backend: str = "torch",
) -> Projected:
    """Project Gaussians with the local affine (Jacobian) approximation of the perspective map.

    ``eps2d`` dilates the 2D covariance by 0.3 px as the 3DGS reference does, so a Gaussian never
    gets thinner than a pixel. Like that reference, the Jacobian is evaluated at a mean clamped to
    1.3x the field of view, which keeps Gaussians far off-screen from exploding. Gaussians behind
    ``near_plane``, with a degenerate 2D covariance, or whose 3-sigma box misses the image get
    ``radii == 0`` (and finite dummy conics, so no NaN reaches the gradients).

    ``backend`` picks the implementation (module docstring); both give gradients w.r.t.
    ``means``, ``quats`` (raw, unnormalized) and ``scales``. The native kernels treat ``viewmat``
    and ``K`` as constants, so ``backend="native"`` refuses them requiring grad and ``"auto"``
    then falls back to torch.
    """
    if means.ndim != 2 or means.shape[-1] != 3:
        raise ValueError(f"means must be [N, 3], got {tuple(means.shape)}")
    if quats.shape != (means.shape[0], 4):
        raise ValueError(f"quats must be [N, 4] with N={means.shape[0]}, got {tuple(quats.shape)}")
    if scales.shape != means.shape:
        raise ValueError(f"scales must be [N, 3] with N={means.shape[0]}, got {tuple(scales.shape)}")
    if viewmat.shape != (4, 4) or K.shape != (3, 3):
        raise ValueError(f"viewmat must be [4, 4] and K [3, 3], got {tuple(viewmat.shape)} and {tuple(K.shape)}")
    camera_grad = viewmat.requires_grad or K.requires_grad
    impl = resolve_backend(backend, means.device, means.dtype, camera_grad)
    if impl == "native":
        if camera_grad:
            raise ValueError("backend='native' gives no gradient w.r.t. viewmat / K; use backend='torch'")
        for name, t in (("quats", quats), ("scales", scales)):
            if t.dtype != means.dtype or t.device != means.device:
                raise ValueError(f"{name} must be {means.dtype} on {means.device} like means, got {t.dtype} on {t.device}")
        from invrender.splat.native import NativeProject  # builds the extension on first use

        # the kernels read the camera as raw buffers of the means' dtype, on their device
        cam = [m.detach().to(device=means.device, dtype=means.dtype).contiguous() for m in (viewmat, K)]
        means2d, conics, depths, radii = NativeProject.apply(
            means.contiguous(), quats.contiguous(), scales.contiguous(), cam[0], cam[1],
            int(width), int(height), near_plane, far_plane, eps2d,
        )
        return Projected(means2d, conics, depths, radii)
    return _project_torch(means, quats, scales, viewmat, K, width, height, near_plane, far_plane, eps2d)


def _project_torch(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    viewmat: Tensor,  # [4, 4]
    K: Tensor,  # [3, 3]
    width: int,
    height: int,
    near_plane: float,
    far_plane: float,
    eps2d: float,
) -> Projected:
    """The torch twin of the native kernels (``cuda/project.h``): same math, autograd."""
    R = viewmat[:3, :3]  # [3, 3]
    t = viewmat[:3, 3]  # [3]
    p = means @ R.T + t  # [N, 3] camera space
    x, y, z = p.unbind(-1)
    in_depth = (z > near_plane) & (z < far_plane)  # [N]
    z_safe = torch.where(in_depth, z, torch.ones_like(z))

    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    # Evaluate the Jacobian at the mean clamped to the frustum widened by 30 % of the image on each
    # side (as 3DGS): far off-screen Gaussians otherwise get huge, useless 2D footprints.
    tx = z_safe * (x / z_safe).clamp(-(cx + 0.3 * width) / fx, (width - cx + 0.3 * width) / fx)
    ty = z_safe * (y / z_safe).clamp(-(cy + 0.3 * height) / fy, (height - cy + 0.3 * height) / fy)
    rz = 1.0 / z_safe
    # cov2d = J W Sigma W^T J^T with Sigma = (R S)(R S)^T, computed as U U^T with U = J W R S
    # [N, 2, 3]: row-wise products instead of chained batched 3x3 matmuls, which are several
    # times slower on CPU in autograd.
    M = quat_to_rotmat(quats) * scales[:, None, :]  # [N, 3, 3] = R S
    T = torch.matmul(R, M)  # [N, 3, 3] = W R S
    j02 = -fx * tx * rz * rz  # [N]
    j12 = -fy * ty * rz * rz
    U0 = (fx * rz)[:, None] * T[:, 0] + j02[:, None] * T[:, 2]  # [N, 3]
    U1 = (fy * rz)[:, None] * T[:, 1] + j12[:, None] * T[:, 2]  # [N, 3]
    a = (U0 * U0).sum(-1) + eps2d
    b = (U0 * U1).sum(-1)
    c = (U1 * U1).sum(-1) + eps2d
    det = a * c - b * b  # [N]
    valid = in_depth & (det > 1e-12)
    det_safe = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)  # [N, 3]
    conics = torch.where(valid[:, None], conics, torch.ones_like(conics))

    mid = 0.5 * (a + c)
    lam = mid + torch.sqrt((mid * mid - det_safe).clamp(min=0.0))  # larger eigenvalue (radius is detached)
    radius = torch.ceil(3.0 * torch.sqrt(lam.detach()))  # [N]

    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], dim=-1)  # [N, 2]
    m2 = means2d.detach()
    on_screen = (
        (m2[:, 0] + radius > 0) & (m2[:, 0] - radius < width) & (m2[:, 1] + radius > 0) & (m2[:, 1] - radius < height)
    )
    keep = valid & on_screen & torch.isfinite(radius)
    radii = torch.where(keep, radius, torch.zeros_like(radius)).to(torch.int32)
    means2d = torch.where(keep[:, None], means2d, torch.zeros_like(means2d))
    return Projected(means2d, conics, torch.where(keep, z, torch.zeros_like(z)), radii)
