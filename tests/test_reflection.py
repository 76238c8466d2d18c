"""Traced specular inter-reflection (invrender.distill.reflection) and its use in the shading."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from invrender.distill.reflection import (
    ReflectionConfig, build_reflection_grid, gaussian_radiance, lit_grid, reflection_image, surface_points,
    trace_reflections, with_radiance,
)
from invrender.shading.light import EnvironmentLight
from invrender.shading.shade import GBuffer, shade


def _wall(n_side: int = 24, x: float = 1.0, half: float = 0.6) -> dict:
    """A dense, opaque wall of flat Gaussians in the plane x = ``x`` (normal -x), plus one tiny
    far-away Gaussian so the grid also spans the origin side."""
    u = torch.linspace(-half, half, n_side)
    yy, zz = torch.meshgrid(u, u, indexing="ij")
    means = torch.stack([torch.full_like(yy, x), yy, zz], -1).reshape(-1, 3)
    spacing = 2 * half / (n_side - 1)
    scales = torch.tensor([0.01, spacing, spacing]).expand(means.shape[0], 3).clone()
    means = torch.cat([means, torch.tensor([[-1.0, 0.0, 0.0]])])
    scales = torch.cat([scales, torch.full((1, 3), 1e-3)])
    n = means.shape[0]
    quats = torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(n, 4).clone()
    opac = torch.full((n,), 0.99)
    opac[-1] = 0.01
    return {"means": means, "scales": scales, "quats": quats, "opacities": opac}


def test_mirror_ray_meets_the_wall_and_its_colour():
    w = _wall()
    grid = build_reflection_grid(w["means"], w["scales"], w["quats"], w["opacities"], resolution=48, offset=1.0)
    colour = torch.tensor([0.2, 0.5, 0.8])
    lit = with_radiance(grid, colour.expand(w["means"].shape[0], 3))
    # a point at the origin facing +x, seen head-on (camera -> point along -x): the mirror ray goes
    # straight back along the normal into the wall; the same point facing -x looks away from it
    pts = torch.zeros(2, 3)
    normals = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    view = -normals
    r = trace_reflections(lit, pts, normals, view)
    assert r.shape == (2, 4)
    hit, miss = r[0], r[1]
    assert hit[0] < 0.02  # the wall hides the sky
    torch.testing.assert_close(hit[1:], colour * (1 - hit[0]), atol=0.03, rtol=0.05)  # ... and shows its colour
    assert miss[0] > 0.97 and miss[1:].abs().max() < 0.02  # facing away: open sky, nothing met


def test_radiance_grid_needs_its_colours():
    w = _wall(n_side=4)
    grid = build_reflection_grid(w["means"], w["scales"], w["quats"], w["opacities"], resolution=16)
    with pytest.raises(ValueError, match="no radiance yet"):
        trace_reflections(grid, torch.zeros(1, 3), torch.tensor([[1.0, 0, 0]]), torch.tensor([[1.0, 0, 0]]))
    with pytest.raises(ValueError, match=r"radiance must be \[N, 3\]"):
        with_radiance(grid, torch.ones(3, 3))
    with pytest.raises(ValueError, match="grid-resolution"):
        ReflectionConfig(grid_resolution=1)
    with pytest.raises(ValueError, match="offset"):
        ReflectionConfig(offset=-1.0)


def test_gaussian_radiance_is_the_diffuse_term():
    light = EnvironmentLight(8, init_radiance=2.0)
    n = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    albedo = torch.tensor([[0.5, 0.25, 1.0], [1.0, 1.0, 1.0]])
    metallic = torch.tensor([[0.0], [1.0]])
    c = gaussian_radiance(albedo, metallic, n, torch.full((2, 1), 0.5), light)
    # uniform sky of radiance 2: irradiance 2 pi, so albedo / pi * 2 pi * visibility = albedo * 2 * 0.5
    torch.testing.assert_close(c[0], albedo[0], atol=1e-3, rtol=1e-3)
    assert c[1].abs().max() < 1e-6  # a metal sends no diffuse light


def test_shade_mixes_the_traced_ray_into_the_specular_term():
    light = EnvironmentLight(8, init_radiance=1.0)
    g = GBuffer(albedo=torch.full((3, 3), 0.8), roughness=torch.full((3, 1), 0.2), metallic=torch.ones(3, 1),
                normal=torch.tensor([[0.0, 0.0, 1.0]]).expand(3, 3), alpha=torch.ones(3, 1))
    v = torch.tensor([[0.3, 0.0, -1.0]]).expand(3, 3)
    plain = shade(g, light, v)
    sky = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).expand(3, 4)
    torch.testing.assert_close(shade(dataclasses.replace(g, reflection=sky), light, v).specular, plain.specular)
    # fully blocked by a surface of radiance c: the specular term is c times the split-sum factor
    c = torch.tensor([0.1, 0.2, 0.3])
    blocked = torch.cat([torch.zeros(3, 1), c.expand(3, 3)], -1)
    spec = shade(dataclasses.replace(g, reflection=blocked), light, v).specular
    torch.testing.assert_close(spec / c, plain.specular / 1.0, rtol=1e-4, atol=1e-5)  # the sky's radiance is 1


def test_surface_points_back_project_depth():
    from invrender.cameras import look_at_viewmat, make_K

    vm = look_at_viewmat((0.0, -3.0, 0.0))
    K = make_K(40.0, 40.0, 16.0, 16.0)
    depth = torch.full((32, 32, 1), 3.0)
    pts = surface_points(depth, K, vm)
    # the centre pixel's ray is the optical axis: z-depth 3 from (0, -3, 0) looking at the origin
    torch.testing.assert_close(pts[16, 16], torch.zeros(3), atol=0.06, rtol=0)
    cam = (vm[:3, :3] @ pts.reshape(-1, 3).T + vm[:3, 3:]).T
    torch.testing.assert_close(cam[:, 2], torch.full((32 * 32,), 3.0), atol=1e-5, rtol=0)


def test_reflection_image_traces_covered_pixels_only():
    w = _wall()
    params = {"means": w["means"], "scales": torch.log(w["scales"]), "quats": w["quats"],
              "opacities": torch.logit(w["opacities"]), "albedo": torch.logit(torch.full((w["means"].shape[0], 3), 0.6)),
              "metallic": torch.logit(torch.full((w["means"].shape[0], 1), 0.01))}
    lit = lit_grid(params, None, EnvironmentLight(8, 1.0), ReflectionConfig(grid_resolution=48, offset=1.0, hit_specular=False))
    alpha = torch.tensor([[[1.0], [0.2]]])  # [1, 2, 1]
    pts = torch.zeros(1, 2, 3)
    nrm = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])
    img = reflection_image(lit, pts, nrm, -nrm, alpha)
    assert img.shape == (1, 2, 4)
    assert img[0, 0, 0] < 0.05 and img[0, 0, 1:].min() > 0.1  # covered: the lit wall
    torch.testing.assert_close(img[0, 1], torch.tensor([1.0, 0.0, 0.0, 0.0]))  # uncovered: open sky
    # the wall's colour: albedo 0.6 * 0.99 diffuse under a uniform sky of 1 (visibility 1)
    assert math.isclose(float(img[0, 0, 1:].mean()), 0.6 * 0.99 * (1 - float(img[0, 0, 0])), rel_tol=0.1)


def test_render_prd_refuses_relighting_without_the_target_grid():
    from invrender.distill.model import material_params, render_prd
    from invrender.cameras import look_at_viewmat, make_K

    w = _wall(n_side=4)
    n = w["means"].shape[0]
    params = {"means": w["means"], "scales": torch.log(w["scales"]), "quats": w["quats"],
              "opacities": torch.logit(w["opacities"]), "sh0": torch.zeros(n, 1, 3), "shN": torch.zeros(n, 0, 3),
              **{k: v.detach() for k, v in material_params(n, 0.5, 0.5, 0.0, 0.5, "cpu").items()}}
    grid = lit_grid(params, None, EnvironmentLight(8, 1.0), ReflectionConfig(grid_resolution=16))
    with pytest.raises(ValueError, match="target_reflections"):
        render_prd(params, EnvironmentLight(8, 1.0), look_at_viewmat((-3.0, 0.0, 0.0)), make_K(20.0, 20.0, 8.0, 8.0),
                   16, 16, 0, None, blend="pbr", reflections=grid, target_light=EnvironmentLight(8, 2.0))
    out = render_prd(params, EnvironmentLight(8, 1.0), look_at_viewmat((-3.0, 0.0, 0.0)),
                     make_K(20.0, 20.0, 8.0, 8.0), 16, 16, 0, None, blend="pbr", reflections=grid)
    assert out.gbuffer.reflection is not None and out.gbuffer.reflection.shape == (16, 16, 4)
    assert torch.isfinite(out.final).all() and F.relu(-out.final).max() == 0


def test_a_mirror_ray_also_gets_what_the_surface_it_meets_reflects_of_the_sky():
    from invrender.shading.light import cube_directions

    # a slab, not a sheet: a surface's normal in the grid is its density's outward gradient
    layers = [_wall(x=1.0 + 0.1 * k) for k in range(6)]
    w = {key: torch.cat([lw[key] for lw in layers]) for key in layers[0]}
    grid = build_reflection_grid(w["means"], w["scales"], w["quats"], w["opacities"], resolution=48, offset=1.0)
    light = EnvironmentLight(16, init_radiance=1.0)
    behind = cube_directions(16)[..., 0] < -0.5  # the sky on the -x side, where the wall's mirror looks
    with torch.no_grad():
        light.log_radiance[behind] = math.log(3.0)
    n = w["means"].shape[0]
    pts, normals = torch.zeros(1, 3), torch.tensor([[1.0, 0.0, 0.0]])
    diffuse = torch.full((n, 3), 0.1)
    out = {}
    for name, f0 in (("none", None), ("mirror", 1.0), ("dielectric", 0.04)):
        lit = (with_radiance(grid, diffuse) if f0 is None else
               with_radiance(grid, diffuse, torch.full((n, 3), f0), torch.zeros(n, 1), light))
        out[name] = trace_reflections(lit, pts, normals, -normals)[0]
    opacity = 1 - out["none"][0]
    assert opacity > 0.98
    torch.testing.assert_close(out["none"][1:], torch.full((3,), 0.1) * opacity, atol=0.01, rtol=0.05)
    # the wall faces -x: a mirror wall sends the bright -x sky back along the ray, a dielectric 4 % of it
    torch.testing.assert_close(out["mirror"][1:], (0.1 + 3.0) * opacity.expand(3), atol=0.05, rtol=0.05)
    torch.testing.assert_close(out["dielectric"][1:], (0.1 + 0.04 * 3.0) * opacity.expand(3), atol=0.02, rtol=0.1)
    with pytest.raises(ValueError, match="needs f0"):
        with_radiance(grid, diffuse, torch.ones(n, 3), None, light)


def _view_factor_to_square(a: float, h: float) -> float:
    """Cosine-weighted share of the hemisphere that a centred, parallel square of half-side ``a`` at
    height ``h`` covers, seen from a point facing it (differential area to rectangle, closed form)."""
    s = a / h
    q = math.sqrt(1 + s * s)
    return 4 * (2 * (s / q) * math.atan(s / q)) / (2 * math.pi)


def test_bounce_is_the_lit_wall_seen_over_the_hemisphere():
    from invrender.distill.reflection import BOUNCE_OFFSET, gather_bounce

    receiver, emitter = _wall(x=0.0, n_side=25), _wall(x=0.25, n_side=25)
    w = {k: torch.cat([receiver[k], emitter[k]]) for k in receiver}
    grid = build_reflection_grid(w["means"], w["scales"], w["quats"], w["opacities"], resolution=64)
    n_rx = receiver["means"].shape[0]
    n = w["means"].shape[0]
    normals = torch.zeros(n, 3)
    normals[:n_rx, 0] = 1.0  # the receiving wall faces the emitter...
    normals[n_rx:, 0] = -1.0  # ...which faces back
    centre = 12 * 25 + 12  # the middle Gaussian of the receiving wall
    normals[centre + 1, 0] = -1.0  # its neighbour is turned away, towards the open side
    colour = torch.tensor([0.2, 0.5, 0.8])
    radiance = torch.zeros(n, 3)
    radiance[n_rx:] = colour  # only the emitting wall is lit
    lit = with_radiance(dataclasses.replace(grid, normals=normals), radiance)
    bounce = gather_bounce(lit, num_directions=64)
    assert bounce.shape == (n, 3) and bool(torch.isfinite(bounce).all()) and float(bounce.min()) >= 0
    # rays leave the centre BOUNCE_OFFSET voxels + 2 sigma off its sheet and stop about where the
    # emitter's density starts (it is spread over +-1.5 voxels by the trilinear deposit)
    h = 0.25 - BOUNCE_OFFSET * grid.voxel - 2 * 0.01 - 1.0 * grid.voxel
    want = math.pi * colour * _view_factor_to_square(0.6, h)
    torch.testing.assert_close(bounce[centre], want, rtol=0.05, atol=0.0)
    assert float(bounce[centre + 1].max()) < 0.02  # facing the open side: nothing sends it light
    with pytest.raises(ValueError, match="no radiance yet"):
        gather_bounce(grid)
    with pytest.raises(ValueError, match="bounce-directions"):
        ReflectionConfig(bounce_directions=-1)
    with pytest.raises(ValueError, match="bounce-refresh-every"):
        ReflectionConfig(bounce_refresh_every=0)


def test_lit_grid_gathers_the_bounce_only_with_a_transfer_record():
    from invrender.distill.visibility import transfer_visibility

    w = _wall(n_side=6)
    n = w["means"].shape[0]
    params = {"means": w["means"], "scales": torch.log(w["scales"]), "quats": w["quats"],
              "opacities": torch.logit(w["opacities"]), "albedo": torch.zeros(n, 3), "roughness": torch.zeros(n, 1),
              "metallic": torch.full((n, 1), -5.0)}
    light = EnvironmentLight(8, init_radiance=1.0)
    k = 4
    record = transfer_visibility(torch.cat([torch.full((n, k), 0.3), torch.full((n, k), 0.6)], 1), 0.5)
    cfg = ReflectionConfig(grid_resolution=16, bounce_directions=4)
    assert lit_grid(params, record, light, cfg).bounce.shape == (n, 3)
    assert lit_grid(params, record, light, cfg, bounce=False).bounce is None
    assert lit_grid(params, torch.full((n, 1), 0.7), light, cfg).bounce is None  # ambient: the grey fill stays
    assert lit_grid(params, record, light, ReflectionConfig(grid_resolution=16, bounce_directions=0)).bounce is None
