"""Per-Gaussian materials and progress, and deferred PRD rendering of one view.

Each Gaussian carries, besides its radiance SH, the physically based parameters of PRD (stored
unactivated, sigmoid on use): ``albedo`` [N, 3] (linear base colour), ``roughness`` [N, 1]
(perceptual), ``metallic`` [N, 1] and ``progress`` [N, 1] (the PRD blend weight). Its normal is the
axis of its smallest scale, flipped towards the camera (PRD, after 3DGS-DR / GaussianShader).

:func:`render_prd` rasterizes every channel in one compositing pass (radiance, albedo, roughness,
metallic, normal, progress, visibility), divides the material channels by the pixel's alpha to
get per-surface values, shades them per pixel with :func:`invrender.shading.shade.shade` and blends

    final = progress * tonemap(pbr) + (1 - progress) * radiance          (PRD eq. 7)

Two more maps come along for the losses: the normal implied by the rendered depth (for the
depth-normal consistency term) and the alpha.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from invrender.cameras import pixel_rays
from invrender.distill.reflection import ReflectionGrid, reflection_image, surface_points
from invrender.shading.light import EnvironmentLight
from invrender.shading.prefilter import SpecularMips
from invrender.shading.shade import MAX_RESIDUAL, GBuffer, progress_blend, shade
from invrender.shading.shadowing import DirectionalShadows, bounce_visibility, is_transfer_record, light_visibility
from invrender.shading.tonemap import tonemap
from invrender.splat.composite import composite
from invrender.splat.gaussians import project_with_colors
from invrender.splat.project import Projected, shortest_axes

MATERIAL_NAMES = ("albedo", "roughness", "metallic", "progress")
NORMAL_RESIDUAL = "normal_residual"  # optional per-Gaussian [N, 3] added to the shortest axis (gaussian_normals)

# how the blend is decided, per training preset and stage (DESIGN.md, Data flow)
BLEND_MODES = ("prd", "pbr", "radiance", "specular")


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def material_params(
    n: int,
    albedo: float = 0.99,
    roughness: float = 0.99,
    metallic: float = 1.0,
    progress: float = 0.01,
    device=None,
) -> dict[str, nn.Parameter]:
    """Fresh material parameters for ``n`` Gaussians (stored as logits). The defaults are PRD's
    start of distillation: albedo and roughness near 1, metallic 1, progress 0.01."""
    vals = {"albedo": (3, albedo), "roughness": (1, roughness), "metallic": (1, metallic), "progress": (1, progress)}
    return {
        k: nn.Parameter(torch.full((n, c), _logit(v), device=device)) for k, (c, v) in vals.items()
    }


def view_dependence(sh0: Tensor, shN: Tensor) -> Tensor:
    """How much each Gaussian's radiance changes with the view ``[N]``: the norm of its SH
    coefficients of degree >= 1 (``shN`` [N, K, 3]) relative to its view-independent colour (the
    DC term ``sh0`` [N, 1, 3] in display space, at least 0.02), averaged over the channels. Mirrors
    and metals, whose whole colour is a reflection, score high; diffuse surfaces low."""
    from invrender.splat.sh import C0  # noqa: PLC0415

    dc = (sh0[:, 0] * C0 + 0.5).clamp(min=0.02)  # [N, 3]
    return (shN.norm(dim=1) / dc).mean(-1)


def gaussian_normals(params: dict[str, Tensor], cam_center: Tensor) -> Tensor:
    """Unit normal per Gaussian ``[N, 3]``: the rotation axis of its smallest scale, flipped to face
    the camera at ``cam_center`` [3]. Differentiable through the quaternion (the choice of axis is not).

    With a learned ``normal_residual`` [N, 3] in ``params`` (GaussianShader's residual normal,
    ``distill.lr_normal_residual``) the normal is ``normalize(axis + residual)`` before the flip,
    and the axis is not differentiated: what trains the normal (the shading, the normal terms)
    trains the residual and leaves the Gaussians' rotations to the images they render."""
    residual = params.get(NORMAL_RESIDUAL)
    quats = params["quats"] if residual is None else params["quats"].detach()
    n = shortest_axes(quats, params["scales"])  # [N, 3]
    if residual is not None:
        n = F.normalize(n + residual, dim=-1)
    to_cam = cam_center - params["means"].detach()  # [N, 3]
    sign = torch.where((n * to_cam).sum(-1, keepdim=True) < 0, -1.0, 1.0)
    return n * sign


def depth_to_normal(depth: Tensor, K: Tensor, viewmat: Tensor) -> Tensor:
    """World-space normals ``[H, W, 3]`` from a z-depth map ``[H, W, 1]`` (central differences of
    the back-projected points, facing the camera). Border pixels get a zero normal."""
    H, W = depth.shape[:2]
    pts = pixel_rays(K.to(depth.dtype), W, H) * depth  # [H, W, 3] camera space (OpenCV)
    dx = pts[1:-1, 2:] - pts[1:-1, :-2]  # [H-2, W-2, 3]
    dy = pts[2:, 1:-1] - pts[:-2, 1:-1]
    n_cam = F.normalize(torch.cross(dy, dx, dim=-1), dim=-1)
    # the camera looks along +z: a visible surface's normal has n.z < 0 in camera space
    n_cam = torch.where(n_cam[..., 2:3] > 0, -n_cam, n_cam)
    n_world = n_cam @ viewmat[:3, :3].to(n_cam.dtype)  # R^T n, row vectors
    return F.pad(n_world.permute(2, 0, 1), (1, 1, 1, 1)).permute(1, 2, 0)


@dataclass
class PRDRender:
    final: Tensor  # [H, W, 3] display space, background composited
    radiance: Tensor  # [H, W, 3] display space, per surface (not premultiplied)
    pbr: Tensor  # [H, W, 3] display space (tone-mapped physically based colour)
    pbr_linear: Tensor  # [H, W, 3]
    gbuffer: GBuffer  # per-surface albedo, roughness, metallic, normal, alpha, progress, visibility
    depth: Tensor  # [H, W, 1] z-depth (0 where empty)
    depth_normal: Tensor  # [H, W, 3] world normal from the depth map
    alpha: Tensor  # [H, W, 1]
    projected: Projected | None  # None for the mesh backend


def render_prd(
    params: dict[str, Tensor],
    light: EnvironmentLight,
    viewmat: Tensor,  # [4, 4]
    K: Tensor,  # [3, 3]
    width: int,
    height: int,
    sh_degree: int,
    background: Tensor | None = None,  # [3]
    *,
    blend: str = "prd",
    visibility: Tensor | None = None,  # [N, 1] ambient or [N, 2K+1] transfer visibility (distill.visibility)
    mips: SpecularMips | None = None,
    tonemapping: str = "srgb",
    albedo_scale: Tensor | None = None,  # [3] (evaluation: per-channel albedo alignment)
    material_override: dict[str, float] | None = None,  # e.g. the grey baseline
    target_light: EnvironmentLight | None = None,
    max_residual: float = MAX_RESIDUAL,
    backend: str = "auto",
    visibility_per_pixel: bool = False,
    reflections: ReflectionGrid | None = None,
    target_reflections: ReflectionGrid | None = None,
    shadows: DirectionalShadows | None = None,
) -> PRDRender:
    """Deferred PRD rendering of one view (see the module docstring).

    Relighting (``target_light``): the physically based part is shaded under ``target_light``;
    the radiance part, which only knows the training light ``light``, is carried over as its
    ratio to the physically based colour under the training light (per channel, linear, at most
    ``max_residual``): what physics did not explain there (cast shadows, inter-reflections) is
    kept as a multiplicative residual and applied to the new shading,

        final = p * tonemap(pbr_new) + (1 - p) * tonemap(pbr_new * lin(radiance) / pbr_train).

    ``blend``: ``prd`` (learned progress), ``pbr`` (progress 1), ``radiance`` (progress 0),
    ``specular`` (stage 2 of PRD: metallic held at 1 and only the specular term, blended by progress).

    A transfer-record ``visibility`` (:mod:`invrender.shading.shadowing`) is read per Gaussian for
    ``light`` (and ``target_light``) before rasterizing, one channel each; with
    ``visibility_per_pixel`` the record itself is rasterized instead and ``gbuffer.visibility``
    holds it, for callers that shade the same buffers under several lights (the viewer).

    ``reflections``: the scene lit by ``light`` (:mod:`invrender.distill.reflection`); the mirror
    ray of every covered pixel is traced through it, and its specular term sees what the ray met
    where the scene hides the sky (``target_reflections``: the same lit by ``target_light``).

    ``shadows`` (:class:`invrender.shading.shadowing.DirectionalShadows`, per Gaussian): sharp
    shadows in place of the transfer record's SH share, for both lights (not with
    ``visibility_per_pixel``, which keeps the record)."""
    if blend not in BLEND_MODES:
        raise ValueError(f"blend must be one of {BLEND_MODES}, got {blend!r}")
    if reflections is not None and target_light is not None and target_reflections is None:
        raise ValueError("relighting with traced reflections needs target_reflections (the scene lit by target_light)")
    means = params["means"]
    n = means.shape[0]
    proj, radiance, cam_center = project_with_colors(params, viewmat, K, width, height, sh_degree, backend)
    normals = gaussian_normals(params, cam_center)  # [N, 3]
    mats = {k: torch.sigmoid(params[k]) for k in MATERIAL_NAMES}
    if material_override:
        mats = dict(mats)
        for k, v in material_override.items():
            mats[k] = torch.full_like(mats[k], float(v))
    # the diffuse visibility under the light shaded with (and under the relighting target: a
    # baked transfer shadows each light differently; an ambient visibility is the same for both)
    vis_target = None
    if visibility is None:
        vis = torch.ones(n, 1, device=means.device)
    elif visibility_per_pixel or light is None or not is_transfer_record(visibility):
        vis = visibility  # (the radiance blend needs no light and reads no visibility)
    else:  # (a traced bounce, when the grids carry one, replaces the record's grey fill)
        vis = _lit_visibility(visibility, light, reflections, normals, shadows)
        if target_light is not None:
            vis_target = _lit_visibility(visibility, target_light, target_reflections, normals, shadows)
    extra = [vis] if vis_target is None else [vis, vis_target]
    feats = torch.cat(
        [radiance, mats["albedo"], mats["roughness"], mats["metallic"], normals, mats["progress"], *extra], dim=-1
    )  # [N, 12 + visibility channels]
    img, depth, alpha = composite(
        proj.means2d, proj.conics, torch.sigmoid(params["opacities"]), feats, proj.depths, proj.radii,
        width, height, backend=backend,
    )
    a = alpha.clamp(min=1e-4)
    surf = img / a  # [H, W, C] per-surface values
    rad_px, albedo, rough, metal, nrm, prog, *vis_px = surf.split([3, 3, 1, 1, 3, 1] + [t.shape[-1] for t in extra], dim=-1)
    vis_px[0] = vis_px[0] if is_transfer_record(vis_px[0]) else vis_px[0].clamp(0, 1)  # (records hold SH, signed)
    g = GBuffer(albedo=albedo.clamp(0, 1), roughness=rough.clamp(0, 1), metallic=metal.clamp(0, 1), normal=nrm,
                alpha=alpha, radiance=rad_px, progress=prog.clamp(0, 1), visibility=vis_px[0])
    view_dirs = F.normalize(pixel_rays(K.to(means.dtype), width, height) @ viewmat[:3, :3], dim=-1)  # [H, W, 3] world
    z = torch.where(alpha > 1e-4, depth / a, torch.zeros_like(depth))
    target_reflection = None
    if reflections is not None and blend != "radiance":
        points = surface_points(z.detach(), K, viewmat)
        g = dataclasses.replace(g, reflection=reflection_image(reflections, points, nrm.detach(), view_dirs, alpha))
        if target_light is not None:
            target_reflection = reflection_image(target_reflections, points, nrm.detach(), view_dirs, alpha)
    return finish_render(
        g, light, viewmat, K, z, view_dirs, background, blend=blend, mips=mips, tonemapping=tonemapping,
        albedo_scale=albedo_scale, target_light=target_light, max_residual=max_residual, projected=proj,
        target_visibility=vis_px[1].clamp(0, 1) if vis_target is not None else None,
        target_reflection=target_reflection,
    )


def _lit_visibility(visibility: Tensor, light: EnvironmentLight, grid: ReflectionGrid | None, normals: Tensor,
                    shadows: DirectionalShadows | None = None) -> Tensor:
    """A transfer record read for ``light`` (its share, or the directional ``shadows``'): with the
    grid's traced bounce (:func:`invrender.shading.shadowing.bounce_visibility`, [N, 3]) when it
    carries one, else plus the grey fill (:func:`invrender.shading.shadowing.light_visibility`, [N, 1])."""
    if grid is not None and grid.bounce is not None and grid.bounce.shape[0] == visibility.shape[0]:
        return bounce_visibility(visibility, light, grid.bounce, normals, shadows)
    return light_visibility(visibility, light, shadows)


def blend_shading(
    g: GBuffer,
    light: EnvironmentLight | None,
    view_dirs: Tensor,  # [H, W, 3] world, camera to pixel
    *,
    blend: str = "prd",
    mips: SpecularMips | None = None,
    tonemapping: str = "srgb",
    target_light: EnvironmentLight | None = None,
    albedo_learned: Tensor | None = None,  # [H, W, 3] the albedo before evaluation scaling
    max_residual: float = MAX_RESIDUAL,
    target_visibility: Tensor | None = None,  # [H, W, C] the diffuse visibility under target_light
    target_reflection: Tensor | None = None,  # [H, W, 4] the traced reflection under target_light
) -> tuple[Tensor, Tensor, Tensor]:
    """Shade a G-buffer and blend it with its radiance by progress (:func:`progress_blend`):
    ``(blended [H, W, 3] display space per surface, pbr_linear, pbr)``. ``g.visibility`` is the
    one under ``light``; ``target_visibility``, when the shadows depend on the light, the one
    under ``target_light`` (default: the same)."""
    if blend == "radiance":
        pbr_linear = torch.zeros_like(g.radiance)
        return g.radiance, pbr_linear, pbr_linear
    if light is None:
        raise ValueError(f"blend '{blend}' needs an environment light")
    train = None
    if target_light is not None:
        g_target = g if target_visibility is None else dataclasses.replace(g, visibility=target_visibility)
        if g.reflection is not None:  # what the mirror rays meet is lit by the target light too
            g_target = dataclasses.replace(g_target, reflection=target_reflection)
        sh = shade(g_target, target_light, view_dirs, mips=mips, tonemapping=tonemapping)
        pbr_linear, pbr = sh.pbr_linear, sh.pbr
        if blend != "pbr":
            g_train = g if albedo_learned is None else dataclasses.replace(g, albedo=albedo_learned)
            train = shade(g_train, light, view_dirs, mips=mips, tonemapping=tonemapping).pbr_linear
    else:
        sh = shade(g, light, view_dirs, mips=mips, tonemapping=tonemapping)
        if blend == "specular":
            pbr_linear = sh.specular
            pbr = tonemap(pbr_linear, tonemapping)
        else:
            pbr_linear, pbr = sh.pbr_linear, sh.pbr
    if blend == "pbr":
        return pbr, pbr_linear, pbr
    blended = progress_blend(g.radiance, g.progress, pbr_linear, pbr, tonemapping, train, max_residual)
    return blended, pbr_linear, pbr


def finish_render(
    g: GBuffer,
    light: EnvironmentLight | None,
    viewmat: Tensor,  # [4, 4]
    K: Tensor,  # [3, 3]
    depth: Tensor,  # [H, W, 1] z-depth, 0 where empty
    view_dirs: Tensor,  # [H, W, 3] world, camera to pixel
    background: Tensor | None = None,  # [3]
    *,
    blend: str = "prd",
    mips: SpecularMips | None = None,
    tonemapping: str = "srgb",
    albedo_scale: Tensor | None = None,  # [3]
    target_light: EnvironmentLight | None = None,
    max_residual: float = MAX_RESIDUAL,
    projected: Projected | None = None,
    target_visibility: Tensor | None = None,  # [H, W, C] (see blend_shading)
    target_reflection: Tensor | None = None,  # [H, W, 4] (see blend_shading)
) -> PRDRender:
    """Everything after rasterization, the same for both geometry backends: the evaluation's
    albedo scale, the specular stage's metallic held at 1, :func:`blend_shading`, coverage and
    background. ``g`` holds per-surface values with the learned albedo."""
    albedo_learned = g.albedo  # what the training light was fitted with (relighting's residual)
    if albedo_scale is not None:
        g = dataclasses.replace(g, albedo=(g.albedo * albedo_scale).clamp(0, 1))
    if blend == "specular":
        g = dataclasses.replace(g, metallic=torch.ones_like(g.metallic))
    blended, pbr_linear, pbr = blend_shading(
        g, light, view_dirs, blend=blend, mips=mips, tonemapping=tonemapping, target_light=target_light,
        albedo_learned=albedo_learned, max_residual=max_residual, target_visibility=target_visibility,
        target_reflection=target_reflection,
    )
    final = blended * g.alpha
    if background is not None:
        final = final + (1.0 - g.alpha) * background
    return PRDRender(
        final=final, radiance=g.radiance, pbr=pbr, pbr_linear=pbr_linear, gbuffer=g, depth=depth,
        depth_normal=depth_to_normal(depth, K, viewmat), alpha=g.alpha, projected=projected,
    )
