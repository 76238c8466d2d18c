"""Environment light as a cube map, with conversions to and from this project's equirectangular
convention (DESIGN.md, Environment maps) and diffuse irradiance by order-2 spherical harmonics.

Cube layout (OpenGL's): faces +X, -X, +Y, -Y, +Z, -Z, each ``[R, R]``; texel (row i, column j)
of a face has face coordinates s = 2 (j + 0.5) / R - 1 (left to right) and t = 2 (i + 0.5) / R - 1
(top to bottom), and looks along

    +X: (1, -t, -s)   -X: (-1, -t, s)   +Y: (s, 1, t)   -Y: (s, -1, -t)   +Z: (s, -t, 1)   -Z: (-s, -t, -1)

Lookups are bilinear inside a face and clamp at its border (seams are not blended: at 128 texels
a face the error is confined to one texel row).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from invrender.shading.envmap import dir_to_uv
from invrender.splat.sh import sh_basis

# (major axis, sign) per face and how (s, t) enter the direction, as in the table above
_FACE_AXES = ((0, 1.0), (0, -1.0), (1, 1.0), (1, -1.0), (2, 1.0), (2, -1.0))


def cube_directions(resolution: int, dtype=torch.float32, device=None) -> Tensor:
    """Unit direction of every texel centre, ``[6, R, R, 3]``."""
    c = (torch.arange(resolution, dtype=dtype, device=device) + 0.5) * (2.0 / resolution) - 1.0
    t, s = torch.meshgrid(c, c, indexing="ij")  # t: rows (down), s: columns (right)
    one = torch.ones_like(s)
    faces = [
        torch.stack([one, -t, -s], -1),
        torch.stack([-one, -t, s], -1),
        torch.stack([s, one, t], -1),
        torch.stack([s, -one, -t], -1),
        torch.stack([s, -t, one], -1),
        torch.stack([-s, -t, -one], -1),
    ]
    d = torch.stack(faces)
    return d / d.norm(dim=-1, keepdim=True)


def cube_texel_solid_angles(resolution: int, dtype=torch.float64, device=None) -> Tensor:
    """Exact solid angle of each texel ``[R, R]`` (the same on every face); they sum to 4 pi / 6.

    Uses the area of a cube-face rectangle seen from the centre, A(x, y) = atan2(x y, sqrt(x^2 + y^2 + 1)),
    by inclusion-exclusion over the texel's corners.
    """
    edges = torch.linspace(-1.0, 1.0, resolution + 1, dtype=dtype, device=device)
    x0, y0 = edges[:-1][None, :], edges[:-1][:, None]
    x1, y1 = edges[1:][None, :], edges[1:][:, None]

    def area(x, y):
        return torch.atan2(x * y, torch.sqrt(x * x + y * y + 1.0))

    return area(x1, y1) - area(x0, y1) - area(x1, y0) + area(x0, y0)


def direction_to_cube(dirs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Face index [...] (long) and face coordinates s, t [...] in [-1, 1] of directions [..., 3]."""
    x, y, z = dirs.unbind(-1)
    ax, ay, az = x.abs(), y.abs(), z.abs()
    is_x = (ax >= ay) & (ax >= az)
    is_y = ~is_x & (ay >= az)
    face = torch.where(is_x, torch.where(x >= 0, 0, 1), torch.where(is_y, torch.where(y >= 0, 2, 3), torch.where(z >= 0, 4, 5)))
    major = torch.where(is_x, ax, torch.where(is_y, ay, az)).clamp(min=1e-12)
    # invert the table of the module docstring
    s = torch.stack([-z, z, x, x, x, -x], -1).gather(-1, face[..., None])[..., 0] / major
    t = torch.stack([-y, -y, z, -z, -y, -y], -1).gather(-1, face[..., None])[..., 0] / major
    return face, s, t


def sample_cube(cube: Tensor, dirs: Tensor) -> Tensor:
    """Bilinear lookup of a cube map ``[6, R, R, C]`` along directions ``[..., 3]`` -> ``[..., C]``.

    Differentiable w.r.t. the cube texels (and the directions inside a face)."""
    shape = dirs.shape[:-1]
    d = dirs.reshape(-1, 3)
    face, s, t = direction_to_cube(d)
    R = cube.shape[1]
    # one atlas row of 6 faces; keep samples half a texel inside their own face
    half = 1.0 / R
    s = s.clamp(-1 + half, 1 - half)
    t = t.clamp(-1 + half, 1 - half)
    u = (face.to(d.dtype) + 0.5 * (s + 1.0)) / 6.0 * 2.0 - 1.0  # grid_sample's [-1, 1] over the atlas width
    atlas = cube.permute(3, 1, 0, 2).reshape(1, cube.shape[-1], R, 6 * R)  # [1, C, R, 6R]
    grid = torch.stack([u, t], -1)[None, None].to(cube.dtype)  # [1, 1, M, 2]
    out = F.grid_sample(atlas, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, 0].T.reshape(shape + (cube.shape[-1],))


def sample_equirect(img: Tensor, dirs: Tensor) -> Tensor:
    """Bilinear lookup of an equirectangular map ``[H, W, C]`` (DESIGN.md convention) -> ``[..., C]``;
    wraps around in longitude."""
    shape = dirs.shape[:-1]
    uv = dir_to_uv(dirs.reshape(-1, 3).to(img.dtype))
    H, W, C = img.shape
    padded = torch.cat([img[:, -1:], img, img[:, :1]], dim=1)  # one column of wrap on each side
    x = (uv[:, 0] * W + 1.0) / (W + 2) * 2.0 - 1.0
    y = uv[:, 1] * 2.0 - 1.0
    grid = torch.stack([x, y], -1)[None, None]
    out = F.grid_sample(padded.permute(2, 0, 1)[None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, 0].T.reshape(shape + (C,))


def rotate_z(dirs: Tensor, degrees: float) -> Tensor:
    """Rotate directions counter-clockwise about the up axis (+Z) by ``degrees``."""
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    x, y, z = dirs.unbind(-1)
    return torch.stack([c * x - s * y, s * x + c * y, z], -1)


@functools.lru_cache(maxsize=8)
def _sh_projector(resolution: int, order: int, device: str) -> Tensor:
    """Y_k(d) d omega for every texel, ``[(order+1)^2, 6 R^2]`` (float64): SH projection becomes one
    matrix product (an einsum over the broadcast cube was ~100x slower on CPU)."""
    d = cube_directions(resolution, dtype=torch.float64, device=device)  # [6, R, R, 3]
    w = cube_texel_solid_angles(resolution, device=device)[None].expand(6, resolution, resolution)
    Y = sh_basis(order, d)  # [6, R, R, K]
    return (Y * w[..., None]).reshape(-1, Y.shape[-1]).T.contiguous()


class EnvironmentLight(nn.Module):
    """Learnable HDR environment: a cube map ``[6, R, R, 3]`` stored as log radiance (exp activation,
    as PRD), so radiance stays positive and spans orders of magnitude."""

    def __init__(self, resolution: int = 128, init_radiance: float = 0.5):
        super().__init__()
        self.log_radiance = nn.Parameter(torch.full((6, resolution, resolution, 3), math.log(init_radiance)))

    def prefiltered_levels(self, mips) -> list[Tensor]:
        """``mips.levels(self.cube())``, remembered between calls while nothing can change it (no
        gradient recording, same texels): evaluation and relighting shade many views under one
        light, and the prefilter products are most of a frame's cost. Keyed by the mips' settings,
        not the instance: the traced reflections' grid and the shading share one computation."""
        if torch.is_grad_enabled() and self.log_radiance.requires_grad:
            return mips.levels(self.cube())
        key = (mips.key, self.log_radiance.data_ptr(), self.log_radiance._version)
        cached = getattr(self, "_levels_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        levels = mips.levels(self.cube())
        self._levels_cache = (key, levels)
        return levels

    @property
    def resolution(self) -> int:
        return self.log_radiance.shape[1]

    def cube(self) -> Tensor:
        """Linear radiance ``[6, R, R, 3]``."""
        return torch.exp(self.log_radiance)

    def radiance(self, dirs: Tensor) -> Tensor:
        """Radiance arriving from directions ``[..., 3]`` -> ``[..., 3]``."""
        return sample_cube(self.cube(), dirs)

    @classmethod
    def from_equirect(
        cls, img: Tensor, resolution: int = 128, rotation_deg: float = 0.0, intensity: float = 1.0
    ) -> EnvironmentLight:
        """From an equirectangular map ``[H, W, 3]`` (linear), rotated counter-clockwise about +Z by
        ``rotation_deg`` and scaled by ``intensity``."""
        light = cls(resolution)
        d = cube_directions(resolution, dtype=img.dtype)
        # the rotated environment seen along d is the original one seen along R^-1 d
        rad = sample_equirect(img, rotate_z(d, -rotation_deg)) * intensity
        with torch.no_grad():
            light.log_radiance.copy_(torch.log(rad.clamp(min=1e-6)).float())
        return light

    def to_equirect(self, height: int = 256, width: int | None = None) -> Tensor:
        """Equirectangular ``[H, W, 3]`` (W = 2 H by default) in the DESIGN.md convention."""
        from invrender.shading.envmap import direction_grid  # noqa: PLC0415

        width = width or 2 * height
        d = torch.from_numpy(direction_grid(height, width)).to(self.log_radiance.device, self.log_radiance.dtype)
        return sample_cube(self.cube(), d)

    def sh_coefficients(self, order: int = 2) -> Tensor:
        """Projection of the radiance on real SH up to ``order``: ``[(order+1)^2, 3]``
        (sum over texels of L(d) Y(d) d omega, with exact texel solid angles)."""
        Yw = _sh_projector(self.resolution, order, str(self.log_radiance.device))  # [K, 6 R^2] float64
        L = self.cube().reshape(-1, 3).to(torch.float64)  # [6 R^2, 3]
        return (Yw @ L).to(self.log_radiance.dtype)

    def irradiance(self, normals: Tensor) -> Tensor:
        """Diffuse irradiance E(n) = integral of L(l) max(n.l, 0) dl ``[..., 3]`` for unit normals
        ``[..., 3]``, from the order-2 SH projection (Ramamoorthi & Hanrahan 2001): the clamped cosine
        acts per band as A_0 = pi, A_1 = 2 pi / 3, A_2 = pi / 4."""
        coeffs = self.sh_coefficients(2)  # [9, 3]
        band = torch.tensor([math.pi] + [2 * math.pi / 3] * 3 + [math.pi / 4] * 5, dtype=coeffs.dtype, device=coeffs.device)
        Y = sh_basis(2, normals.to(coeffs.dtype))  # [..., 9]
        return (Y * band) @ coeffs
