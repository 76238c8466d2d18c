"""The shared microfacet BRDF (DESIGN.md, Materials): Lambert diffuse + Cook-Torrance specular
with a GGX normal distribution, Smith height-correlated masking-shadowing and Schlick's Fresnel.

Conventions: perceptual ``roughness`` r, GGX alpha = r^2; F0 = lerp(0.04, albedo, metallic);
diffuse = albedo (1 - metallic) / pi. This is Mitsuba's ``principled`` BSDF with the default
specular (0.5 -> F0 = 0.04) minus its sheen/clearcoat lobes, which the reference tests use.

Every function takes cosines / colours as tensors that broadcast together and works in any
dtype; cosines are clamped to a small positive value so grazing angles stay finite.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

EPS_COS = 1e-4  # cosines below this are treated as grazing; keeps 1/cos terms finite


def ggx_alpha(roughness: Tensor) -> Tensor:
    """GGX alpha from perceptual roughness (alpha = roughness^2), floored so D stays finite."""
    return (roughness * roughness).clamp(min=1e-4)


def ggx_ndf(n_dot_h: Tensor, alpha: Tensor) -> Tensor:
    """GGX / Trowbridge-Reitz normal distribution D(h) = a^2 / (pi ((n.h)^2 (a^2 - 1) + 1)^2)
    (Walter et al. 2007, eq. 33). Normalized: integral of D(h) (n.h) over the hemisphere is 1."""
    a2 = alpha * alpha
    c = n_dot_h.clamp(min=0.0)
    d = c * c * (a2 - 1.0) + 1.0
    return a2 / (math.pi * d * d)


def smith_lambda(cos_theta: Tensor, alpha: Tensor) -> Tensor:
    """Smith's Lambda for GGX: (-1 + sqrt(1 + a^2 tan^2(theta))) / 2 (Heitz 2014, eq. 72)."""
    c = cos_theta.clamp(min=EPS_COS)
    tan2 = (1.0 - c * c).clamp(min=0.0) / (c * c)
    return 0.5 * (torch.sqrt(1.0 + alpha * alpha * tan2) - 1.0)


def smith_g2(n_dot_v: Tensor, n_dot_l: Tensor, alpha: Tensor) -> Tensor:
    """Height-correlated masking-shadowing G2 = 1 / (1 + Lambda(v) + Lambda(l)) (Heitz 2014, eq. 99)."""
    return 1.0 / (1.0 + smith_lambda(n_dot_v, alpha) + smith_lambda(n_dot_l, alpha))


def smith_visibility(n_dot_v: Tensor, n_dot_l: Tensor, alpha: Tensor) -> Tensor:
    """V = G2 / (4 (n.v)(n.l)) in the algebraically simplified form that avoids the division
    (Heitz 2014; as used by Filament): 0.5 / (nl sqrt(nv^2 (1-a^2) + a^2) + nv sqrt(nl^2 (1-a^2) + a^2))."""
    a2 = alpha * alpha
    nv = n_dot_v.clamp(min=EPS_COS)
    nl = n_dot_l.clamp(min=EPS_COS)
    gv = nl * torch.sqrt(nv * nv * (1.0 - a2) + a2)
    gl = nv * torch.sqrt(nl * nl * (1.0 - a2) + a2)
    return 0.5 / (gv + gl)


def fresnel_schlick(f0: Tensor, v_dot_h: Tensor) -> Tensor:
    """Schlick's approximation F = F0 + (1 - F0) (1 - v.h)^5."""
    w = (1.0 - v_dot_h.clamp(0.0, 1.0)) ** 5
    return f0 + (1.0 - f0) * w


def base_reflectance(albedo: Tensor, metallic: Tensor, specular_f0: float = 0.04) -> Tensor:
    """F0 = lerp(0.04, albedo, metallic): dielectrics reflect 4 %, metals tint by their albedo."""
    return specular_f0 * (1.0 - metallic) + albedo * metallic


def lambert(albedo: Tensor, metallic: Tensor) -> Tensor:
    """Diffuse lobe albedo (1 - metallic) / pi; metals have no diffuse term."""
    return albedo * (1.0 - metallic) / math.pi


def cook_torrance(
    n_dot_l: Tensor, n_dot_v: Tensor, n_dot_h: Tensor, v_dot_h: Tensor,
    albedo: Tensor, roughness: Tensor, metallic: Tensor,
) -> Tensor:
    """Full BRDF value f(l, v) = diffuse + D V F (no cosine factor), zero below the horizon.

    Shapes broadcast: cosines [..., 1], albedo [..., 3], roughness / metallic [..., 1] -> [..., 3].
    """
    alpha = ggx_alpha(roughness)
    spec = ggx_ndf(n_dot_h, alpha) * smith_visibility(n_dot_v, n_dot_l, alpha)
    spec = spec * fresnel_schlick(base_reflectance(albedo, metallic), v_dot_h)
    f = lambert(albedo, metallic) + spec
    visible = (n_dot_l > 0) & (n_dot_v > 0)
    return torch.where(visible, f, torch.zeros_like(f))
