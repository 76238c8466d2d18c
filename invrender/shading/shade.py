"""The one shading function behind the G-buffer contract (DESIGN.md, Data flow).

Both backends rasterize the same per-pixel buffers; :func:`shade` turns them into a physically
based colour with an :class:`~invrender.shading.light.EnvironmentLight` and blends it with the
radiance colour by the progress map:

    pbr_linear = albedo (1 - m) / pi * E(n) * visibility                 (diffuse, SH irradiance)
               + L_spec(reflect(v, n), r) * (F0 A(n.v, r) + B(n.v, r))    (specular, split sum)
    final      = progress * tonemap(pbr_linear) + (1 - progress) * radiance

Nothing here knows which backend drew the buffer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from invrender.shading.brdf import base_reflectance
from invrender.shading.light import EnvironmentLight
from invrender.shading.prefilter import SpecularMips
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
    visibility: Tensor | None = None  # [..., 1] ambient visibility of the diffuse term


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
    # Rough lobes peak off-specular, towards the normal: look the prefiltered light up along the
    # "dominant direction" of Lagarde & de Rousiers (2014, sec. 4.9.3) instead of the mirror one.
    alpha = gbuffer.roughness * gbuffer.roughness
    s = (1.0 - alpha) * (torch.sqrt((1.0 - alpha).clamp(min=0.0)) + alpha)
    refl = F.normalize(n + s * (refl - n), dim=-1)

    vis = gbuffer.visibility if gbuffer.visibility is not None else 1.0
    diffuse = gbuffer.albedo * (1.0 - gbuffer.metallic) / torch.pi * light.irradiance(n) * vis

    mips = mips or SpecularMips(light.resolution)
    levels = mips.levels(light.cube())
    prefiltered = mips.sample(levels, refl, gbuffer.roughness[..., 0])
    f0 = base_reflectance(gbuffer.albedo, gbuffer.metallic)
    specular = prefiltered * specular_albedo(n_dot_v_c[..., 0], gbuffer.roughness[..., 0], f0)

    pbr_linear = diffuse + specular
    pbr = tonemap(pbr_linear, tonemapping)
    if gbuffer.progress is not None and gbuffer.radiance is not None:
        final = gbuffer.progress * pbr + (1.0 - gbuffer.progress) * gbuffer.radiance
    else:
        final = pbr
    return Shaded(pbr_linear, diffuse, specular, pbr, final)
