"""Baked visibility: per-Gaussian visibility of the sky for the diffuse term.

The diffuse shading of a Gaussian integrates the environment over the cosine-weighted hemisphere
around its normal; the scene itself blocks part of that hemisphere (inside a cup, under a ledge).
:func:`bake_ambient_occlusion` estimates, once and without gradients, the cosine-weighted
fraction of the hemisphere that reaches the sky, ``AO = (1/pi) int_H T(w) (n.w) dw``, where
``T(w)`` is the transmittance of the Gaussian scene along the ray leaving the Gaussian in
direction ``w``. :func:`bake_visibility_transfer` marches the same rays and keeps *where* the sky
is blocked, as SH coefficients of ``T(w) (n.w)`` (PRD bakes SH visibility too), so that a light
whose bright part is hidden shadows the point (:mod:`invrender.shading.shadowing`). The method, and why:

1. **Voxelize to an optical-density grid.** Tracing rays against every Gaussian is O(N) per ray;
   a dense grid (cubic voxels) over the Gaussians' padded, outlier-robust bounding box makes each
   sample O(1) and is cheap to build. Each Gaussian is treated as a blob of extinction whose
   peak density ``sigma_0`` makes a ray through its centre along its *shortest* axis lose its
   opacity: ``1 - exp(-sigma_0 sqrt(2 pi) s_min) = alpha``. That ties the volume to the splat
   model (an opaque flat surfel becomes an opaque sheet) and gives the Gaussian a total
   "mass" ``int sigma = -log(1 - alpha) 2 pi s_mid s_max`` that stays finite for perfectly flat
   Gaussians. The mass is deposited with trilinear weights; a Gaussian larger than a voxel is
   first split into a separable grid of sub-samples over its 3-sigma box (about one per voxel
   along each axis, weighted by the Gaussian's mass in each cell), so big Gaussians are
   spread over the voxels they cover instead of piling up at their centre. Thick Gaussians
   that would need more than 4096 sub-samples are deposited into a 2x, 4x, ... coarser grid
   (voxels no wider than their thinnest std) that is resampled onto the fine one, which bounds
   the cost without leaving holes; thin ones stay on the fine grid so they stay thin. Deposit and read
   are both trilinear and mass-conserving, so the optical depth across a thin sheet is right
   no matter how the sheet sits relative to the voxels.
2. **March fixed cosine-weighted directions.** ``num_directions`` directions come from a
   Fibonacci spiral on the unit disk lifted to the hemisphere (Malley's method), which is
   cosine-distributed, so AO is the plain mean of the per-direction transmittance. The same
   deterministic pattern is rotated into each normal's frame (Duff et al. 2017), so the bake
   is noise-free and repeatable. Rays start ``offset`` voxels (plus twice the Gaussian's own
   standard deviation along its normal) off the centre along the normal: a trilinear deposit
   read back trilinearly is nonzero up to 1.5 voxels off a thin sheet (depending on how the
   sheet sits between voxel centres), so rays starting closer -- grazing ones especially --
   would run inside the smeared sheet and a surface would occlude itself. The default of two
   voxels clears it; contact occlusion closer than that is lost. Optical depth is accumulated with
   ``torch.nn.functional.grid_sample`` (trilinear) at one-voxel steps up to where the ray
   leaves the grid or reaches ``max_distance``; ``T = exp(-int sigma)``. Rays are marched in
   blocks of steps and dropped once they have left the grid or become opaque, which keeps
   the cost proportional to the free space each ray actually crosses.

Everything runs under ``torch.no_grad`` in float32 on the device of ``means``, chunked over
Gaussians so the working set stays well below 2 GB. On CPU the result is bit-for-bit
repeatable; on CUDA the deposit uses atomic adds, so repeated bakes agree only to float
rounding.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from invrender.splat.project import quat_to_rotmat
from invrender.shading.shadowing import RECORD_SH_SIZES, sphere_directions
from invrender.splat.sh import sh_basis

_MAX_ALPHA = 0.999  # opacity 1 would give infinite extinction; 0.999 is already optical depth 6.9
_TAU_CUTOFF = 9.0  # a ray whose optical depth passed this has T < 1.3e-4: stop marching it
_SPLAT_SIGMAS = 3.0  # a Gaussian's mass is spread over its +-3 sigma box (99.7 % per axis)
_MAX_SPLAT_SAMPLES = 4096  # sub-samples per Gaussian; bigger thick ones go to a coarser grid level
_SPLAT_POINT_BUDGET = 1 << 20  # sub-samples deposited per batch (~150 MB of temporaries)
_BOX_SIGMAS = 2.0  # the grid spans each Gaussian's +-2 sigma extent (95 % of its mass per axis)...
_BOX_QUANTILE = 1e-3  # ...between the 0.1 % and 99.9 % quantiles (drops floaters)
_BOX_PADDING = 0.1  # ...padded by this fraction of its largest side on every face
_MARCH_BLOCK = 16  # steps marched per block before finished rays are dropped
_QUANTILE_MAX = 1 << 20  # torch.quantile refuses huge inputs; subsample the centres above this


@dataclass
class AOConfig:
    """Knobs of the ambient-occlusion bake (:func:`bake_ambient_occlusion`)."""

    grid_resolution: int = 96
    """Voxels along the longest side of the density grid (the other sides keep cubic voxels)."""
    num_directions: int = 64
    """Cosine-weighted hemisphere directions marched per Gaussian (fixed Fibonacci pattern); 64 so the
    degree-3 shadowing transfer is resolved (128 gave the same relighting on the embedded scene)."""
    max_distance: float | None = None
    """Occluders farther than this (world units) are ignored; None marches until the ray leaves the grid."""
    offset: float = 2.0
    """Ray start distance from the centre along the normal, in voxels (on top of twice the Gaussian's
    own standard deviation along the normal), so a Gaussian and its surface do not occlude themselves;
    below ~1.5 flat surfaces start to shadow themselves at grazing directions."""
    chunk: int = 8192
    """Gaussians processed at once; lower it if memory is tight (rays in flight = chunk x num_directions)."""
    indirect: float = 0.5
    """Fraction of the blocked sky given back as light bounced off the object itself (one diffuse
    bounce, which the shading does not trace): the diffuse term uses ``AO + indirect (1 - AO)``
    (:func:`diffuse_visibility`). 0 is plain AO. See the README for how 0.5 was measured."""

    shadow_sh_degree: int | None = 3
    """SH degree (1-3) of the light-dependent shadowing transfer (:func:`bake_visibility_transfer`):
    the diffuse term sees which part of each light is blocked, so a hidden sun casts a (soft)
    shadow. None: ambient occlusion only, the same for every light. The mesh stage and the glTF
    export keep the ambient occlusion."""
    shadow_directions: int = 256
    """Fixed world directions of the sharp shadows (:func:`bake_directional_shadows`), which take
    the place of the transfer's SH share in training, evaluation and relighting (the viewer keeps the
    SH). A degree-3 share rings or leaks around a small sun (a floor behind a wall kept 0.00 and 0.08
    of the light where 0.05 and 0.03 were right; 256 cells: within 0.003). With the true materials
    and lights of the embedded scene they raised the object-pixel relighting from 26.10 to 26.30 dB.
    0: the SH share only."""

    def __post_init__(self) -> None:
        # fail at the command line, not when stage 2 starts
        _check_fraction("ao.indirect", self.indirect)
        if self.shadow_directions < 0:
            raise ValueError(f"ao.shadow-directions must be >= 0 (0: the SH share only), got {self.shadow_directions}")
        if self.shadow_sh_degree is not None and not 1 <= self.shadow_sh_degree <= 3:
            raise ValueError(f"ao.shadow-sh-degree must be 1, 2, 3 or None, got {self.shadow_sh_degree}")

    def bake_kwargs(self) -> dict:
        """The keyword arguments of :func:`bake_ambient_occlusion` (everything but ``indirect`` and
        ``shadow_sh_degree``); :func:`bake_visibility_transfer` takes the same plus ``sh_degree``."""
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k not in ("indirect", "shadow_sh_degree", "shadow_directions")}


def diffuse_visibility(ao: Tensor, indirect: float) -> Tensor:
    """The visibility the diffuse term is multiplied by: the sky's share ``ao`` plus ``indirect``
    times the blocked share, a constant stand-in for the light the object reflects onto itself
    (without it, crevices that path tracers fill by inter-reflection come out too dark)."""
    _check_fraction("indirect", indirect)
    return ao + indirect * (1.0 - ao)


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _check_shape(name: str, t: Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != shape:
        want = "[" + ", ".join("N" if i == 0 else str(s) for i, s in enumerate(shape)) + "]"
        raise ValueError(f"{name} must be {want} with N={shape[0]}, got {tuple(t.shape)}")


def cosine_hemisphere_directions(num: int, device: torch.device | None = None) -> Tensor:
    """Deterministic cosine-weighted directions [num, 3] on the +z hemisphere.

    A Fibonacci spiral fills the unit disk evenly (radius sqrt(u), golden-angle azimuths); lifting
    the disk to the hemisphere (z = sqrt(1 - r^2), Malley's method) makes the density
    proportional to cos(theta), so an unweighted mean over the directions is the cosine-weighted
    hemisphere average.
    """
    i = torch.arange(num, dtype=torch.float64, device=device)
    u = (i + 0.5) / num  # [num] in (0, 1): stratified radius^2
    phi = 2.0 * math.pi * torch.remainder(i * (math.sqrt(5.0) - 1.0) / 2.0, 1.0)  # golden angle
    r = u.sqrt()
    dirs = torch.stack([r * phi.cos(), r * phi.sin(), (1.0 - u).sqrt()], dim=-1)  # [num, 3]
    return dirs.float()


def _tangent_frame(n: Tensor) -> tuple[Tensor, Tensor]:
    """Two unit tangents [M, 3] completing unit normals n [M, 3] to an orthonormal basis.

    Duff et al. 2017 ("Building an orthonormal basis, revisited"): branch-free and continuous
    except across the z = 0 plane, with no precision loss near n = -z.
    """
    x, y, z = n.unbind(-1)
    sign = torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))
    a = -1.0 / (sign + z)
    b = x * y * a
    t1 = torch.stack([1.0 + sign * x * x * a, sign * b, -sign * x], dim=-1)
    t2 = torch.stack([b, sign + y * y * a, -y], dim=-1)
    return t1, t2


def _turned_to(local_dirs: Tensor, normals: Tensor) -> Tensor:
    """``[C, D, 3]``: the +z-hemisphere pattern ``local_dirs`` [D, 3] turned into the frame of each
    unit normal [C, 3] (:func:`_tangent_frame`)."""
    t1, t2 = _tangent_frame(normals)
    return (
        local_dirs[None, :, 0:1] * t1[:, None]
        + local_dirs[None, :, 1:2] * t2[:, None]
        + local_dirs[None, :, 2:3] * normals[:, None]
    )


def _std_along(quats: Tensor, scales: Tensor, normals: Tensor) -> Tensor:
    """``[N]``: each Gaussian's own standard deviation along its unit normal, ``||S R^T n||``
    (rays leave twice that off the centre, so a Gaussian does not block itself)."""
    return ((quat_to_rotmat(quats).transpose(1, 2) @ normals[:, :, None]).squeeze(-1) * scales).norm(dim=-1)


def _grid_box(
    means: Tensor, scales: Tensor, quats: Tensor, resolution: int,
) -> tuple[Tensor, float, tuple[int, int, int]]:
    """Origin (centre of voxel 0) [3], voxel size and voxel counts (nx, ny, nz) of the grid.

    The box holds every Gaussian's +-2 sigma extent (so big occluders are not cut off), except for
    the outermost 0.1 % per side, so a few floaters or huge background blobs cannot stretch the grid
    and waste its resolution.
    """
    std = (quat_to_rotmat(quats) * scales[:, None, :]).square().sum(dim=-1).sqrt()  # [N, 3] sqrt(diag cov)
    lo_pts, hi_pts = means - _BOX_SIGMAS * std, means + _BOX_SIGMAS * std  # [N, 3] each
    if means.shape[0] > _QUANTILE_MAX:  # a strided subset estimates the quantiles just as well
        stride = math.ceil(means.shape[0] / _QUANTILE_MAX)
        lo_pts, hi_pts = lo_pts[::stride], hi_pts[::stride]
    lo = torch.quantile(lo_pts, _BOX_QUANTILE, dim=0)  # [3]
    hi = torch.quantile(hi_pts, 1.0 - _BOX_QUANTILE, dim=0)  # [3]
    extent = float((hi - lo).max())
    if not extent > 0:  # one point-like Gaussian (or several in one spot): any small box will do
        extent = 1e-3 * max(1.0, float(means.abs().max()))
        lo, hi = lo - 0.5 * extent, hi + 0.5 * extent
    pad = _BOX_PADDING * extent
    lo, hi = lo - pad, hi + pad
    voxel = (extent + 2.0 * pad) / (resolution - 1)
    counts = ((hi - lo) / voxel).ceil().long().clamp(min=1) + 1  # [3] voxel centres per axis
    nx, ny, nz = (int(c) for c in counts.clamp(max=resolution).tolist())
    return lo, voxel, (nx, ny, nz)


def _deposit(
    density: Tensor,  # [nz * ny * nx, C] flat, accumulated in place
    pos: Tensor,  # [P, 3] voxel coordinates (x, y, z) of the sub-samples
    mass: Tensor,  # [P, C] extinction mass of each sub-sample, in voxel units (times a weight per channel)
    dims: tuple[int, int, int],
) -> None:
    """Trilinear (mass-conserving) deposit of point masses into the flat density grid."""
    nx, ny, nz = dims
    base = pos.floor()
    frac = pos - base  # [P, 3]
    base = base.long()
    for corner in range(8):
        off = torch.tensor([(corner >> 0) & 1, (corner >> 1) & 1, (corner >> 2) & 1], device=pos.device)
        idx = base + off  # [P, 3]
        w = torch.where(off.bool(), frac, 1.0 - frac).prod(dim=-1)[:, None] * mass  # [P, C]
        inside = (
            (idx[:, 0] >= 0) & (idx[:, 0] < nx) & (idx[:, 1] >= 0) & (idx[:, 1] < ny)
            & (idx[:, 2] >= 0) & (idx[:, 2] < nz)
        )  # mass falling outside the grid is dropped: its rays read zero there anyway
        flat = (idx[:, 2] * ny + idx[:, 1]) * nx + idx[:, 0]
        density.index_add_(0, flat[inside], w[inside])


def _splat_subsamples(
    density: Tensor,  # [nz * ny * nx, C] flat grid of this level, accumulated in place
    centres: Tensor,  # [M, 3] Gaussian centres in this level's voxel coordinates
    axes: Tensor,  # [M, 3, 3] R S in this level's voxel units (columns: scaled local axes)
    mass: Tensor,  # [M, C] extinction mass in this level's voxel units (times a weight per channel)
    span: Tensor,  # [M, 2, 3] (lo, hi) of the sampled part of each local axis, in standard deviations
    per_axis: Tensor,  # [M, 3] sub-samples along each local axis
    dims: tuple[int, int, int],
) -> None:
    """Split each Gaussian into a separable grid of weighted sub-samples over (the part inside the
    grid of) its 3-sigma box and deposit them; batched so that at most ~_SPLAT_POINT_BUDGET
    sub-samples are alive at once."""
    device = centres.device
    counts = per_axis.prod(dim=-1)  # [M]
    ends = counts.cumsum(0)  # [M]
    norm = math.erf(_SPLAT_SIGMAS / math.sqrt(2.0))  # Gaussian mass inside +-3 sigma on one axis
    start = 0
    while start < counts.shape[0]:
        done = int(ends[start - 1]) if start > 0 else 0
        stop = max(int(torch.searchsorted(ends, done + _SPLAT_POINT_BUDGET, right=True)), start + 1)
        c = counts[start:stop]
        gid = torch.repeat_interleave(torch.arange(stop - start, device=device), c)  # [P]
        local = torch.arange(int(c.sum()), device=device) - torch.repeat_interleave(c.cumsum(0) - c, c)  # [P]
        n = per_axis[start:stop][gid]  # [P, 3]
        cell = torch.stack([local % n[:, 0], (local // n[:, 0]) % n[:, 1], local // (n[:, 0] * n[:, 1])], -1)
        # cell j of n spans [a + (b - a) j / n, a + (b - a) (j + 1) / n] standard deviations; its
        # weight is the 1-D Gaussian mass of that interval, normalized by the mass of the full
        # +-3 sigma box (so mass is conserved, less what lies outside the grid)
        sp = span[start:stop][gid]  # [P, 2, 3]
        width = (sp[:, 1] - sp[:, 0]) / n.float()  # [P, 3]
        lo = sp[:, 0] + cell.float() * width
        hi = lo + width
        w = (torch.erf(hi / math.sqrt(2.0)) - torch.erf(lo / math.sqrt(2.0))) / (2.0 * norm)  # [P, 3]
        u = 0.5 * (lo + hi)  # [P, 3] cell midpoints in standard deviations
        pos = centres[start:stop][gid] + (axes[start:stop][gid] @ u[:, :, None]).squeeze(-1)  # [P, 3]
        _deposit(density, pos, mass[start:stop][gid] * w.prod(dim=-1)[:, None], dims)
        start = stop


def _density_grid(
    means: Tensor, scales: Tensor, quats: Tensor, opacities: Tensor,
    origin: Tensor, voxel: float, dims: tuple[int, int, int], weights: Tensor | None = None,
) -> Tensor:
    """Optical density per voxel (extinction per voxel length) [nz, ny, nx]; with per-Gaussian
    ``weights`` [N, C], the density of each channel of ``weights`` times the Gaussian's own
    [C, nz, ny, nx] (a colour carried by the density: divided by the plain density, it is the
    density-weighted mean colour of the voxel).

    Gaussians are split into about one sub-sample per voxel along each axis of their 3-sigma box,
    so the deposit has no holes. A thick Gaussian that would need more than _MAX_SPLAT_SAMPLES
    sub-samples is deposited instead into a coarser level (voxels 2, 4, ... times larger, where it
    needs fewer, but never larger than its thinnest standard deviation) that is then trilinearly
    resampled onto the fine grid: big blobs stay smooth and hole-free at a bounded cost, at the
    price of a blur smaller than themselves.
    """
    nx, ny, nz = dims
    device = means.device
    channels = 1 if weights is None else weights.shape[1]
    density = torch.zeros(channels, nz, ny, nx, device=device, dtype=torch.float32)

    s = scales.clamp(min=0.0)  # [N, 3]
    s_sorted = s.sort(dim=-1).values
    tau = -torch.log1p(-opacities.clamp(0.0, _MAX_ALPHA))  # [N] optical depth through the centre
    # mass = int sigma dV = sigma_0 (2 pi)^(3/2) s1 s2 s3 with sigma_0 = tau / (sqrt(2 pi) s_min);
    # written without the division so perfectly flat Gaussians stay finite. Voxel units: / voxel^2.
    mass = tau * 2.0 * math.pi * s_sorted[:, 1] * s_sorted[:, 2] / (voxel * voxel)  # [N]
    keep = (mass > 0).nonzero().squeeze(1)  # [M]
    if keep.numel() == 0:
        return density[0] if weights is None else density
    s_vox = s[keep] / voxel  # [M, 3]
    centres = (means[keep] - origin) / voxel  # [M, 3] fine voxel coordinates
    rot = quat_to_rotmat(quats[keep])  # [M, 3, 3]; columns are the local axes
    axes = rot * s_vox[:, None, :]  # [M, 3, 3] = R S in fine voxels
    mass = mass[keep, None] if weights is None else mass[keep, None] * weights[keep].float()  # [M, C]

    # sample each local axis only over the part of [-3, 3] sigma whose slab meets the grid (grown
    # by the one-voxel reach of the trilinear deposit): a huge background Gaussian then costs
    # about the grid's size, not its own, and keeps ~one sub-sample per voxel (no holes)
    box_half = (torch.tensor(dims, device=device, dtype=torch.float32) - 1.0) / 2.0 + 1.0  # [3]
    to_box = box_half - 1.0 - centres  # [M, 3] from the centre to the grid's middle
    proj = (rot * to_box[:, :, None]).sum(dim=1)  # [M, 3] its coordinate along each local axis
    reach = (rot.abs() * box_half[None, :, None]).sum(dim=1)  # [M, 3] half-width of the box along it
    inv = 1.0 / s_vox.clamp(min=1e-12)
    span = torch.stack([(proj - reach) * inv, (proj + reach) * inv], dim=1)  # [M, 2, 3] in sigmas
    span = span.clamp(-_SPLAT_SIGMAS, _SPLAT_SIGMAS)

    # level k has voxels 2^k fine voxels wide; each Gaussian goes to the finest level where its
    # sub-sample grid (one per voxel across 6 sigma on each axis) fits the per-Gaussian budget
    span_vox = (span[:, 1] - span[:, 0]) * s_vox  # [M, 3] sampled length of each axis, fine voxels
    level = torch.zeros(keep.shape[0], dtype=torch.long, device=device)
    for k in range(1, 32):
        needed = (span_vox / 2.0 ** (k - 1)).ceil().clamp(min=1.0).prod(dim=-1)  # [M]
        over = (level == k - 1) & (needed > _MAX_SPLAT_SAMPLES)
        if not bool(over.any()):
            break
        level[over] = k
    # ...but never with voxels wider than the Gaussian's thinnest std: the coarse level's trilinear
    # blur (std ~0.6 of its voxel) would turn a big flat Gaussian into a thick slab that shadows
    # its own surface. Thin Gaussians therefore stay on the fine grid whatever their size (at most
    # ~6 x (1.7 res)^2 sub-samples each, thanks to the clipping); only thick blobs are coarsened,
    # by less than their thickness.
    thin = s_vox.amin(dim=-1).clamp(min=1.0)  # [M]
    level = torch.minimum(level, thin.log2().floor().long())
    fine_nodes = None
    for k in level.unique().tolist():
        sel = (level == k).nonzero().squeeze(1)
        size = 2.0**k
        dims_k = tuple(math.ceil((d - 1) / size) + 1 for d in dims)  # coarse nodes cover the fine grid
        per_axis = (span_vox[sel] / size).ceil().clamp(min=1.0).long()  # [S, 3]
        flat = torch.zeros(dims_k[2] * dims_k[1] * dims_k[0], channels, device=device, dtype=torch.float32)
        # a coarse cell holds size^3 fine voxels: dividing the mass keeps the optical depth
        _splat_subsamples(flat, centres[sel] / size, axes[sel] / size, mass[sel] / size**3, span[sel], per_axis, dims_k)
        coarse = flat.T.reshape(channels, dims_k[2], dims_k[1], dims_k[0])
        if k == 0:
            density += coarse
            continue
        if fine_nodes is None:  # fine voxel centres as (x, y, z) fine voxel coordinates
            zz, yy, xx = torch.meshgrid(*(torch.arange(d, device=device, dtype=torch.float32) for d in (nz, ny, nx)), indexing="ij")
            fine_nodes = torch.stack([xx, yy, zz], dim=-1)  # [nz, ny, nx, 3]
        to_ndc = _voxel_to_ndc(dims_k, device)
        grid = (fine_nodes / size * to_ndc - 1.0)[None]  # [1, nz, ny, nx, 3]
        density += F.grid_sample(coarse[None], grid, mode="bilinear", align_corners=True)[0]
    return density[0] if weights is None else density


def _voxel_to_ndc(dims: tuple[int, int, int], device) -> Tensor:
    """Scale [3] taking voxel coordinates (x, y, z) to grid_sample's [-1, 1] as ``v * scale - 1``
    (align_corners: -1 / +1 are the end voxel centres) on a grid of ``dims`` (nx, ny, nz)."""
    return 2.0 / torch.tensor([max(d - 1, 1) for d in dims], device=device, dtype=torch.float32)


def _steps_in_grid(o: Tensor, d: Tensor, dims: tuple[int, int, int], reach: float = math.inf) -> Tensor:
    """One-voxel steps [R] (samples at k + 1/2) of rays o + t d ([R, 3] voxel coordinates, d unit)
    until they leave the grid, whose trilinear reads are nonzero up to one voxel past the end
    centres, or pass ``reach`` voxels."""
    lo = torch.full((3,), -1.0, device=o.device)
    hi = torch.tensor(dims, device=o.device, dtype=torch.float32)
    return _ray_box_exit(o, d, lo, hi).clamp(max=reach).ceil().clamp(min=0).long()


def _ray_box_exit(o: Tensor, d: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Distance [R] along rays o + t d ([R, 3] each) at which they leave the box [lo, hi] (slab test)."""
    safe = torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
    t1 = (lo - o) / safe
    t2 = (hi - o) / safe
    return torch.maximum(t1, t2).amin(dim=-1)  # [R]; negative when the ray never reaches the box


def _density_normals(volume: Tensor, pts: Tensor, to_ndc: Tensor, blur: int = 2, step: float = 1.5) -> Tensor:
    """Outward normals [N, 3] at voxel-space points [N, 3]: minus the gradient of the density
    ``volume`` [1, 1, nz, ny, nx] box-blurred ``blur`` times (central differences ``step`` voxels
    apart). Points in empty space get an arbitrary but unit normal (+z)."""
    smooth = volume
    for _ in range(blur):
        smooth = F.avg_pool3d(smooth, 3, stride=1, padding=1, count_include_pad=False)
    eye = torch.eye(3, device=pts.device, dtype=pts.dtype) * step  # [3, 3] offsets (x, y, z)
    probes = torch.cat([pts[:, None] + eye[None], pts[:, None] - eye[None]], dim=1)  # [N, 6, 3]
    grid = (probes * to_ndc - 1.0)[None, :, :, None, :]  # [1, N, 6, 1, 3]
    vals = F.grid_sample(smooth, grid, mode="bilinear", padding_mode="border", align_corners=True)
    vals = vals.view(-1, 6)  # [N, 6]
    grad = vals[:, :3] - vals[:, 3:]  # [N, 3]
    n = -grad
    norm = n.norm(dim=-1, keepdim=True)
    fallback = torch.tensor([0.0, 0.0, 1.0], device=pts.device, dtype=pts.dtype).expand_as(n)
    return torch.where(norm > 1e-12, n / norm.clamp(min=1e-12), fallback)


def _check_bake_inputs(
    means: Tensor, scales: Tensor, quats: Tensor, opacities: Tensor, normals: Tensor | None, grid_resolution: int,
    num_directions: int, max_distance: float | None, offset: float, chunk: int, points: Tensor | None,
    point_normals: Tensor | None,
) -> None:
    if means.ndim != 2 or means.shape[1] != 3:
        raise ValueError(f"means must be [N, 3], got {tuple(means.shape)}")
    n = means.shape[0]
    _check_shape("scales", scales, (n, 3))
    _check_shape("quats", quats, (n, 4))
    _check_shape("opacities", opacities, (n,))
    if normals is not None:
        _check_shape("normals", normals, (n, 3))
    if grid_resolution < 2:
        raise ValueError(f"grid_resolution must be >= 2, got {grid_resolution}")
    if num_directions < 1:
        raise ValueError(f"num_directions must be >= 1, got {num_directions}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0 voxels, got {offset}")
    if max_distance is not None and not max_distance > 0:
        raise ValueError(f"max_distance must be > 0 or None, got {max_distance}")
    if (points is None) != (point_normals is None):
        raise ValueError("points and point_normals go together")
    if points is not None:
        if points.ndim != 2 or points.shape[1] != 3:
            raise ValueError(f"points must be [P, 3], got {tuple(points.shape)}")
        _check_shape("point_normals", point_normals, (points.shape[0], 3))


def _trace_hemispheres(
    means: Tensor, scales: Tensor, quats: Tensor, opacities: Tensor, normals: Tensor | None, *,
    grid_resolution: int, num_directions: int, max_distance: float | None, offset: float, chunk: int,
    points: Tensor | None, point_normals: Tensor | None,
) -> Iterator[tuple[slice, Tensor, Tensor]]:
    """The march shared by the bakes (module docstring): yields, chunk by chunk of query points
    (the Gaussians' centres, or ``points``), their slice, the transmittance ``[C, D]`` along each
    cosine-distributed direction and those directions ``[C, D, 3]`` (world space, unit)."""
    device = means.device
    with torch.no_grad():
        means = means.detach().float()
        scales = scales.detach().float()
        quats = quats.detach().float()
        opacities = opacities.detach().float()

        origin, voxel, dims = _grid_box(means, scales, quats, grid_resolution)
        density = _density_grid(means, scales, quats, opacities, origin, voxel, dims)  # [nz, ny, nx]
        volume = density[None, None]  # [1, 1, nz, ny, nx] for grid_sample
        to_ndc = _voxel_to_ndc(dims, device)
        if points is not None:  # surface points: no Gaussian of their own to step out of
            q_pts, normals = points.detach().float().to(device), point_normals.detach().float().to(device)
            q_own = torch.zeros(q_pts.shape[0], device=device)
        else:
            if normals is None:
                normals = _density_normals(volume, (means - origin) / voxel, to_ndc)
            normals = normals.detach().float()
            q_pts = means
            nrm_all = normals / normals.norm(dim=-1, keepdim=True).clamp(min=1e-12)
            q_own = _std_along(quats, scales, nrm_all)
        n = q_pts.shape[0]
        reach = math.inf if max_distance is None else max_distance / voxel  # in voxels

        local_dirs = cosine_hemisphere_directions(num_directions, device)  # [D, 3]
        for start in range(0, n, chunk):
            sl = slice(start, min(start + chunk, n))
            nrm = normals[sl] / normals[sl].norm(dim=-1, keepdim=True).clamp(min=1e-12)  # [C, 3]
            dirs = _turned_to(local_dirs, nrm)  # [C, D, 3]
            start_vox = offset + 2.0 * q_own[sl] / voxel  # [C]
            o = (q_pts[sl] - origin) / voxel + start_vox[:, None] * nrm  # [C, 3] ray origins, voxels
            o = o[:, None].expand_as(dirs).reshape(-1, 3)  # [R, 3]
            d = dirs.reshape(-1, 3)  # [R, 3]; unit, so one voxel of t is one voxel of distance
            tau = _optical_depth(volume, to_ndc, o, d, _steps_in_grid(o, d, dims, reach))  # [R]
            yield sl, torch.exp(-tau).view(-1, num_directions), dirs


def _optical_depth(volume: Tensor, to_ndc: Tensor, o: Tensor, d: Tensor, n_steps: Tensor) -> Tensor:
    """Optical depth ``[R]`` of the density ``volume`` [1, 1, nz, ny, nx] along rays from ``o``
    [R, 3] (voxel coordinates) in unit directions ``d`` [R, 3], ``n_steps`` [R] one-voxel steps
    each; rays are marched in blocks and dropped once they are opaque."""
    device = o.device
    tau = torch.zeros(o.shape[0], device=device)
    active = (n_steps > 0).nonzero().squeeze(1)
    k0 = 0
    while active.numel() > 0:
        t = k0 + 0.5 + torch.arange(_MARCH_BLOCK, device=device, dtype=torch.float32)  # [K]
        pts = o[active, None, :] + t[None, :, None] * d[active, None, :]  # [A, K, 3]
        grid = (pts * to_ndc - 1.0)[None, :, :, None, :]  # [1, A, K, 1, 3] as (x, y, z)
        sig = F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        sig = sig.view(active.shape[0], _MARCH_BLOCK)  # [A, K]
        valid = t[None, :] < n_steps[active, None].float()  # the last block overshoots
        tau[active] += (sig * valid).sum(dim=1)  # step = 1 voxel and sigma is per voxel
        k0 += _MARCH_BLOCK
        still = (n_steps[active] > k0) & (tau[active] < _TAU_CUTOFF)
        active = active[still]
    return tau


def _bake_per_point(
    means: Tensor, scales: Tensor, quats: Tensor, opacities: Tensor, normals: Tensor | None, columns: int,
    reduce, *, empty_value: float, grid_resolution: int, num_directions: int, max_distance: float | None,
    offset: float, chunk: int, points: Tensor | None, point_normals: Tensor | None,
) -> Tensor:
    """The body of the bakes: check the inputs, march (:func:`_trace_hemispheres`) and keep
    ``reduce(transmittance [C, D], directions [C, D, 3]) -> [C, columns]`` per query point;
    ``empty_value`` everywhere when there are no Gaussians. ``[N or P, columns]`` float32."""
    _check_bake_inputs(means, scales, quats, opacities, normals, grid_resolution, num_directions, max_distance,
                       offset, chunk, points, point_normals)
    count = means.shape[0] if points is None else points.shape[0]
    out = torch.full((count, columns), empty_value, device=means.device, dtype=torch.float32)
    if means.shape[0] == 0:
        return out
    for sl, transmittance, dirs in _trace_hemispheres(
        means, scales, quats, opacities, normals, grid_resolution=grid_resolution, num_directions=num_directions,
        max_distance=max_distance, offset=offset, chunk=chunk, points=points, point_normals=point_normals,
    ):
        out[sl] = reduce(transmittance, dirs)
    return out


def bake_ambient_occlusion(
    means: Tensor,  # [N, 3] world positions
    scales: Tensor,  # [N, 3] activated (exp'd) scales
    quats: Tensor,  # [N, 4] wxyz, not necessarily normalized
    opacities: Tensor,  # [N] activated opacity in (0, 1)
    normals: Tensor | None,  # [N, 3] unit outward normals (per Gaussian), or None: from the density
    *,
    grid_resolution: int = 96,
    num_directions: int = 64,
    max_distance: float | None = None,
    offset: float = 2.0,
    chunk: int = 8192,
    points: Tensor | None = None,  # [P, 3] query points instead of the Gaussians' centres
    point_normals: Tensor | None = None,  # [P, 3] their outward normals
) -> Tensor:
    """Ambient occlusion [N] in [0, 1] of each Gaussian: the cosine-weighted fraction of the
    hemisphere around its normal that sees the sky through the rest of the scene. With
    ``points`` and ``point_normals``, the AO [P] of those surface points (e.g. a mesh's vertices)
    in the same Gaussian scene instead.

    Args:
        means: [N, 3] world-space centres.
        scales: [N, 3] activated standard deviations along the local axes.
        quats: [N, 4] rotations (wxyz, normalized here).
        opacities: [N] activated opacities in (0, 1); clamped to 0.999.
        normals: [N, 3] outward normals (renormalized here), or None to use the direction in
            which the (smoothed) density grid falls fastest at each centre: robust where the
            Gaussians are not yet flat and their shortest axis points anywhere.
        grid_resolution: voxels along the longest side of the density grid.
        num_directions: cosine-weighted directions marched per Gaussian.
        max_distance: world-space reach of the rays; None = until they leave the grid.
        offset: ray start distance along the normal, in voxels, on top of twice the Gaussian's
            own standard deviation along the normal (avoids self-occlusion).
        chunk: Gaussians marched at once (memory ~ chunk x num_directions x 16 x 40 bytes).
        points, point_normals: optional query points and unit outward normals ([P, 3] each);
            their rays start ``offset`` voxels off the point along the normal.

    Returns:
        [N] float32 on ``means.device``; 1 = unoccluded, 0 = fully enclosed. See the module
        docstring for the method.
    """
    ao = _bake_per_point(
        means, scales, quats, opacities, normals, 1, lambda transmittance, _: transmittance.mean(dim=1, keepdim=True),
        empty_value=1.0,  # no Gaussians: nothing blocks the sky
        grid_resolution=grid_resolution, num_directions=num_directions, max_distance=max_distance, offset=offset,
        chunk=chunk, points=points, point_normals=point_normals,
    )
    return ao[:, 0].clamp(0.0, 1.0)


def bake_visibility_transfer(
    means: Tensor,  # [N, 3]
    scales: Tensor,  # [N, 3] activated
    quats: Tensor,  # [N, 4] wxyz
    opacities: Tensor,  # [N] activated
    normals: Tensor | None,  # [N, 3] or None: from the density
    *,
    sh_degree: int = 3,
    grid_resolution: int = 96,
    num_directions: int = 64,
    max_distance: float | None = None,
    offset: float = 2.0,
    chunk: int = 8192,
    points: Tensor | None = None,  # [P, 3] query points instead of the Gaussians' centres
    point_normals: Tensor | None = None,  # [P, 3] their outward normals
) -> Tensor:
    """Shadowing that depends on where the light comes from: per Gaussian, the projection on real
    SH up to ``sh_degree`` of its cosine-weighted visibility, and of the same with nothing in the way,

        T_k = int_H Y_k(w) T(w) (n.w) dw,    U_k = int_H Y_k(w) (n.w) dw   (H: hemisphere around n),

    both estimated over the same ``num_directions`` cosine-distributed directions as
    :func:`bake_ambient_occlusion` (``(pi / D) sum_j Y_k(w_j) T(w_j)``). For a light with SH
    coefficients ``L_k`` (:meth:`EnvironmentLight.sh_coefficients`), ``sum_k T_k L_k`` is the
    irradiance that gets through and ``sum_k U_k L_k`` the irradiance of the open sky (precomputed
    radiance transfer, Sloan et al. 2002); :func:`invrender.shading.shadowing.light_visibility`
    shades with their ratio. Using
    the same directions for both makes their sampling errors largely cancel in the ratio. The plain
    ambient occlusion is ``T_0 / U_0`` exactly.

    With ``points`` and ``point_normals`` (e.g. a mesh's vertices), the same for those surface
    points in the Gaussian scene, as :func:`bake_ambient_occlusion` does.

    Returns:
        ``[N, 2 K]`` (or ``[P, 2 K]``) float32, ``K = (sh_degree + 1)^2``: ``T`` then ``U``.
    """
    if not 1 <= sh_degree <= 3:
        raise ValueError(f"sh_degree must be in 1..3, got {sh_degree} (degree 0 is bake_ambient_occlusion)")
    k = (sh_degree + 1) ** 2

    def project(transmittance: Tensor, dirs: Tensor) -> Tensor:
        basis = sh_basis(sh_degree, dirs) * (math.pi / num_directions)  # [C, D, K]
        return torch.cat([(basis * transmittance[..., None]).sum(dim=1), basis.sum(dim=1)], dim=1)  # [C, 2K]

    return _bake_per_point(
        means, scales, quats, opacities, normals, 2 * k, project, empty_value=0.0,
        grid_resolution=grid_resolution, num_directions=num_directions, max_distance=max_distance, offset=offset,
        chunk=chunk, points=points, point_normals=point_normals,
    )


def transfer_visibility(transfer: Tensor, indirect: float) -> Tensor:
    """Per-Gaussian transfer record ``[N, 2 K + 1]`` from a :func:`bake_visibility_transfer`
    result ``[N, 2 K]``: the transfer, then the bounce fill ``indirect (1 - AO)`` of
    :func:`diffuse_visibility` (light-independent). Read by
    :func:`invrender.shading.shadowing.light_visibility`."""
    _check_fraction("indirect", indirect)
    if transfer.ndim != 2 or transfer.shape[1] % 2 or transfer.shape[1] // 2 not in RECORD_SH_SIZES:
        raise ValueError(f"transfer must be [N, 2 K] with K in {RECORD_SH_SIZES}, got {tuple(transfer.shape)}")
    k = transfer.shape[1] // 2
    ao = (transfer[:, 0] / transfer[:, k].clamp(min=1e-12)).clamp(0.0, 1.0)  # Y_0 is a constant
    return torch.cat([transfer, (indirect * (1.0 - ao))[:, None]], dim=1)


def bake_diffuse_visibility(
    means: Tensor, scales: Tensor, quats: Tensor, opacities: Tensor, normals: Tensor | None, *,
    shadow_sh_degree: int | None, indirect: float, **bake_kwargs,
) -> Tensor:
    """What a run stores as its diffuse visibility, per Gaussian (or per ``points``, see
    ``bake_kwargs``): the transfer record ``[N, 2 K + 1]`` of degree ``shadow_sh_degree``
    (:func:`transfer_visibility`), or with None the ambient ``AO + indirect (1 - AO)`` ``[N, 1]``
    (:func:`diffuse_visibility`). ``bake_kwargs`` go to the bake (:meth:`AOConfig.bake_kwargs`)."""
    geometry = (means, scales, quats, opacities, normals)
    if shadow_sh_degree is None:
        return diffuse_visibility(bake_ambient_occlusion(*geometry, **bake_kwargs), indirect)[:, None]
    return transfer_visibility(bake_visibility_transfer(*geometry, sh_degree=shadow_sh_degree, **bake_kwargs), indirect)


def bake_directional_shadows(
    means: Tensor, scales: Tensor, quats: Tensor, opacities: Tensor, normals: Tensor | None = None, *,
    num_directions: int = 256, grid_resolution: int = 96, max_distance: float | None = None,
    offset: float = 2.0, chunk: int = 8192,
) -> tuple[Tensor, Tensor]:
    """Per Gaussian, the transmittance towards each of ``num_directions`` fixed world directions
    (:func:`sphere_directions`), for sharp light-dependent shadows
    (:class:`invrender.shading.shadowing.DirectionalShadows`).

    The same march as the other bakes (density grid, rays from ``offset`` voxels plus twice the
    Gaussian's own standard deviation off its centre along its outward density normal), but along
    one fixed set of directions for every Gaussian instead of a pattern turned into each normal's
    frame, so that a light is read once per direction for the whole scene. Only the directions in
    front of the normal are marched; the others are stored as blocked (they carry no weight).
    The SH transfer of degree 3 spreads a sun's shadow over tens of degrees; 256 directions give
    cells of about 7 degrees' radius.

    ``normals`` [N, 3]: outward normals, or None for the density's (as the trainer bakes).

    Returns ``(transmittance [N, D] uint8 (255 = open), normals [N, 3])`` on ``means.device``."""
    if num_directions < 1:
        raise ValueError(f"num_directions must be >= 1, got {num_directions}")
    device = means.device
    n = means.shape[0]
    out = torch.zeros(n, num_directions, dtype=torch.uint8, device=device)
    if n == 0:
        return out, torch.zeros(0, 3, device=device)
    with torch.no_grad():
        means, scales, quats, opacities = (t.detach().float() for t in (means, scales, quats, opacities))
        origin, voxel, dims = _grid_box(means, scales, quats, grid_resolution)
        volume = _density_grid(means, scales, quats, opacities, origin, voxel, dims)[None, None]
        to_ndc = _voxel_to_ndc(dims, device)
        if normals is None:
            normals = _density_normals(volume, (means - origin) / voxel, to_ndc)
        normals = normals.detach().float().to(device)
        normals = normals / normals.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        own = _std_along(quats, scales, normals)
        reach = math.inf if max_distance is None else max_distance / voxel
        dirs = sphere_directions(num_directions, device)  # [D, 3]
        for start in range(0, n, chunk):
            sl = slice(start, min(start + chunk, n))
            front = (normals[sl] @ dirs.T) > 0  # [C, D]
            ci, di = front.nonzero(as_tuple=True)
            o = (means[sl] - origin) / voxel + ((offset + 2.0 * own[sl] / voxel)[:, None] * normals[sl])  # [C, 3]
            o, d = o[ci], dirs[di]
            tau = _optical_depth(volume, to_ndc, o, d, _steps_in_grid(o, d, dims, reach))
            block = torch.zeros(front.shape, dtype=torch.uint8, device=device)
            block[ci, di] = (torch.exp(-tau) * 255.0).round().clamp(0, 255).to(torch.uint8)
            out[sl] = block
    return out, normals
