"""Baked ambient occlusion (invrender.distill.visibility) on scenes built from flat Gaussian sheets."""

from __future__ import annotations

import dataclasses
import inspect
import math

import pytest
import torch
from torch import Tensor

from invrender.distill.visibility import (
    AOConfig, bake_ambient_occlusion, bake_directional_shadows, bake_visibility_transfer, diffuse_visibility,
    transfer_visibility,
)
from invrender.shading.light import EnvironmentLight, cube_directions
from invrender.shading.shadowing import (
    DirectionalShadows, ambient_visibility, cell_radiance, light_visibility, sphere_directions,
)
from invrender.splat.sh import sh_basis

SPACING = 0.05  # centre spacing of the surfels that tile every sheet
RES = 48  # test grids are coarse: the geometry below spans ~25-50 voxels
_C45 = math.cos(math.pi / 4)
# wxyz rotations taking the local z axis (the flat axis of a surfel) onto each world axis
_QUAT_FOR_NORMAL_AXIS = {"z": (1.0, 0.0, 0.0, 0.0), "x": (_C45, 0.0, _C45, 0.0), "y": (_C45, -_C45, 0.0, 0.0)}


def _sheet(
    axis: str, coord: float, u_range: tuple[float, float], v_range: tuple[float, float],
    normal_sign: float, alpha: float = 0.95,
) -> dict[str, Tensor]:
    """An axis-aligned rectangle (plane ``axis = coord``) tiled with overlapping flat Gaussians whose
    normals point along ``normal_sign * axis``; u, v are the other two axes in x, y, z order."""
    u = torch.arange(u_range[0], u_range[1] + 1e-6, SPACING)
    v = torch.arange(v_range[0], v_range[1] + 1e-6, SPACING)
    uu, vv = (g.reshape(-1) for g in torch.meshgrid(u, v, indexing="ij"))
    k = "xyz".index(axis)
    others = [i for i in range(3) if i != k]
    m = uu.shape[0]
    means = torch.zeros(m, 3)  # [M, 3]
    means[:, k] = coord
    means[:, others[0]] = uu
    means[:, others[1]] = vv
    normals = torch.zeros(m, 3)
    normals[:, k] = normal_sign
    # in-plane std 0.6 x spacing so neighbours overlap into a continuous, opaque sheet
    scales = torch.tensor([0.6 * SPACING, 0.6 * SPACING, 0.02 * SPACING]).expand(m, 3).clone()
    quats = torch.tensor(_QUAT_FOR_NORMAL_AXIS[axis]).expand(m, 4).clone()
    return dict(means=means, scales=scales, quats=quats, opacities=torch.full((m,), alpha), normals=normals)


def _cat(*parts: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _index_of(scene: dict[str, Tensor], point: tuple[float, float, float], normal: tuple[float, float, float]) -> int:
    """Index of the Gaussian nearest ``point`` among those with the given normal."""
    d = (scene["means"] - torch.tensor(point)).norm(dim=1)
    d[(scene["normals"] - torch.tensor(normal)).norm(dim=1) > 1e-6] = math.inf
    return int(d.argmin())


def _disk(radius: float = 1.0) -> dict[str, Tensor]:
    sheet = _sheet("z", 0.0, (-radius, radius), (-radius, radius), +1.0)
    keep = sheet["means"][:, :2].norm(dim=1) <= radius
    return {k: v[keep] for k, v in sheet.items()}


def _box(half: float = 0.5) -> dict[str, Tensor]:
    """A closed cube; every wall's normal points into the cube."""
    side = (-half, half)
    return _cat(*[_sheet(a, s * half, side, side, -s) for a in "xyz" for s in (-1.0, 1.0)])


def _well(depth: float, half: float = 0.5) -> dict[str, Tensor]:
    """An open-topped square well: floor at z = 0 (normal +z), four walls up to ``depth``."""
    side = (-half, half)
    walls = [_sheet(a, s * half, side, (0.0, depth), -s) for a in "xy" for s in (-1.0, 1.0)]
    return _cat(_sheet("z", 0.0, side, side, +1.0), *walls)


def _well_form_factor(depth: float, half: float = 0.5) -> float:
    """Cosine-weighted fraction of the hemisphere that the square opening covers, seen from the floor
    centre (point-to-parallel-rectangle form factor, 4 corner rectangles of half x half at distance depth)."""
    a = half / depth
    q = math.sqrt(1.0 + a * a)
    return 4.0 * (2.0 * a / q * math.atan(a / q)) / (2.0 * math.pi)


def test_isolated_flat_disk_sees_the_sky():
    scene = _disk()
    ao = bake_ambient_occlusion(**scene, grid_resolution=RES)
    centre = _index_of(scene, (0.0, 0.0, 0.0), (0.0, 0.0, 1.0))
    assert ao[centre] > 0.9
    # no surfel of the sheet shadows itself or its neighbours (the offset clears the smeared sheet)
    assert ao.min() > 0.9


def test_disk_above_a_probe_blocks_its_form_factor():
    # a probe one radius below an opaque disk, facing it: the disk covers sin^2(45 deg) = 1/2 of the
    # cosine-weighted hemisphere, so AO is about 0.5 (this pins the cosine weighting)
    probe = _sheet("z", -1.0, (0.0, 0.0), (0.0, 0.0), +1.0)
    scene = _cat(probe, _disk())
    ao = bake_ambient_occlusion(**scene, grid_resolution=RES)
    assert 0.35 < ao[0] < 0.6
    # turned away from the disk it sees the sky again
    scene["normals"][0] = torch.tensor([0.0, 0.0, -1.0])
    assert bake_ambient_occlusion(**scene, grid_resolution=RES)[0] > 0.9


def test_closed_box_is_dark_inside():
    scene = _box()
    ao = bake_ambient_occlusion(**scene, grid_resolution=RES)
    bottom = _index_of(scene, (0.0, 0.0, -0.5), (0.0, 0.0, 1.0))
    assert ao[bottom] < 0.15
    assert ao.max() < 0.15  # every inward-facing surfel is enclosed
    # the same floor surfel facing out of the box sees the open sky below it
    scene["normals"][bottom] = torch.tensor([0.0, 0.0, -1.0])
    assert bake_ambient_occlusion(**scene, grid_resolution=RES)[bottom] > 0.9


def test_well_is_between_box_and_disk_and_brightens_as_it_gets_shallower():
    depths = (2.0, 1.0, 0.5, 0.25)
    values = []
    for depth in depths:
        scene = _well(depth)
        bottom = _index_of(scene, (0.0, 0.0, 0.0), (0.0, 0.0, 1.0))
        values.append(float(bake_ambient_occlusion(**scene, grid_resolution=RES)[bottom]))
    assert all(a < b for a, b in zip(values, values[1:])), values
    assert 0.15 < values[1] < 0.9, values  # depth = width: strictly between the box and the disk
    # and close to the analytic form factor of the opening (0.07, 0.24, 0.55, 0.83)
    for depth, value in zip(depths, values):
        assert abs(value - _well_form_factor(depth)) < 0.1, (depth, value, _well_form_factor(depth))


def test_max_distance_ignores_far_occluders():
    scene = _well(2.0)
    bottom = _index_of(scene, (0.0, 0.0, 0.0), (0.0, 0.0, 1.0))
    deep = bake_ambient_occlusion(**scene, grid_resolution=RES)[bottom]
    # the walls are >= 0.5 away; a 0.15 reach sees none of them
    near = bake_ambient_occlusion(**scene, grid_resolution=RES, max_distance=0.15)[bottom]
    assert deep < 0.15 and near > 0.9


def _random_scene(n: int, seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return dict(
        means=torch.rand(n, 3, generator=g),
        scales=0.01 + 0.05 * torch.rand(n, 3, generator=g),
        quats=torch.randn(n, 4, generator=g),
        opacities=torch.rand(n, generator=g),
        normals=torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1),
    )


def test_output_shape_range_and_determinism():
    scene = _random_scene(400)
    scene["means"].requires_grad_(True)  # the bake is gradient-free whatever the inputs
    ao = bake_ambient_occlusion(**scene, grid_resolution=32, num_directions=16)
    assert ao.shape == (400,) and ao.dtype == torch.float32 and not ao.requires_grad
    assert torch.isfinite(ao).all() and (ao >= 0).all() and (ao <= 1).all()
    assert ao.std() > 0.01  # the random fog occludes some Gaussians more than others
    again = bake_ambient_occlusion(**scene, grid_resolution=32, num_directions=16)
    assert torch.equal(ao, again)
    chunked = bake_ambient_occlusion(**scene, grid_resolution=32, num_directions=16, chunk=37)
    torch.testing.assert_close(chunked, ao, rtol=0, atol=1e-6)


def test_single_gaussian_and_empty_scene():
    one = _random_scene(1)
    ao = bake_ambient_occlusion(**one)
    assert ao.shape == (1,) and ao[0] > 0.95  # nothing else in the scene; it must not occlude itself
    empty = bake_ambient_occlusion(
        torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, 3)
    )
    assert empty.shape == (0,)


@pytest.mark.parametrize(
    "name, shape",
    [("means", (5, 2)), ("scales", (5, 1)), ("quats", (5, 3)), ("opacities", (5, 1)), ("normals", (4, 3))],
)
def test_bad_shapes_raise(name: str, shape: tuple[int, ...]):
    scene = _random_scene(5)
    scene[name] = torch.zeros(shape)
    with pytest.raises(ValueError, match=name):
        bake_ambient_occlusion(**scene)


def test_bad_knobs_raise():
    scene = _random_scene(5)
    for knobs in (dict(grid_resolution=1), dict(num_directions=0), dict(chunk=0), dict(offset=-1.0), dict(max_distance=0.0)):
        with pytest.raises(ValueError, match=next(iter(knobs))):
            bake_ambient_occlusion(**scene, **knobs)


def test_config_matches_function_defaults():
    params = inspect.signature(bake_ambient_occlusion).parameters
    kwargs = AOConfig().bake_kwargs()
    assert set(kwargs) == {f.name for f in dataclasses.fields(AOConfig)} - {"indirect", "shadow_sh_degree", "shadow_directions"}
    transfer_params = inspect.signature(bake_visibility_transfer).parameters
    for name, default in kwargs.items():
        assert params[name].default == default, name
        assert transfer_params[name].default == default, name
    assert transfer_params["sh_degree"].default == AOConfig().shadow_sh_degree
    # the config splats straight into the call
    scene = _random_scene(10)
    assert bake_ambient_occlusion(**scene, **AOConfig(grid_resolution=16).bake_kwargs()).shape == (10,)


def test_diffuse_visibility_gives_back_a_share_of_the_blocked_sky():
    ao = torch.tensor([0.0, 0.25, 1.0])
    assert torch.allclose(diffuse_visibility(ao, 0.0), ao)  # plain AO
    assert torch.allclose(diffuse_visibility(ao, 0.5), torch.tensor([0.5, 0.625, 1.0]))
    assert torch.allclose(diffuse_visibility(ao, 1.0), torch.ones(3))  # occlusion ignored
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="indirect"):
            diffuse_visibility(ao, bad)
        with pytest.raises(ValueError, match="ao.indirect"):  # the config refuses it at the command line
            AOConfig(indirect=bad)


def test_large_gaussian_is_spread_over_the_voxels_it_covers():
    # one big opaque flat Gaussian (std 0.3 = ~10 voxels) 0.3 above a probe facing it. Integrating
    # exp(-tau(r) / cos) over the cosine-weighted hemisphere gives AO = 0.18 from the probe's centre
    # and 0.11 from where its rays start (2 voxels higher). A deposit at the Gaussian's centre only
    # would be a two-voxel speck leaving the probe almost fully lit; a sparse, holey one lets light in.
    scene = dict(
        means=torch.tensor([[0.0, 0.0, 0.3], [0.0, 0.0, 0.0]]),
        scales=torch.tensor([[0.3, 0.3, 0.001], [0.01, 0.01, 0.001]]),
        quats=torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]),
        opacities=torch.tensor([0.99, 0.5]),
        normals=torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]),
    )
    for res in (RES, 160):  # at 160 the Gaussian spans 200^2 sub-samples: it must stay thin and whole
        ao = bake_ambient_occlusion(**scene, grid_resolution=res)
        assert 0.07 < ao[1] < 0.22, (res, ao)
        assert ao[0] > 0.95, (res, ao)  # the big Gaussian itself, facing away, does not shadow itself


def test_density_normals_point_out_of_a_solid_slab():
    # a thick slab: three stacked sheets, so the shortest axes say nothing about "out" for the
    # middle one, but the density falls off above the top and below the bottom
    slab = _cat(*[_sheet("z", z, (-1.0, 1.0), (-1.0, 1.0), +1.0) for z in (-0.1, 0.0, 0.1)])
    top = _index_of(slab, (0.0, 0.0, 0.1), (0.0, 0.0, 1.0))
    bottom = _index_of(slab, (0.0, 0.0, -0.1), (0.0, 0.0, 1.0))
    args = (slab["means"], slab["scales"], slab["quats"], slab["opacities"])
    ao_density = bake_ambient_occlusion(*args, None, grid_resolution=48, num_directions=16)
    # from the density, the top sheet looks up and the bottom one down: both see the sky
    assert ao_density[top] > 0.85 and ao_density[bottom] > 0.85
    # with the given normals (all +z) the bottom sheet looks into the slab
    ao_given = bake_ambient_occlusion(*args, slab["normals"], grid_resolution=48, num_directions=16)
    assert ao_given[bottom] < 0.2


# ---------------------------------------------------------------------------------------------
# light-dependent shadowing (bake_visibility_transfer + shading.shadowing.light_visibility)


def _sun_light(direction: tuple[float, float, float], resolution: int = 16) -> EnvironmentLight:
    """A dim sky with a bright lobe around ``direction``."""
    light = EnvironmentLight(resolution)
    d = cube_directions(resolution)
    s = torch.nn.functional.normalize(torch.tensor(direction), dim=0)
    rad = 0.05 + 20.0 * (d @ s).clamp(min=0) ** 32
    with torch.no_grad():
        light.log_radiance.copy_(torch.log(rad)[..., None].expand(-1, -1, -1, 3))
    return light


def _floor_and_wall() -> tuple[dict[str, Tensor], int]:
    """A floor (normal +z) and, 0.3 to its +x side, a tall wall facing it: the floor's centre cannot
    see a sun low in the +x sky but sees one low in the -x sky."""
    scene = _cat(_sheet("z", 0.0, (-1.0, 1.0), (-1.0, 1.0), +1.0), _sheet("x", 0.3, (-1.5, 1.5), (0.0, 1.5), -1.0))
    return scene, _index_of(scene, (0.0, 0.0, 0.0), (0.0, 0.0, 1.0))


def test_transfer_gives_the_ambient_occlusion_back_and_the_open_sky_projects_the_cosine():
    scene, probe = _floor_and_wall()
    kw = dict(grid_resolution=RES, num_directions=64)
    transfer = bake_visibility_transfer(**scene, sh_degree=3, **kw)
    assert transfer.shape == (scene["means"].shape[0], 32)
    ao = bake_ambient_occlusion(**scene, **kw)
    # T_0 / U_0 is the same mean over the same directions as the AO bake
    torch.testing.assert_close(transfer[:, 0] / transfer[:, 16], ao, atol=1e-5, rtol=0)
    assert float(ao[probe]) < 0.8  # the wall is there
    # U is the cosine lobe's projection, pi Y_0, 2 pi / 3 Y_1m, pi / 4 Y_2m, 0 for band 3, up to the
    # 64-direction quadrature
    n = scene["normals"][probe]
    band = torch.tensor([math.pi] + [2 * math.pi / 3] * 3 + [math.pi / 4] * 5 + [0.0] * 7)
    want = band * sh_basis(3, n)
    torch.testing.assert_close(transfer[probe, 16:25], want[:9], atol=0.02, rtol=0)
    torch.testing.assert_close(transfer[probe, 25:], want[9:], atol=0.05, rtol=0)  # aliasing of the 64 samples
    rec = transfer_visibility(transfer, 0.5)
    assert rec.shape == (transfer.shape[0], 33)
    torch.testing.assert_close(rec[:, -1], 0.5 * (1 - ao), atol=1e-5, rtol=0)


def test_a_hidden_sun_shadows_the_diffuse_term_and_a_visible_one_does_not():
    scene, probe = _floor_and_wall()
    rec = transfer_visibility(bake_visibility_transfer(**scene, sh_degree=3, grid_resolution=RES), 0.0)
    ao = float(rec[probe, 0] / rec[probe, 16])
    with torch.no_grad():
        behind_wall = light_visibility(rec, _sun_light((1.0, 0.0, 0.6)))[probe]
        open_side = light_visibility(rec, _sun_light((-1.0, 0.0, 0.6)))[probe]
    assert behind_wall.shape == (1,)
    assert float(behind_wall.max()) < 0.6 * ao < float(open_side.min())
    assert float(open_side.min()) > 0.85
    # a uniform sky only has a constant SH term: the ratio is the ambient occlusion exactly
    uniform = EnvironmentLight(16, init_radiance=0.7)
    with torch.no_grad():
        torch.testing.assert_close(light_visibility(rec, uniform)[probe], torch.full((1,), ao), atol=1e-5, rtol=0)
        # the bounce fill is added on top, and the result never exceeds 1
        filled = light_visibility(transfer_visibility(rec[:, :32], 0.5), _sun_light((-1.0, 0.0, 0.6)))
    assert float(filled.max()) <= 1.0 and bool((filled[probe] >= open_side - 1e-6).all())
    # an ambient visibility is the same for every light
    amb = torch.rand(5, 1)
    assert light_visibility(amb, uniform) is amb


def test_light_visibility_follows_the_light_gradient_and_refuses_odd_shapes():
    scene, probe = _floor_and_wall()
    rec = transfer_visibility(bake_visibility_transfer(**scene, sh_degree=2, grid_resolution=32, num_directions=16), 0.0)
    assert rec.shape[1] == 19
    light = _sun_light((0.3, 0.0, 1.0), resolution=8)  # high enough to be partly seen: not clamped
    vis = light_visibility(rec, light)[probe]
    assert 0.0 < float(vis.detach().min()) and float(vis.detach().max()) < 1.0
    vis.sum().backward()
    assert light.log_radiance.grad is not None and bool(light.log_radiance.grad.abs().sum() > 0)
    with pytest.raises(ValueError, match="transfer record"):
        light_visibility(torch.zeros(4, 7), light)
    with pytest.raises(ValueError, match="sh_degree"):
        bake_visibility_transfer(**scene, sh_degree=0)
    with pytest.raises(ValueError, match="shadow-sh-degree"):
        AOConfig(shadow_sh_degree=4)


def test_transfer_at_surface_points_and_its_ambient_part():
    """A mesh's vertices get the same transfer as the Gaussians (query points), and the part that
    cannot follow the light (a glTF occlusion texture) is the AO plus the bounce fill."""
    scene, probe = _floor_and_wall()
    kw = dict(grid_resolution=RES, num_directions=64)
    pts = torch.tensor([[0.0, 0.0, 0.0], [-0.9, 0.0, 0.0]])  # next to the wall, and far from it
    up = torch.tensor([[0.0, 0.0, 1.0]]).expand(2, 3)
    transfer = bake_visibility_transfer(**scene, sh_degree=2, points=pts, point_normals=up, **kw)
    ao = bake_ambient_occlusion(**scene, points=pts, point_normals=up, **kw)
    assert transfer.shape == (2, 18)
    torch.testing.assert_close(transfer[:, 0] / transfer[:, 9], ao, atol=1e-5, rtol=0)
    assert float(ao[0]) < float(ao[1])
    rec = transfer_visibility(transfer, 0.5)
    torch.testing.assert_close(ambient_visibility(rec), (ao + 0.5 * (1 - ao))[:, None], atol=1e-5, rtol=0)
    uniform = EnvironmentLight(16, init_radiance=0.3)
    with torch.no_grad():  # ...which is what the record gives under a uniform sky
        torch.testing.assert_close(light_visibility(rec, uniform), ambient_visibility(rec), atol=1e-5, rtol=0)
    amb = torch.rand(4, 1)
    assert ambient_visibility(amb) is amb
    torch.testing.assert_close(ambient_visibility(amb.expand(4, 3)), amb)
    with pytest.raises(ValueError, match="transfer record"):
        ambient_visibility(torch.zeros(4, 5))


# ---------------------------------------------------------------------------------------------
# sharp shadows (bake_directional_shadows + shading.shadowing.DirectionalShadows)


def test_sphere_directions_are_unit_and_spread_evenly():
    d = sphere_directions(256)
    torch.testing.assert_close(d.norm(dim=1), torch.ones(256))
    assert float(d.mean(0).norm()) < 0.01  # no side favoured
    # equal areas: as many directions in each of four equal-area z bands
    counts = torch.histc(d[:, 2], bins=4, min=-1.0, max=1.0)
    assert int(counts.min()) >= 63 and int(counts.max()) <= 65


def test_a_sun_cell_holds_the_sun_and_a_uniform_sky_is_uniform():
    uniform = EnvironmentLight(16, init_radiance=0.7)
    torch.testing.assert_close(cell_radiance(uniform, 64), torch.full((64,), 0.7), atol=1e-5, rtol=0)
    sun = _sun_light((0.3, 0.2, 0.9), resolution=32)
    cells = cell_radiance(sun, 256)
    dirs = sphere_directions(256)
    s = torch.nn.functional.normalize(torch.tensor([0.3, 0.2, 0.9]), dim=0)
    assert int(cells.argmax()) == int((dirs @ s).argmax())  # the brightest cell is the sun's


def _narrow_sun(direction, resolution: int = 32) -> EnvironmentLight:
    """A sky of radiance 0.05 with a ~4 degree sun around ``direction``."""
    light = EnvironmentLight(resolution)
    d = cube_directions(resolution)
    s = torch.nn.functional.normalize(torch.tensor(direction), dim=0)
    with torch.no_grad():
        light.log_radiance.copy_(torch.log(0.05 + 200.0 * (d @ s).clamp(min=0) ** 400)[..., None].expand(-1, -1, -1, 3))
    return light


def test_sharp_shadows_hide_the_sun_as_the_closed_form_says():
    from invrender.shading.light import cube_texel_solid_angles

    scene, probe = _floor_and_wall()
    transmittance, normals = bake_directional_shadows(
        scene["means"], scene["scales"], scene["quats"], scene["opacities"], scene["normals"],
        num_directions=256, grid_resolution=RES)
    assert transmittance.dtype == torch.uint8 and transmittance.shape == (scene["means"].shape[0], 256)
    behind_probe = (normals[probe] @ sphere_directions(256).T) <= 0
    assert int(transmittance[probe][behind_probe].max()) == 0  # directions behind the surface carry nothing
    shadows = DirectionalShadows(transmittance, normals)
    rec = transfer_visibility(bake_visibility_transfer(**scene, sh_degree=3, grid_resolution=RES), 0.0)
    ao = float(rec[probe, 0] / rec[probe, 16])
    cos = (cube_directions(32) @ torch.tensor([0.0, 0.0, 1.0])).clamp(min=0)
    w = cube_texel_solid_angles(32, dtype=torch.float32)
    with torch.no_grad():
        # suns behind the wall (elevations 31 and 56 degrees; its top is at 79): the probe keeps only
        # the sky it sees, 0.05 pi AO, out of the light's whole irradiance (a texel sum)
        sh_errors = []
        for direction in ((1.0, 0.0, 0.6), (1.0, 0.0, 1.5)):
            light = _narrow_sun(direction)
            want = 0.05 * math.pi * ao / float((light.cube()[..., 0] * cos * w).sum())
            assert abs(float(shadows.share(light)[probe]) - want) < 0.01
            sh_errors.append(abs(float(light_visibility(rec, light)[probe]) - want))
        # the SH of degree 3 rings (a share below 0 is clamped) or leaks the hidden sun
        assert max(sh_errors) > 0.03
        seen = _narrow_sun((-1.0, 0.0, 0.6))
        assert float(shadows.share(seen)[probe]) > 0.9
        # under a uniform sky the share is the ambient occlusion of the same scene
        assert abs(float(shadows.share(EnvironmentLight(16, init_radiance=0.7))[probe]) - ao) < 0.05
        # the record's fill is added on top of the sharp share, as on top of its own
        hidden = _narrow_sun((1.0, 0.0, 0.6))
        filled = light_visibility(transfer_visibility(rec[:, :32], 0.5), hidden, shadows)[probe]
        torch.testing.assert_close(filled, shadows.share(hidden)[probe] + 0.5 * (1 - ao), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="directional shadows for"):
        light_visibility(rec[:5], hidden, shadows)
    with pytest.raises(ValueError, match="normals"):
        DirectionalShadows(transmittance, normals[:3])
    with pytest.raises(ValueError, match="shadow-directions"):
        AOConfig(shadow_directions=-1)
