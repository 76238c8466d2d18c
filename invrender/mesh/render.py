"""Deferred PRD rendering of a textured mesh: the mesh backend's twin of
:func:`invrender.distill.model.render_prd`.

The rasterizer (:mod:`invrender.mesh.raster`) gives per pixel the triangle, perspective-correct
barycentrics and depth; UVs and vertex normals (and the per-vertex baked visibility) are
interpolated, the albedo / roughness / metallic / progress / radiance textures are read in one
mip-mapped lookup, and the resulting :class:`~invrender.shading.shade.GBuffer` goes through the
same :func:`~invrender.distill.model.finish_render` as the Gaussians' (same blend modes, same
relighting residual). Gradients reach the textures, and the vertex positions through the
barycentrics.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from invrender.cameras import pixel_rays
from invrender.distill.model import PRDRender, finish_render
from invrender.mesh.raster import fill_texture, interpolate, rasterize, texture_lookup
from invrender.mesh.textured import TEXTURE_CHANNELS, TEXTURE_NAMES, TexturedMesh
from invrender.shading.light import EnvironmentLight
from invrender.shading.prefilter import SpecularMips
from invrender.shading.shade import MAX_RESIDUAL, GBuffer
from invrender.shading.shadowing import is_transfer_record
from invrender.splat.sh import sh_basis

_SPLITS = [TEXTURE_CHANNELS[k] for k in TEXTURE_NAMES]


def _sh_degree(num_bases: int) -> int:
    degree = round(math.sqrt(num_bases)) - 1
    if (degree + 1) ** 2 != num_bases or degree < 1:
        raise ValueError(f"radiance_sh must hold (d + 1)^2 - 1 coefficients for a degree d >= 1, got {num_bases - 1}")
    return degree


def stack_textures(textures: dict[str, Tensor]) -> Tensor:
    """The five textures [T, T, C_k] as one [T, T, 9] tensor, in ``TEXTURE_NAMES`` order."""
    return torch.cat([textures[k] for k in TEXTURE_NAMES], dim=-1)


def render_mesh(
    vertices: Tensor,  # [V, 3] world (normalized frame)
    faces: Tensor,  # [F, 3]
    uvs: Tensor,  # [V, 2]
    normals: Tensor,  # [V, 3]
    textures: Tensor,  # [T, T, 9] albedo, roughness, metallic, progress, radiance in [0, 1]
    light: EnvironmentLight | None,
    viewmat: Tensor,  # [4, 4]
    K: Tensor,  # [3, 3]
    width: int,
    height: int,
    background: Tensor | None = None,  # [3]
    *,
    visibility: Tensor | None = None,  # [V, 1] ambient or [V, 2K+1] transfer visibility (shading.shadowing)
    radiance_sh: Tensor | None = None,  # [V, K - 1, 3] view-dependent SH of the radiance (degrees >= 1)
    blend: str = "prd",
    mips: SpecularMips | None = None,
    tonemapping: str = "srgb",
    albedo_scale: Tensor | None = None,  # [3]
    material_override: dict[str, float] | None = None,
    target_light: EnvironmentLight | None = None,
    max_residual: float = MAX_RESIDUAL,
    backend: str = "auto",
) -> PRDRender:
    """One view of a textured mesh, shaded and blended exactly as :func:`render_prd` does for
    Gaussians (see its docstring for ``blend``, ``target_light`` and the relighting residual).
    ``final`` is premultiplied by the (hard) coverage unless ``background`` is given.

    The radiance colour is the ``radiance`` texture (its view-independent part) plus, with
    ``radiance_sh``, a per-vertex spherical-harmonics term of degree >= 1 evaluated towards the
    camera and interpolated: the view-dependent part that a texture cannot hold (highlights that
    move), smooth over the surface as it is in the Gaussians' SH."""
    if textures.ndim != 3 or textures.shape[-1] != sum(_SPLITS):
        raise ValueError(f"textures must be [T, T, {sum(_SPLITS)}], got {tuple(textures.shape)}")
    rast = rasterize(vertices, faces, viewmat, K, width, height, backend=backend)
    alpha = rast.mask  # [H, W, 1]
    uv = interpolate(uvs, faces, rast)  # [H, W, 2]
    texels = texture_lookup(textures, uv, tri_id=rast.tri_id) * alpha  # [H, W, 9]
    albedo, rough, metal, prog, rad = texels.split(_SPLITS, dim=-1)
    if radiance_sh is not None:
        degree = _sh_degree(radiance_sh.shape[1] + 1)
        cam_center = -viewmat[:3, :3].T.to(vertices.dtype) @ viewmat[:3, 3].to(vertices.dtype)  # [3]
        dirs = F.normalize(vertices.detach() - cam_center, dim=-1)  # [V, 3] camera to vertex
        basis = sh_basis(degree, dirs)[:, 1:]  # [V, K - 1]
        view_dep = (basis[:, :, None] * radiance_sh).sum(dim=1)  # [V, 3]
        rad = (rad + interpolate(view_dep, faces, rast)).clamp(0, 1) * alpha
    view_dirs = F.normalize(pixel_rays(K.to(vertices.dtype), width, height) @ viewmat[:3, :3].to(vertices.dtype), dim=-1)
    nrm = F.normalize(interpolate(normals, faces, rast), dim=-1, eps=1e-12)  # [H, W, 3]
    # a closed mesh only shows front faces; where interpolation tilts a normal past the view
    # (silhouettes of coarse meshes) shading it from behind would go black: face it to the camera
    facing = (nrm * view_dirs).sum(-1, keepdim=True)
    nrm = torch.where(facing > 0, nrm - 2.0 * facing * view_dirs, nrm)
    nrm = F.normalize(nrm, dim=-1, eps=1e-12) * alpha
    if visibility is None:
        vis = alpha
    else:  # a transfer record is interpolated as it is and read per pixel by shade() for each light
        vis = interpolate(visibility, faces, rast)
        vis = vis if is_transfer_record(vis) else vis.clamp(0, 1)
    if material_override:
        vals = {"albedo": albedo, "roughness": rough, "metallic": metal, "progress": prog}
        for k, v in material_override.items():
            vals[k] = torch.full_like(vals[k], float(v)) * alpha
        albedo, rough, metal, prog = vals["albedo"], vals["roughness"], vals["metallic"], vals["progress"]
    g = GBuffer(albedo=albedo, roughness=rough, metallic=metal, normal=nrm, alpha=alpha, radiance=rad,
                progress=prog, visibility=vis)
    return finish_render(
        g, light, viewmat, K, rast.depth, view_dirs, background, blend=blend, mips=mips, tonemapping=tonemapping,
        albedo_scale=albedo_scale, target_light=target_light, max_residual=max_residual,
    )


def render_mesh_view(
    mesh: TexturedMesh,
    light: EnvironmentLight | None,
    viewmat: Tensor,
    K: Tensor,
    width: int,
    height: int,
    background: Tensor | None = None,
    *,
    visibility: Tensor | None = None,
    **kwargs,
) -> PRDRender:
    """:func:`render_mesh` of a :class:`TexturedMesh` (its own textures, the given light)."""
    tex = stack_textures({k: getattr(mesh, k) for k in TEXTURE_NAMES})
    vis = visibility if visibility is not None else mesh.visibility
    return render_mesh(mesh.vertices, mesh.faces, mesh.uvs, mesh.normals, tex, light, viewmat, K, width, height,
                       background, visibility=vis, radiance_sh=mesh.radiance_sh, **kwargs)


@torch.no_grad()
def bake_vertex_values(uvs: Tensor, faces: Tensor, values: Tensor, size: int) -> Tensor:
    """Per-vertex ``values`` [V, C] painted into a ``size`` x ``size`` texture [T, T, C] through the
    UV layout: the mesh is rasterized in UV space (texel (i, j) samples uv ((j + 0.5) / T,
    (i + 0.5) / T), glTF orientation) and the values interpolated; texels outside every chart are
    filled by pull-push from the charts, so bilinear and mip reads never see a hole.
    Used to carry per-vertex data (the baked ambient occlusion) into texture-only formats."""
    T = int(size)
    # UV space as a camera: positions (u T, v T, 1) seen by the identity camera with unit focal
    # length project to pixel (u T, v T): an orthographic view of the atlas
    flat = torch.cat([uvs.double() * T, torch.ones(uvs.shape[0], 1, dtype=torch.float64)], dim=-1)  # [V, 3]
    K = torch.eye(3, dtype=torch.float64)
    rast = rasterize(flat, faces, torch.eye(4, dtype=torch.float64), K, T, T)
    vals = interpolate(values.double(), faces, rast)  # [T, T, C]
    return fill_texture(vals * rast.mask, rast.mask).to(values.dtype)
