"""What every exporter shares: undoing the reader's normalization, and output paths that fail early.

The readers map the capture's coordinates into a normalized training frame with a similarity
``x_norm = s R x_cap + t`` (:attr:`invrender.data.scene.SceneData.normalization`; for
NeRF-synthetic / TensoIR it is the identity, for nerfstudio / COLMAP a uniform scale and a
translation, times nerfstudio's ``applied_transform`` rotation when the JSON has one). Exports go
back to the capture frame, so :class:`Similarity` splits the matrix into ``s``, ``R``, ``t`` and
carries points, Gaussian scales, quaternions and SH coefficients across.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from invrender.splat.sh import sh_basis

# orthonormality tolerance of the rotation part: the matrix went through float32 and JSON
_ORTHO_TOL = 1e-4


@dataclass(frozen=True)
class Similarity:
    """The reader's normalization ``x_norm = scale * rotation @ x_cap + translation`` (float64)."""

    scale: float
    """Uniform scale ``s`` > 0 (capture units -> normalized units)."""
    rotation: np.ndarray  # [3, 3] proper rotation R (capture axes -> normalized axes)
    translation: np.ndarray  # [3]

    @classmethod
    def from_matrix(cls, matrix) -> Similarity:
        """Split a [4, 4] normalization; ``ValueError`` for anything but a similarity without reflection
        (a Gaussian's quaternion cannot carry a reflection or a shear)."""
        M = np.asarray(matrix.detach().cpu() if isinstance(matrix, Tensor) else matrix, dtype=np.float64)
        if M.shape != (4, 4) or not np.isfinite(M).all():
            raise ValueError(f"normalization must be a finite [4, 4] matrix, got shape {M.shape}")
        if not np.allclose(M[3], [0, 0, 0, 1], atol=1e-9):
            raise ValueError(f"normalization is not affine (last row {M[3].tolist()})")
        L = M[:3, :3]
        det = float(np.linalg.det(L))
        if det <= 0:
            raise ValueError(f"normalization has determinant {det:.3g}: a reflection or a collapse cannot be undone")
        s = det ** (1.0 / 3.0)
        R = L / s
        err = float(np.abs(R.T @ R - np.eye(3)).max())
        if err > _ORTHO_TOL:
            raise ValueError(f"normalization is not a similarity (non-uniform scale or shear, error {err:.2g})")
        return cls(s, R, M[:3, 3].copy())

    @property
    def has_rotation(self) -> bool:
        return not np.allclose(self.rotation, np.eye(3), atol=1e-7)

    def to_capture(self, points: Tensor) -> Tensor:
        """Points ``[P, 3]`` from the normalized frame to the capture frame (same dtype)."""
        p = points.detach().double()
        R = torch.from_numpy(self.rotation)
        t = torch.from_numpy(self.translation)
        # x_cap = R^T (x_norm - t) / s; row vectors: (x - t) R / s
        return (((p - t) @ R) / self.scale).to(points.dtype)

    def to_normalized(self, points: Tensor) -> Tensor:
        """Points ``[P, 3]`` from the capture frame to the normalized frame (same dtype)."""
        p = points.detach().double()
        R = torch.from_numpy(self.rotation)
        t = torch.from_numpy(self.translation)
        return (self.scale * p @ R.T + t).to(points.dtype)

    def inverse(self) -> Similarity:
        """The map capture <- normalized as a :class:`Similarity` (so readers reuse the same code)."""
        Rt = self.rotation.T
        return Similarity(1.0 / self.scale, Rt, -(Rt @ self.translation) / self.scale)


def rotmat_to_quat(R: np.ndarray) -> np.ndarray:
    """Unit quaternion wxyz [4] of a proper rotation [3, 3] (Shepperd's method: the largest of the
    four diagonal combinations is the pivot, so no division by a small number)."""
    R = np.asarray(R, dtype=np.float64)
    tr = np.trace(R)
    cands = [tr, R[0, 0], R[1, 1], R[2, 2]]
    k = int(np.argmax(cands))
    if k == 0:
        w = math.sqrt(1.0 + tr) / 2
        q = [w, (R[2, 1] - R[1, 2]) / (4 * w), (R[0, 2] - R[2, 0]) / (4 * w), (R[1, 0] - R[0, 1]) / (4 * w)]
    elif k == 1:
        x = math.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2]) / 2
        q = [(R[2, 1] - R[1, 2]) / (4 * x), x, (R[0, 1] + R[1, 0]) / (4 * x), (R[0, 2] + R[2, 0]) / (4 * x)]
    elif k == 2:
        y = math.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2]) / 2
        q = [(R[0, 2] - R[2, 0]) / (4 * y), (R[0, 1] + R[1, 0]) / (4 * y), y, (R[1, 2] + R[2, 1]) / (4 * y)]
    else:
        z = math.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1]) / 2
        q = [(R[1, 0] - R[0, 1]) / (4 * z), (R[0, 2] + R[2, 0]) / (4 * z), (R[1, 2] + R[2, 1]) / (4 * z), z]
    q = np.asarray(q)
    return q / np.linalg.norm(q)


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product ``a * b`` of wxyz quaternions ``[..., 4]`` (rotation b first, then a)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )


def rotate_quats(quats: Tensor, R: np.ndarray) -> Tensor:
    """Quaternions ``[N, 4]`` (wxyz, unnormalized: their norm is kept) of Gaussians whose frame is
    rotated by ``R`` [3, 3]: the new local-to-world rotation is ``R @ rotmat(q)``."""
    qR = torch.from_numpy(rotmat_to_quat(R)).to(torch.float64)
    return quat_multiply(qR.expand(quats.shape[0], 4), quats.detach().double()).to(quats.dtype)


def _fibonacci_sphere(n: int) -> Tensor:
    """``n`` well-spread unit directions [n, 3] (float64)."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    phi = i * math.pi * (3 - math.sqrt(5))
    r = torch.sqrt(1 - z * z)
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=-1)


def sh_rotation_matrix(degree: int, R: np.ndarray) -> Tensor:
    """Matrix ``D`` [K, K] (K = (degree+1)^2, float64) with ``f'(d) = f(R^T d)`` for SH functions:
    the coefficients ``c`` [K] of ``f`` become ``D @ c``, those of the function seen in a frame
    rotated by ``R``. Each SH band is closed under rotation, so fitting ``D`` by least squares on
    many directions is exact (up to round-off); it uses the project's own basis (3DGS signs), so
    it can never disagree with the renderer's convention."""
    d = _fibonacci_sphere(256)  # [M, 3]
    Rm = torch.from_numpy(np.asarray(R, dtype=np.float64))
    A = sh_basis(degree, d)  # [M, K]: basis at the new directions
    B = sh_basis(degree, d @ Rm)  # [M, K]: the old function is looked up at R^T d (row vectors: d R)
    return torch.linalg.lstsq(A, B).solution  # [K, K]


def rotate_sh(coeffs: Tensor, R: np.ndarray) -> Tensor:
    """SH coefficients ``[N, K, 3]`` (K in 1, 4, 9, 16, DC included) for a frame rotated by ``R``."""
    K = coeffs.shape[1]
    degree = round(math.sqrt(K)) - 1
    if (degree + 1) ** 2 != K or degree > 3:
        raise ValueError(f"SH coefficients must hold 1, 4, 9 or 16 bases, got {K}")
    if degree == 0:
        return coeffs.clone()
    D = sh_rotation_matrix(degree, R)
    return torch.einsum("jk,nkc->njc", D, coeffs.detach().double()).to(coeffs.dtype)


# ------------------------------------------------------------------------------------------
# output paths and files
# ------------------------------------------------------------------------------------------


def prepare_output(path: Path, suffixes: tuple[str, ...], what: str) -> Path:
    """Check an output file path before any work: the suffix, and a folder that exists or can be
    made. Raises ``ValueError`` naming the path (the CLI prints it as one line)."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"{what} must be written to a {' or '.join(suffixes)} file, got {path}")
    if path.is_dir():
        raise ValueError(f"cannot write {what} to {path}: it is a directory")
    parent = path.parent
    ancestor = parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise ValueError(f"cannot write {what} to {path}: {ancestor} is a file, not a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot write {what} to {path}: cannot create folder {parent} ({e.strerror or e})") from e
    if not _writable(parent):
        raise ValueError(f"cannot write {what} to {path}: folder {parent} is not writable")
    return path


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)
