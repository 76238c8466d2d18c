"""shade(): the G-buffer contract and the PRD blend, without a reference renderer."""

import math

import pytest
import torch

from invrender.shading.light import EnvironmentLight
from invrender.shading.shade import GBuffer, shade


def _gbuffer(progress):
    H = W = 4
    n = torch.nn.functional.normalize(torch.randn(H, W, 3), dim=-1)
    return GBuffer(
        albedo=torch.rand(H, W, 3), roughness=torch.rand(H, W, 1), metallic=torch.rand(H, W, 1), normal=n,
        alpha=torch.ones(H, W, 1), radiance=torch.rand(H, W, 3), progress=torch.full((H, W, 1), progress),
    ), -n  # view straight at each surface


def test_progress_blends_pbr_and_radiance():
    light = EnvironmentLight(resolution=16, init_radiance=0.3)
    for p in (0.0, 0.25, 1.0):
        g, view = _gbuffer(p)
        out = shade(g, light, view)
        torch.testing.assert_close(out.final, p * out.pbr + (1 - p) * g.radiance)
    torch.testing.assert_close(out.pbr_linear, out.diffuse + out.specular)


def test_white_furnace_diffuse_and_gradients():
    # a white rough dielectric under a uniform white sky: diffuse = albedo (1 - m) * L exactly
    light = EnvironmentLight(resolution=16, init_radiance=1.0)
    g, view = _gbuffer(1.0)
    g.metallic = torch.zeros_like(g.metallic)
    g.albedo = torch.full_like(g.albedo, 0.5).requires_grad_()
    out = shade(g, light, view)
    torch.testing.assert_close(out.diffuse, torch.full_like(out.diffuse, 0.5), rtol=1e-4, atol=1e-5)
    # a white sky times F0 A + B of a dielectric: a few per cent at any roughness
    assert (out.specular > 0.005).all() and (out.specular < 0.1).all()
    out.final.sum().backward()
    assert g.albedo.grad is not None and light.log_radiance.grad is not None


def test_a_traced_bounce_replaces_the_grey_fill():
    from invrender.distill.visibility import transfer_visibility
    from invrender.shading.shadowing import bounce_visibility, light_visibility

    light = EnvironmentLight(8, init_radiance=2.0)  # uniform sky: irradiance 2 pi along any normal
    k = 9
    t = torch.zeros(2, k)
    u = torch.zeros(2, k)
    u[:, 0] = 1.0
    t[:, 0] = 0.4  # 40 % of a uniform sky gets through
    record = transfer_visibility(torch.cat([t, u], 1), indirect=0.5)  # fill 0.5 (1 - AO) = 0.3
    normals = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(light_visibility(record, light), torch.full((2, 1), 0.7))
    bounce = torch.tensor([[0.2, 0.4, 0.6], [0.0, 0.0, 0.0]]) * 2 * math.pi  # irradiance sent by the scene
    vis = bounce_visibility(record, light, bounce, normals)
    torch.testing.assert_close(vis, torch.tensor([[0.6, 0.8, 1.0], [0.4, 0.4, 0.4]]), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="transfer record"):
        bounce_visibility(torch.ones(2, 1), light, bounce, normals)
