"""Traced specular inter-reflection: the part of a mirror lobe that meets the scene, not the sky.

The split-sum specular term reads the environment along the reflection direction. On a shiny
object beside others (the embedded scene's gold sphere mirrors its torus, cube and base) part of
that direction is blocked by the scene, and what is seen there is the scene's own lit surface.
An environment map cannot hold it, and the learned albedo darkens to make up for it.

:class:`ReflectionGrid` keeps the Gaussians' optical density on the visibility bake's grid
(:mod:`invrender.distill.visibility`) and, for one light, the density-weighted outgoing diffuse
radiance of every voxel: each Gaussian's albedo (1 - metallic) / pi x the light's irradiance
along its outward density normal x its shadowing under that light
(:func:`gaussian_radiance`). :func:`trace_reflections` marches one ray per surface point
along the mirror direction, one voxel per step from a few voxels off the surface, and returns
the ray's transmittance ``T`` and the radiance it met ``L = sum_k T_k (1 - exp(-sigma_k)) c_k``
(``c_k``: the voxel's mean colour). :func:`invrender.shading.shade.shade` then uses
``T x prefiltered environment + L`` in the specular term.

With ``hit_specular`` the grid also carries each Gaussian's normal, F0 and roughness, and a ray
adds what the surface it meets reflects of the sky towards it: the split-sum specular of the hit's
mean material, read along the ray's mirror direction off the hit normal (its own occlusion is not
traced). A dielectric seen at a grazing angle, like the base in the gold sphere's lower half,
reflects a good part of the sky; its diffuse colour alone left those reflections 10-30 % too dark.

One ray per point stands for the whole lobe: right for mirrors and glossy metals, an
approximation for rough ones. The traced values carry no gradient; they are refreshed as the
materials and the light change (the trainer does so every few hundred steps).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from invrender.distill.visibility import (
    _density_grid, _density_normals, _grid_box, _std_along, _steps_in_grid, _turned_to, _voxel_to_ndc,
    cosine_hemisphere_directions,
)
from invrender.shading.brdf import base_reflectance
from invrender.shading.light import EnvironmentLight
from invrender.shading.shadowing import is_transfer_record, light_visibility
from invrender.shading.splitsum import specular_albedo

_BLOCK = 16  # steps marched per block before finished rays are dropped
_T_CUTOFF = 1e-4  # a ray this opaque has met all it will meet
_MIN_ALPHA = 0.5  # pixels traced: those the surface covers at least this much
BOUNCE_OFFSET = 2.0  # bounce rays start this many voxels off (+ 2 own sigma), as the visibility bake's do


@dataclass
class ReflectionConfig:
    """Traced specular inter-reflection (:mod:`invrender.distill.reflection`), in stages 3-4 and
    whenever the run is rendered with its physically based part."""

    enable: bool = True
    """Trace the mirror direction through the scene; off: the specular term sees only the sky."""
    grid_resolution: int = 96
    """Voxels along the longest side of the density and radiance grid."""
    offset: float = 5.0
    """Ray start, in voxels off the surface along its normal (so the surface does not block its own
    reflection). On the embedded scene with the true materials, 2 / 3 / 5 / 7 voxels gave 24.94 /
    25.31 / 25.39 / 25.23 dB of object-pixel relighting on every fourth test view."""
    refresh_every: int = 100
    """Training steps between rebuilds of the grid (geometry, materials and light move)."""
    hit_specular: bool = True
    """Add the specular reflection of the sky by the surface a ray meets (split sum at the hit's
    mean normal, F0 and roughness); off: only its diffuse colour."""
    bounce_directions: int = 0
    """Directions per Gaussian of the traced diffuse bounce (:func:`gather_bounce`; 0, the default:
    the grey fill): the light the object sends onto itself, in its own colours, refreshed with the
    grid, takes the place of the visibility record's grey fill ``ao.indirect (1 - AO)``, which
    borrows the sky's colour and strength (the embedded scene's teal torus beside the copper cube
    and the terracotta base, shaded with the true materials and light, came out 15 % short in red).
    At 16 it relit the embedded scene 0.13 dB better and its albedo 0.19 dB worse, for ~20 s more
    training on 2 cores, which the 15-minute budget does not have. Needs a shadowing transfer
    record (``ao.shadow-sh-degree``)."""
    bounce_refresh_every: int = 400
    """Training steps between gathers of the bounce (each one marches ``bounce_directions`` rays
    per Gaussian); the grid rebuilds in between keep the last one."""

    def __post_init__(self) -> None:
        if self.grid_resolution < 2:
            raise ValueError(f"reflection.grid-resolution must be >= 2, got {self.grid_resolution}")
        if not self.offset >= 0:
            raise ValueError(f"reflection.offset must be >= 0 voxels, got {self.offset}")
        if self.refresh_every < 1:
            raise ValueError(f"reflection.refresh-every must be >= 1, got {self.refresh_every}")
        if self.bounce_refresh_every < 1:
            raise ValueError(f"reflection.bounce-refresh-every must be >= 1, got {self.bounce_refresh_every}")
        if self.bounce_directions < 0:
            raise ValueError(f"reflection.bounce-directions must be >= 0 (0 keeps the grey fill), got {self.bounce_directions}")


@dataclass
class ReflectionGrid:
    """Density of the scene on a voxel grid and, once :func:`with_radiance` filled it, the
    density-weighted linear radiance leaving each voxel under one light."""

    origin: Tensor  # [3] world position of voxel 0's centre
    voxel: float  # voxel size (world units)
    dims: tuple[int, int, int]  # (nx, ny, nz)
    density: Tensor  # [1, 1, nz, ny, nx] extinction per voxel length
    normals: Tensor  # [N, 3] outward density normals at the Gaussians' centres
    gaussians: tuple[Tensor, Tensor, Tensor, Tensor]  # means, scales, quats, opacities (detached)
    radiance: Tensor | None = None  # [1, 3, nz, ny, nx] density x mean linear radiance
    offset: float = 5.0  # ray start off the surface, voxels (ReflectionConfig.offset)
    material: Tensor | None = None  # [1, 8, nz, ny, nx] density, density x mean (normal, F0, roughness)
    sky: tuple | None = None  # (prefiltered levels, SpecularMips) of the light, for the hits' specular
    bounce: Tensor | None = None  # [N, 3] irradiance each Gaussian receives from the lit scene (gather_bounce)


@torch.no_grad()
def build_reflection_grid(means: Tensor, scales: Tensor, quats: Tensor, opacities: Tensor,
                          resolution: int = 96, offset: float = 5.0) -> ReflectionGrid:
    """The density grid of activated Gaussians (``scales`` > 0, ``opacities`` in [0, 1]) over
    ``resolution`` voxels along the box's longest side, as the visibility bake builds it; rays
    traced through it start ``offset`` voxels off their surface."""
    if resolution < 2:
        raise ValueError(f"reflection grid resolution must be >= 2, got {resolution}")
    g = tuple(t.detach().float() for t in (means, scales, quats, opacities))
    origin, voxel, dims = _grid_box(g[0], g[1], g[2], resolution)
    density = _density_grid(*g, origin, voxel, dims)[None, None]  # [1, 1, nz, ny, nx]
    normals = _density_normals(density, (g[0] - origin) / voxel, _voxel_to_ndc(dims, density.device))
    return ReflectionGrid(origin, voxel, dims, density, normals, g, offset=float(offset))


@torch.no_grad()
def gaussian_radiance(albedo: Tensor, metallic: Tensor, normals: Tensor, visibility: Tensor | None,
                      light: EnvironmentLight) -> Tensor:
    """Outgoing diffuse radiance ``[N, 3]`` (linear) of each Gaussian under ``light``: the diffuse
    term of :func:`invrender.shading.shade.shade` along its outward normal, with its shadowing
    (a transfer record or ambient visibility, :mod:`invrender.shading.shadowing`)."""
    n = F.normalize(normals, dim=-1)
    vis = 1.0 if visibility is None else light_visibility(visibility, light)
    return albedo * (1.0 - metallic) / torch.pi * light.irradiance(n) * vis


@torch.no_grad()
def with_radiance(grid: ReflectionGrid, radiance: Tensor, f0: Tensor | None = None,
                  roughness: Tensor | None = None, light: EnvironmentLight | None = None) -> ReflectionGrid:
    """``grid`` with the Gaussians' outgoing radiance ``[N, 3]`` splatted by their density; with
    their F0 ``[N, 3]``, roughness ``[N, 1]`` and the ``light``, also their material, so that rays
    add the specular reflection of that light by the surfaces they meet."""
    n = grid.normals.shape[0]
    if radiance.shape != (n, 3):
        raise ValueError(f"radiance must be [N, 3] with N={n}, got {tuple(radiance.shape)}")
    if f0 is None:
        carried = _density_grid(*grid.gaussians, grid.origin, grid.voxel, grid.dims, weights=radiance.float())
        return dataclasses.replace(grid, radiance=carried[None])  # [1, 3, nz, ny, nx]
    if f0.shape != (n, 3) or roughness is None or roughness.shape != (n, 1) or light is None:
        raise ValueError(f"a specular grid needs f0 [N, 3], roughness [N, 1] (N={n}) and the light")
    from invrender.shading.prefilter import SpecularMips  # noqa: PLC0415

    weights = torch.cat([radiance, F.normalize(grid.normals, dim=-1), f0, roughness], dim=-1).float()
    carried = _density_grid(*grid.gaussians, grid.origin, grid.voxel, grid.dims, weights=weights)[None]
    mips = SpecularMips(light.resolution)
    sky = ([lv.detach().to(carried.device) for lv in light.prefiltered_levels(mips)], mips)
    material = torch.cat([grid.density, carried[:, 3:]], dim=1)
    return dataclasses.replace(grid, radiance=carried[:, :3].contiguous(), material=material, sky=sky)


@torch.no_grad()
def lit_grid(params: dict[str, Tensor], visibility: Tensor | None, light: EnvironmentLight,
             cfg: ReflectionConfig, albedo_scale: Tensor | None = None,
             geometry: ReflectionGrid | None = None, bounce: bool = True) -> ReflectionGrid:
    """The grid of a run's Gaussians (``params`` as stored: logits and log-scales) lit by ``light``,
    their albedo times ``albedo_scale`` [3] when given; ``geometry`` reuses a density grid. With
    ``cfg.bounce_directions`` > 0, a transfer-record ``visibility`` and ``bounce``, also the traced
    bounce each Gaussian receives (:func:`gather_bounce`)."""
    if geometry is None:
        geometry = build_reflection_grid(params["means"], torch.exp(params["scales"]), params["quats"],
                                         torch.sigmoid(params["opacities"]), cfg.grid_resolution, cfg.offset)
    albedo = torch.sigmoid(params["albedo"])
    if albedo_scale is not None:
        albedo = (albedo * albedo_scale.to(albedo.device)).clamp(0, 1)
    metallic = torch.sigmoid(params["metallic"])
    rad = gaussian_radiance(albedo, metallic, geometry.normals, visibility, light)
    if not cfg.hit_specular or "roughness" not in params:  # (checkpoints older than hit_specular kept no roughness)
        grid = with_radiance(geometry, rad)
    else:
        f0 = base_reflectance(albedo, metallic)
        grid = with_radiance(geometry, rad, f0, torch.sigmoid(params["roughness"]), light)
    if bounce and cfg.bounce_directions > 0 and visibility is not None and is_transfer_record(visibility):
        grid = dataclasses.replace(grid, bounce=gather_bounce(grid, cfg.bounce_directions))
    return grid


def surface_points(depth: Tensor, K: Tensor, viewmat: Tensor) -> Tensor:
    """World positions ``[H, W, 3]`` of z-depths ``[H, W, 1]`` seen by a camera (OpenCV axes)."""
    from invrender.cameras import pixel_rays  # noqa: PLC0415

    R, t = viewmat[:3, :3], viewmat[:3, 3]
    rays = pixel_rays(K.to(depth.dtype), depth.shape[1], depth.shape[0]) @ R.to(depth.dtype)  # camera z = 1
    return -(R.T @ t).to(depth.dtype) + depth * rays


@torch.no_grad()
def reflection_image(grid: ReflectionGrid, points: Tensor, normals: Tensor, view_dirs: Tensor,
                     alpha: Tensor) -> Tensor:
    """``[H, W, 4]`` for the G-buffer (:attr:`invrender.shading.shade.GBuffer.reflection`): traced
    where ``alpha`` [H, W, 1] covers at least half the pixel, an open sky (1, 0, 0, 0) elsewhere."""
    out = torch.zeros(*alpha.shape[:-1], 4, device=alpha.device, dtype=torch.float32)
    out[..., 0] = 1.0
    sel = alpha[..., 0] > _MIN_ALPHA
    if bool(sel.any()):
        out[sel] = trace_reflections(grid, points[sel], normals[sel], view_dirs[sel]).to(out.device)
    return out


@torch.no_grad()
def trace_reflections(grid: ReflectionGrid, points: Tensor, normals: Tensor, view_dirs: Tensor) -> Tensor:
    """``[R, 4]``: transmittance and collected radiance (linear RGB) of the mirror rays of surface
    points ``[R, 3]`` with normals ``[R, 3]`` seen along ``view_dirs`` ``[R, 3]`` (camera to point).
    Rays start ``grid.offset`` voxels off the surface along the normal, so the surface they leave
    does not block them."""
    if grid.radiance is None:
        raise ValueError("the reflection grid has no radiance yet: call with_radiance first")
    device = grid.density.device
    pts, n, v = (t.detach().float().to(device) for t in (points, normals, view_dirs))
    n = F.normalize(n, dim=-1)
    wo = -F.normalize(v, dim=-1)
    r = F.normalize(2.0 * (n * wo).sum(-1, keepdim=True) * n - wo, dim=-1)  # [R, 3] mirror direction
    o = (pts - grid.origin) / grid.voxel + grid.offset * n  # [R, 3] voxel coordinates
    trans, met, depth = _march(grid, o, r)
    _add_hit_specular(grid, o, r, trans, met, depth)
    return torch.cat([trans[:, None], met], dim=-1)


@torch.no_grad()
def gather_bounce(grid: ReflectionGrid, num_directions: int = 16, chunk: int = 4096) -> Tensor:
    """``[N, 3]``: the irradiance (linear) each of the grid's Gaussians receives from the lit scene
    itself, one bounce: ``pi`` times the mean, over ``num_directions`` cosine-distributed directions
    around its outward density normal, of the radiance its ray meets (:func:`_march`, plus the
    hit's specular when the grid carries materials). Rays start where the visibility bake starts
    them (:data:`BOUNCE_OFFSET` voxels plus twice the Gaussian's own standard deviation along the
    normal), so the bounce fills the share of the hemisphere that the bake found blocked."""
    if grid.radiance is None:
        raise ValueError("the reflection grid has no radiance yet: call with_radiance first")
    if num_directions < 1:
        raise ValueError(f"num_directions must be >= 1, got {num_directions}")
    means, scales, quats, _ = grid.gaussians
    device = grid.density.device
    nrm = F.normalize(grid.normals.float(), dim=-1)
    own = _std_along(quats, scales, nrm)  # [N]
    local = cosine_hemisphere_directions(num_directions, device)  # [D, 3]
    out = torch.zeros(means.shape[0], 3, device=device)
    for start in range(0, means.shape[0], chunk):
        sl = slice(start, min(start + chunk, means.shape[0]))
        n = nrm[sl]
        dirs = _turned_to(local, n)  # [C, D, 3]
        o = (means[sl] - grid.origin) / grid.voxel + (BOUNCE_OFFSET + 2.0 * own[sl] / grid.voxel)[:, None] * n
        o = o[:, None].expand_as(dirs).reshape(-1, 3)
        d = dirs.reshape(-1, 3)
        trans, met, depth = _march(grid, o, d)
        _add_hit_specular(grid, o, d, trans, met, depth)
        out[sl] = torch.pi * met.view(-1, num_directions, 3).mean(dim=1)
    return out


def _add_hit_specular(grid: ReflectionGrid, o: Tensor, r: Tensor, trans: Tensor, met: Tensor, depth: Tensor) -> None:
    """Add to ``met`` [R, 3], in place, the sky reflected back along each marched ray by the
    surface it met, when the grid carries materials (``hit_specular``)."""
    if grid.material is None or grid.sky is None:
        return
    opacity = 1.0 - trans
    hit = (opacity > 1e-3).nonzero().squeeze(1)
    if hit.numel() > 0:  # the material where the ray stops on average, read once per ray
        p = o[hit] + (depth[hit] / opacity[hit])[:, None] * r[hit]
        to_ndc = _voxel_to_ndc(grid.dims, o.device)
        m = F.grid_sample(grid.material, (p * to_ndc - 1.0)[None, :, None, None, :],
                          mode="bilinear", padding_mode="border", align_corners=True)[0, :, :, 0, 0].T  # [H, 8]
        met[hit] += _hit_specular(grid, m[:, 1:] / m[:, :1].clamp(min=1e-6), opacity[hit], r[hit])


def _march(grid: ReflectionGrid, o: Tensor, r: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """March rays from ``o`` [R, 3] (voxel coordinates) along unit ``r`` [R, 3], one voxel per step,
    through the grid's density and radiance: their transmittance [R], the radiance they met [R, 3]
    and the opacity-weighted sum of the distances (voxels) where they stopped [R]."""
    device = o.device
    volume = torch.cat([grid.density, grid.radiance], dim=1)  # [1, 4, nz, ny, nx]
    to_ndc = _voxel_to_ndc(grid.dims, device)
    n_steps = _steps_in_grid(o, r, grid.dims)  # [R]
    trans = torch.ones(o.shape[0], device=device)
    met = torch.zeros(o.shape[0], 3, device=device)
    depth = torch.zeros(o.shape[0], device=device)
    active = (n_steps > 0).nonzero().squeeze(1)
    k0 = 0
    while active.numel() > 0:
        t = k0 + 0.5 + torch.arange(_BLOCK, device=device, dtype=torch.float32)  # [K]
        p = o[active, None, :] + t[None, :, None] * r[active, None, :]  # [A, K, 3]
        s = F.grid_sample(volume, (p * to_ndc - 1.0)[None, :, :, None, :], mode="bilinear", padding_mode="zeros",
                          align_corners=True)  # [1, 4, A, K, 1]
        s = s[0, :, :, :, 0].permute(1, 2, 0)  # [A, K, 4]
        valid = (t[None, :] < n_steps[active, None].float()).float()
        sigma = s[..., 0].clamp(min=0.0) * valid  # [A, K]
        colour = s[..., 1:] / s[..., :1].clamp(min=1e-6)  # [A, K, 3] the voxel's mean radiance
        alpha = 1.0 - torch.exp(-sigma)
        before = torch.exp(-(torch.cumsum(sigma, dim=1) - sigma))  # [A, K] transmittance to each sample
        w = trans[active, None] * before * alpha  # [A, K] share of the ray stopped at each sample
        met[active] += (w[..., None] * colour).sum(dim=1)
        depth[active] += (w * t[None, :]).sum(dim=1)
        trans[active] *= torch.exp(-sigma.sum(dim=1))
        k0 += _BLOCK
        active = active[(n_steps[active] > k0) & (trans[active] > _T_CUTOFF)]
    return trans, met, depth


def _hit_specular(grid: ReflectionGrid, mean: Tensor, opacity: Tensor, r: Tensor) -> Tensor:
    """``[R, 3]``: the sky the surfaces met by rays along ``r`` [R, 3] reflect back along them, from
    the mean (normal, F0, roughness) ``[R, 7]`` where they stop and their opacity [R]."""
    levels, mips = grid.sky
    n = F.normalize(mean[:, :3], dim=-1)
    wo = -r  # from the hit back to where the ray started
    n_dot_v = (n * wo).sum(-1)
    mirror = F.normalize(2.0 * n_dot_v[:, None] * n - wo, dim=-1)
    rough = mean[:, 6].clamp(0, 1)
    spec = mips.sample(levels, mirror, rough).float() * specular_albedo(n_dot_v.clamp(min=1e-4), rough, mean[:, 3:6])
    return spec * (opacity * (n_dot_v > 0).float())[:, None]
