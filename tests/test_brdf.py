"""Each BRDF term against its closed form or its defining integral."""

import math

import pytest
import torch

from invrender.shading.brdf import (
    base_reflectance, cook_torrance, fresnel_schlick, ggx_alpha, ggx_ndf, lambert, smith_g2,
    smith_visibility,
)
from invrender.shading.tonemap import aces_filmic, tonemap


def _hemisphere(n_theta=400, n_phi=64):
    """Midpoint quadrature over the upper hemisphere: (cos theta, sin theta, phi, weight)."""
    th = (torch.arange(n_theta, dtype=torch.float64) + 0.5) * (0.5 * math.pi / n_theta)
    ph = (torch.arange(n_phi, dtype=torch.float64) + 0.5) * (2 * math.pi / n_phi)
    T, P = torch.meshgrid(th, ph, indexing="ij")
    w = torch.sin(T) * (0.5 * math.pi / n_theta) * (2 * math.pi / n_phi)
    return torch.cos(T), torch.sin(T), P, w


@pytest.mark.parametrize("roughness", [0.3, 0.5, 0.8, 1.0])
def test_ggx_ndf_projected_area_is_one(roughness):
    # integral of D(h) (n.h) dh over the hemisphere = 1 (microfacet normalization)
    cos_t, _, _, w = _hemisphere(n_theta=4000, n_phi=4)
    alpha = ggx_alpha(torch.tensor(roughness, dtype=torch.float64))
    total = (ggx_ndf(cos_t, alpha) * cos_t * w).sum()
    assert abs(float(total) - 1.0) < 2e-3  # quadrature error of the peaked lobe


def test_ggx_ndf_peak_closed_form():
    alpha = torch.tensor([0.1, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(ggx_ndf(torch.ones(3, dtype=torch.float64), alpha), 1 / (math.pi * alpha**2))
    # alpha = 1 is the uniform distribution D = 1 / pi
    torch.testing.assert_close(ggx_ndf(torch.rand(5, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)),
                               torch.full((5,), 1 / math.pi, dtype=torch.float64))


def test_smith_visibility_equals_g2_over_4_cosines():
    g = torch.Generator().manual_seed(0)
    nv = torch.rand(200, generator=g, dtype=torch.float64) * 0.99 + 0.01
    nl = torch.rand(200, generator=g, dtype=torch.float64) * 0.99 + 0.01
    alpha = torch.rand(200, generator=g, dtype=torch.float64) * 0.99 + 0.01
    torch.testing.assert_close(smith_visibility(nv, nl, alpha), smith_g2(nv, nl, alpha) / (4 * nv * nl))
    g2 = smith_g2(nv, nl, alpha)
    assert (g2 <= 1).all() and (g2 > 0).all()
    one = torch.ones(1, dtype=torch.float64)
    torch.testing.assert_close(smith_g2(one, one, torch.tensor(0.5, dtype=torch.float64)), one)  # no masking head-on


def test_fresnel_schlick_limits_and_f0():
    f0 = torch.tensor([0.04, 0.5, 1.0])
    torch.testing.assert_close(fresnel_schlick(f0, torch.ones(3)), f0)
    torch.testing.assert_close(fresnel_schlick(f0, torch.zeros(3)), torch.ones(3))
    alb = torch.tensor([0.9, 0.5, 0.1])
    torch.testing.assert_close(base_reflectance(alb, torch.tensor(0.0)), torch.full((3,), 0.04))
    torch.testing.assert_close(base_reflectance(alb, torch.tensor(1.0)), alb)


def test_lambert_albedo_integral():
    cos_t, _, _, w = _hemisphere()
    alb, m = torch.tensor(0.8, dtype=torch.float64), torch.tensor(0.25, dtype=torch.float64)
    total = (lambert(alb, m) * cos_t * w).sum()
    assert abs(float(total) - 0.8 * 0.75) < 1e-4


def _directional_albedo(n_dot_v, albedo, roughness, metallic):
    """integral over l of f(l, v) (n.l) for a view at angle acos(n_dot_v), by quadrature."""
    cos_t, sin_t, phi, w = _hemisphere(n_theta=600, n_phi=128)
    v = torch.tensor([math.sqrt(1 - n_dot_v**2), 0.0, n_dot_v], dtype=torch.float64)
    l = torch.stack([sin_t * torch.cos(phi), sin_t * torch.sin(phi), cos_t], -1)
    h = torch.nn.functional.normalize(l + v, dim=-1)
    f = cook_torrance(cos_t[..., None], torch.full_like(cos_t, n_dot_v)[..., None], h[..., 2:3],
                      (h * v).sum(-1, keepdim=True), albedo, roughness, metallic)
    return (f * (cos_t * w)[..., None]).sum((0, 1))


def test_white_furnace_energy_conservation():
    one = torch.ones(3, dtype=torch.float64)
    metal = torch.tensor([1.0], dtype=torch.float64)
    for r in (0.3, 0.5, 0.7, 1.0):
        for nv in (0.9, 0.5):
            e = _directional_albedo(nv, one, torch.tensor([r], dtype=torch.float64), metal)
            assert (e <= 1.0 + 1e-3).all(), (r, nv, e)  # a white metal never reflects more than it gets
    # glossy white metal keeps nearly all energy (single scattering loses little at low roughness)
    assert (_directional_albedo(0.9, one, torch.tensor([0.3], dtype=torch.float64), metal) > 0.98).all()
    # closed form at alpha = 1, head-on: D = 1/pi, G2 = 2 cos / (1 + cos), F = 1 give E = 1 - ln 2;
    # this pins D, V and the cosine factor together (single-scattering GGX loses ~70 % here)
    e = _directional_albedo(0.99999, one, torch.tensor([1.0], dtype=torch.float64), metal)
    torch.testing.assert_close(e, torch.full((3,), 1 - math.log(2), dtype=torch.float64), atol=2e-3, rtol=0)
    # a black rough dielectric reflects only its specular part, about F0 head-on
    e = _directional_albedo(0.9, torch.zeros(3, dtype=torch.float64), torch.tensor([0.6], dtype=torch.float64),
                            torch.tensor([0.0], dtype=torch.float64))
    assert (e > 0.03).all() and (e < 0.08).all()


def test_below_horizon_is_zero():
    f = cook_torrance(torch.tensor([[-0.2]]), torch.tensor([[0.5]]), torch.tensor([[0.3]]), torch.tensor([[0.4]]),
                      torch.ones(1, 3), torch.full((1, 1), 0.5), torch.zeros(1, 1))
    assert (f == 0).all()


def test_tonemaps():
    x = torch.tensor([0.0, 0.18, 1.0, 4.0])
    s = tonemap(x, "srgb")
    assert s[0] == 0 and s[2] == pytest.approx(1.0) and s[3] == pytest.approx(1.0)  # clipped
    a = aces_filmic(x)
    assert (a[1:] > a[:-1]).all() and a[-1] < 1.0  # monotone, rolls off instead of clipping
    assert tonemap(x, "aces")[-1] < 1.0
    with pytest.raises(ValueError, match="tone mapping"):
        tonemap(x, "reinhard")
