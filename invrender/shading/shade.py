"""The one shading function behind the G-buffer contract (DESIGN.md, Data flow).

Both backends rasterize the same per-pixel buffers; :func:`shade` turns them into a physically
based colour with an :class:`~invrender.shading.light.EnvironmentLight` and blends it with the
radiance colour by the progress map:

    pbr_linear = albedo (1 - m) / pi * E(n) * visibility                 (diffuse, SH irradiance;
                                                                          visibility: see shadowing.py)
               + sum_k w_k L_spec(d_k, r_k) * (F0 A(n.v, r) + B(n.v, r))  (specular, split sum)
    final      = progress * tonemap(pbr_linear) + (1 - progress) * radiance

The specular light is read from the prefiltered mips along two taps (directions d_k between the
normal and the mirror direction, tap roughness r_k, weights w_k: a small table over (n.v, r)
fitted to the true GGX lobe by ``scripts/fit_specular_taps.py``, see
:mod:`invrender.shading.specular_taps`); below roughness 0.2 both taps are the single lookup
along the "dominant direction". Nothing here knows which backend drew the buffer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from invrender.color import srgb_to_linear
from invrender.shading.brdf import base_reflectance
from invrender.shading.light import EnvironmentLight
from invrender.shading.prefilter import SpecularMips
from invrender.shading.shadowing import light_visibility
from invrender.shading.specular_taps import tap_directions, tap_params
from invrender.shading.splitsum import specular_albedo
from invrender.shading.tonemap import tonemap


@dataclass
class GBuffer:
    """Per-pixel shading inputs, all ``[..., C]`` with the same leading shape (e.g. ``[H, W]``)."""

    albedo: Tensor  # [..., 3] linear base colour
    roughness: Tensor  # [..., 1] perceptual
    metallic: Tensor  # [..., 1]
    normal: Tensor  # [..., 3] world space (normalized here)
    alpha: Tensor  # [..., 1] coverage
    radiance: Tensor | None = None  # [..., 3] display-space radiance colour (3DGS SH)
    progress: Tensor | None = None  # [..., 1] PRD blend weight in [0, 1]
    visibility: Tensor | None = None  # [..., 1 | 3 | 2K+1] diffuse visibility (shading.shadowing)
    reflection: Tensor | None = None  # [..., 4] traced mirror ray: transmittance, linear radiance it met


@dataclass
class Shaded:
    pbr_linear: Tensor  # [..., 3] linear radiance of the physically based model
    diffuse: Tensor  # [..., 3] linear
    specular: Tensor  # [..., 3] linear
    pbr: Tensor  # [..., 3] display space (tone-mapped)
    final: Tensor  # [..., 3] display space, progress-blended with the radiance colour


def shade(
    gbuffer: GBuffer,
    light: EnvironmentLight,
    view_dirs: Tensor,  # [..., 3] from the camera towards the surface point
    mips: SpecularMips | None = None,
    tonemapping: str = "srgb",
) -> Shaded:
    """Shade a G-buffer under an environment light (see the module docstring for the model)."""
    n = F.normalize(gbuffer.normal, dim=-1)
    wo = -F.normalize(view_dirs, dim=-1)  # towards the camera
    n_dot_v = (n * wo).sum(-1, keepdim=True)
    # normals that face away (silhouettes, interpolation) are bent to the horizon's edge
    n_dot_v_c = n_dot_v.clamp(min=1e-4)
    refl = 2.0 * n_dot_v * n - wo  # [..., 3] mirror direction

    vis = 1.0 if gbuffer.visibility is None else light_visibility(gbuffer.visibility, light)  # (shadowing.py)
    diffuse = gbuffer.albedo * (1.0 - gbuffer.metallic) / torch.pi * light.irradiance(n) * vis

    mips = mips or SpecularMips(light.resolution)
    levels = light.prefiltered_levels(mips)
    # Two lookups per pixel (specular_taps): a wider one nearer the normal and a narrower one nearer
    # the mirror direction, weights summing to one; below roughness 0.25 both are the single lookup
    # along the "dominant direction" of Lagarde & de Rousiers (2014, sec. 4.9.3).
    taps = tap_params(n_dot_v_c[..., 0], gbuffer.roughness[..., 0])  # [..., 5]: g1, r1, g2, r2, w1
    d1, d2 = tap_directions(n, refl, taps)
    both = mips.sample(levels, torch.stack([d1, d2]), torch.stack([taps[..., 1], taps[..., 3]]))
    prefiltered = taps[..., 4:5] * both[0] + (1.0 - taps[..., 4:5]) * both[1]
    if gbuffer.reflection is not None:  # the scene in the mirror direction hides part of the sky
        prefiltered = gbuffer.reflection[..., :1] * prefiltered + gbuffer.reflection[..., 1:]
    f0 = base_reflectance(gbuffer.albedo, gbuffer.metallic)
    specular = prefiltered * specular_albedo(n_dot_v_c[..., 0], gbuffer.roughness[..., 0], f0)

    pbr_linear = diffuse + specular
    pbr = tonemap(pbr_linear, tonemapping)
    if gbuffer.progress is not None and gbuffer.radiance is not None:
        final = progress_blend(gbuffer.radiance, gbuffer.progress, pbr_linear, pbr, tonemapping)
    else:
        final = pbr
    return Shaded(pbr_linear, diffuse, specular, pbr, final)


MAX_RESIDUAL = 4.0  # bound on the relit radiance's ratio to the physically based colour


def progress_blend(
    radiance: Tensor,  # [..., 3] display space
    progress: Tensor,  # [..., 1]
    pbr_linear: Tensor,  # [..., 3] physically based colour, linear
    pbr: Tensor,  # [..., 3] the same tone-mapped (display space)
    tonemapping: str = "srgb",
    train_linear: Tensor | None = None,  # [..., 3] the PBR colour under the training light (relighting)
    max_residual: float = MAX_RESIDUAL,
) -> Tensor:
    """The PRD blend, display space: ``p pbr + (1 - p) radiance``. When relit (``train_linear``
    given, ``pbr`` shaded under the new light), the radiance, which only knows the training light,
    is carried over as its ratio to the physically based colour under that light (per channel,
    linear, at most ``max_residual``): what physics did not explain there (cast shadows,
    inter-reflections) stays as a multiplicative residual,
    ``p pbr + (1 - p) tonemap(pbr_linear lin(radiance) / train_linear)``. Every renderer (both
    geometry backends, the viewer) blends here."""
    if train_linear is None:
        return progress * pbr + (1.0 - progress) * radiance
    residual = (srgb_to_linear(radiance.clamp(0, 1)) / train_linear.clamp(min=1e-3)).clamp(max=max_residual)
    return progress * pbr + (1.0 - progress) * tonemap(pbr_linear * residual, tonemapping)
