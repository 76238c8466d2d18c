"""Cube-map environment light: layout, lookups, conversions, rotation and SH irradiance."""

import math

import torch

from invrender.shading.envmap import direction_grid
from invrender.shading.light import (
    EnvironmentLight, cube_directions, cube_texel_solid_angles, direction_to_cube, rotate_z, sample_cube,
    sample_equirect,
)


def test_texel_solid_angles_cover_the_sphere():
    w = cube_texel_solid_angles(16)
    assert abs(float(w.sum()) * 6 - 4 * math.pi) < 1e-9
    assert w[8, 8] > w[0, 0]  # centre texels subtend more than corner ones


def test_cube_directions_round_trip_through_face_lookup():
    d = cube_directions(8, dtype=torch.float64)  # [6, 8, 8, 3]
    face, s, t = direction_to_cube(d.reshape(-1, 3))
    assert torch.equal(face.reshape(6, 8, 8), torch.arange(6)[:, None, None].expand(6, 8, 8))
    c = (torch.arange(8, dtype=torch.float64) + 0.5) / 4 - 1
    torch.testing.assert_close(s.reshape(6, 8, 8), c[None, None, :].expand(6, 8, 8))
    torch.testing.assert_close(t.reshape(6, 8, 8), c[None, :, None].expand(6, 8, 8))
    # a cube whose texels hold their own direction returns it at texel centres
    torch.testing.assert_close(sample_cube(d, d.reshape(-1, 3)), d.reshape(-1, 3))


def _smooth_equirect(h=64):
    d = torch.from_numpy(direction_grid(h, 2 * h))
    return torch.stack([1 + d[..., 0], 1 + 0.5 * d[..., 1], 1.2 + d[..., 2] ** 2], -1).float()  # [H, W, 3]


def test_equirect_to_cube_keeps_values():
    img = _smooth_equirect()
    light = EnvironmentLight.from_equirect(img, resolution=32)
    g = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(500, 3, generator=g), dim=-1)
    expected = torch.stack([1 + dirs[:, 0], 1 + 0.5 * dirs[:, 1], 1.2 + dirs[:, 2] ** 2], -1)
    # two bilinear resamplings of a smooth map: error ~ texel size squared
    torch.testing.assert_close(light.radiance(dirs), expected, atol=0.02, rtol=0)
    torch.testing.assert_close(sample_equirect(img, dirs), expected, atol=0.01, rtol=0)
    back = light.to_equirect(64)
    assert back.shape == (64, 128, 3)
    torch.testing.assert_close(back[4:-4], img[4:-4], atol=0.03, rtol=0)


def test_rotation_about_up_axis_moves_features_counter_clockwise():
    img = torch.full((64, 128, 3), 0.1)
    d = torch.from_numpy(direction_grid(64, 128)).float()
    img[(d[..., 0] > 0.95)] = 10.0  # a bright patch around +X
    light = EnvironmentLight.from_equirect(img, resolution=32, rotation_deg=90.0, intensity=2.0)
    plus_x, plus_y, minus_y = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0]]).unbind(0)
    assert light.radiance(plus_y[None])[0, 0] > 15  # the patch now sits at +Y, scaled by 2
    assert light.radiance(plus_x[None])[0, 0] < 1 and light.radiance(minus_y[None])[0, 0] < 1
    torch.testing.assert_close(rotate_z(plus_x[None], 90.0), plus_y[None], atol=1e-6, rtol=0)


def test_sh_irradiance_constant_and_sky():
    light = EnvironmentLight(resolution=16, init_radiance=0.7)
    n = torch.nn.functional.normalize(torch.randn(50, 3), dim=-1)
    torch.testing.assert_close(light.irradiance(n), torch.full((50, 3), math.pi * 0.7), rtol=1e-4, atol=0)

    # a white upper hemisphere: E(n) = pi (1 + n_z) / 2, linear in n, so bands 0 and 1 hold it
    # exactly and the band-2 terms of the step vanish; what is left is the cube's discretization
    sky = EnvironmentLight(resolution=32)
    with torch.no_grad():
        z = cube_directions(32)[..., 2:3].expand(6, 32, 32, 3)
        sky.log_radiance.copy_(torch.where(z > 0, 0.0, math.log(1e-6)))
    exact = math.pi * (1 + n[:, 2:3]) / 2
    err = (sky.irradiance(n) - exact).abs().max().detach()
    assert float(err) < 1e-3 * math.pi  # measured 1.6e-4 pi at 32 texels a face


def test_gradients_reach_the_texels():
    light = EnvironmentLight(resolution=8)
    dirs = torch.nn.functional.normalize(torch.randn(100, 3), dim=-1)
    (light.radiance(dirs).sum() + light.irradiance(dirs).sum()).backward()
    g = light.log_radiance.grad
    assert g is not None and torch.isfinite(g).all() and (g.abs() > 0).float().mean() > 0.5


def test_prefiltered_levels_are_reused_only_while_the_light_is_unchanged():
    from invrender.shading.prefilter import SpecularMips

    light = EnvironmentLight(8, 0.5)
    mips = SpecularMips(8, roughness=(0.0, 0.5), divisors=(1, 2))
    with torch.no_grad():
        light.log_radiance[0] += 1.0
        a = light.prefiltered_levels(mips)
        assert light.prefiltered_levels(mips) is a  # same light: no recomputation
        # nor for another instance with the same settings; other settings are their own levels
        assert light.prefiltered_levels(SpecularMips(8, roughness=(0.0, 0.5), divisors=(1, 2))) is a
        other = light.prefiltered_levels(SpecularMips(8, roughness=(0.0, 0.7), divisors=(1, 2)))
        assert other is not a and not torch.equal(other[1], a[1])
        light.log_radiance[1] += 1.0  # an in-place change must invalidate it
        b = light.prefiltered_levels(mips)
    assert b is not a and not torch.equal(a[1], b[1])
    assert torch.allclose(b[1], mips.levels(light.cube())[1])
    # while training, every call builds a fresh differentiable chain
    c = light.prefiltered_levels(mips)
    assert c[1].requires_grad and c is not light.prefiltered_levels(mips)
