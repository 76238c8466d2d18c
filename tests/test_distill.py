"""The PRD schedule and trainer: stage boundaries and switches, what each switch does, the
deferred renderer's consistency with the radiance renderer, bit-for-bit resume across stages and
non-finite detection in the distillation stages."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from invrender.distill.model import depth_to_normal, gaussian_normals, material_params, render_prd
from invrender.distill.schedule import DistillConfig, PRDSchedule, blend_for, progress_override
from invrender.distill.trainer import (
    PRDTrainer, edge_aware_smoothness, light_smoothness, metal_albedo_smoothness, metallic_commitment,
    white_light_prior,
)
from invrender.distill.reflection import ReflectionConfig
from invrender.distill.visibility import AOConfig
from invrender.shading.shadowing import light_visibility
from invrender.shading.light import EnvironmentLight
from invrender.splat.gaussians import render_view
from invrender.splat.strategy import DensifyStrategy
from invrender.train import NonFiniteError, TrainConfig

# ---------------------------------------------------------------- schedule (pure functions)


def test_stage_boundaries():
    s = PRDSchedule(10, 5, 7, 3)
    assert s.total == 25
    assert [s.stage_at(k) for k in (1, 10, 11, 15, 16, 22, 23, 25)] == [
        "radiance", "radiance", "specular", "specular", "diffuse", "diffuse", "joint", "joint"]
    switches = {k: s.switch_at(k) for k in range(1, 26) if s.switch_at(k)}
    assert switches == {1: "radiance", 11: "specular", 16: "diffuse", 23: "joint"}
    with pytest.raises(ValueError):
        s.stage_at(0)


def test_zero_length_stages_are_skipped():
    s = PRDSchedule(4, 0, 3, 0)
    assert [s.stage_at(k) for k in range(1, 8)] == ["radiance"] * 4 + ["diffuse"] * 3
    assert s.switch_at(5) == "diffuse"
    assert PRDSchedule(0, 2, 0, 0).switch_at(1) == "specular"


def test_blend_per_preset_and_stage():
    assert [blend_for("prd", st) for st in ("radiance", "specular", "diffuse", "joint")] == [
        "radiance", "specular", "prd", "prd"]
    assert [blend_for("pbr", st) for st in ("radiance", "specular", "diffuse", "joint")] == [
        "radiance", "specular", "pbr", "pbr"]
    assert {blend_for("radiance", st) for st in ("radiance", "specular", "diffuse", "joint")} == {"radiance"}
    assert (progress_override("prd"), progress_override("pbr"), progress_override("radiance")) == (None, 1.0, 0.0)
    with pytest.raises(ValueError, match="preset"):
        blend_for("nope", "diffuse")


def test_light_smoothness_is_the_mean_log_step_between_neighbours():
    light = EnvironmentLight(8, 0.7)
    assert light_smoothness(light).item() == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():  # rows alternate by 1 in log radiance: every vertical step is 1, no horizontal one
        light.log_radiance[:, 1::2] += 1.0
    assert light_smoothness(light).item() == pytest.approx(0.5, abs=1e-6)
    with torch.no_grad():  # one bright texel (a sun) costs its four edges, however bright
        light.log_radiance.zero_()
        light.log_radiance[0, 3, 3] = 5.0
    per_axis = 6 * 7 * 8 * 3  # neighbour pairs along one axis
    assert light_smoothness(light).item() == pytest.approx(0.5 * (2 * 5.0 * 3 / per_axis) * 2, rel=1e-5)


def test_white_light_prior_is_zero_for_grey_light():
    light = EnvironmentLight(4, 0.7)
    assert white_light_prior(light).item() == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        light.log_radiance[..., 0] += 1.0  # a red cast
    assert white_light_prior(light).item() > 0.1


# ---------------------------------------------------------------- model


def _cam(dist=3.0):
    viewmat = torch.eye(4)
    viewmat[2, 3] = dist  # camera at z = -dist looking along +z
    K = torch.tensor([[40.0, 0, 16], [0, 40.0, 16], [0, 0, 1]])
    return viewmat, K


def _flat_patch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = (torch.rand(n, 2, generator=g) - 0.5) * 1.2
    means = torch.cat([xy, torch.zeros(n, 1)], -1)
    params = {
        "means": means, "scales": torch.log(torch.tensor([[0.12, 0.12, 0.005]])).repeat(n, 1),
        "quats": torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1), "opacities": torch.full((n,), 2.0),
        "sh0": torch.randn(n, 1, 3, generator=g) * 0.3, "shN": torch.zeros(n, 15, 3),
    }
    params.update({k: v.data for k, v in material_params(n).items()})
    return params


def test_gaussian_normal_is_shortest_axis_facing_camera():
    p = _flat_patch(8)
    n = gaussian_normals(p, torch.tensor([0.0, 0.0, -3.0]))
    assert torch.allclose(n, torch.tensor([0.0, 0.0, -1.0]).expand(8, 3))
    n = gaussian_normals(p, torch.tensor([0.0, 0.0, 3.0]))
    assert torch.allclose(n, torch.tensor([0.0, 0.0, 1.0]).expand(8, 3))


def test_residual_normal_trains_instead_of_the_rotation():
    from invrender.distill.model import NORMAL_RESIDUAL

    # identity rotations, smallest scale along z: the axis is +z
    params = {"means": torch.zeros(3, 3), "scales": torch.log(torch.tensor([[0.1, 0.1, 0.01]])).expand(3, 3),
              "quats": torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(3, 1).requires_grad_(True)}
    res = torch.zeros(3, 3, requires_grad=True)
    params[NORMAL_RESIDUAL] = res
    cam = torch.tensor([0.0, 0.0, 5.0])
    torch.testing.assert_close(gaussian_normals(params, cam), torch.tensor([[0.0, 0.0, 1.0]]).expand(3, 3))
    with torch.no_grad():
        res.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, -0.5, 0.0], [0.0, 0.0, -3.0]]))
    n = gaussian_normals(params, cam)
    # normalize(axis + residual), then turned to face the camera
    want = torch.tensor([[1.0, 0.0, 1.0], [0.0, -0.5, 1.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(n, F.normalize(want, dim=-1))
    (n * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert float(res.grad.abs().sum()) > 0
    assert params["quats"].grad is None  # the axis is not differentiated through


def test_depth_normal_of_a_tilted_plane():
    viewmat, K = _cam()
    H = W = 32
    # plane z_cam = 3 + 0.5 x_cam: depth along each pixel ray solves z = 3 + 0.5 z x_n
    xs = (torch.arange(W) + 0.5 - K[0, 2]) / K[0, 0]
    depth = (3.0 / (1.0 - 0.5 * xs))[None, :, None].expand(H, W, 1)
    n = depth_to_normal(depth, K, viewmat)[1:-1, 1:-1]
    expect = torch.nn.functional.normalize(torch.tensor([0.5, 0.0, -1.0]), dim=0)  # faces the camera
    assert torch.allclose(n, expect.expand_as(n), atol=1e-4)


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_radiance_blend_matches_radiance_renderer(backend):
    p = _flat_patch()
    viewmat, K = _cam()
    ref = render_view(p, viewmat, K, 32, 32, 0, torch.ones(3), backend)
    out = render_prd(p, EnvironmentLight(8), viewmat, K, 32, 32, 0, torch.ones(3), blend="radiance", backend=backend)
    assert torch.allclose(out.final, ref.rgb, atol=2e-5)
    # the rendered normal of a flat patch facing the camera is the patch's normal
    inside = out.alpha[..., 0] > 0.9
    assert inside.sum() > 50
    nrm = torch.nn.functional.normalize(out.gbuffer.normal[inside], dim=-1)
    assert (nrm[:, 2] < -0.999).all()


def test_progress_blends_pbr_and_radiance():
    p = _flat_patch()
    viewmat, K = _cam()
    light = EnvironmentLight(8, 0.8)
    kw = dict(backend="torch")
    pbr = render_prd(p, light, viewmat, K, 32, 32, 0, None, blend="pbr", **kw)
    rad = render_prd(p, light, viewmat, K, 32, 32, 0, None, blend="radiance", **kw)
    half = render_prd(p, light, viewmat, K, 32, 32, 0, None, blend="prd", material_override={"progress": 0.5}, **kw)
    assert torch.allclose(half.final, 0.5 * pbr.final + 0.5 * rad.final, atol=1e-5)
    assert not torch.allclose(pbr.final, rad.final, atol=1e-2)
    # stage-2 blend: metallic is held at 1 and only the specular term counts
    spec = render_prd(p, light, viewmat, K, 32, 32, 0, None, blend="specular", material_override={"progress": 1.0}, **kw)
    assert torch.all(spec.gbuffer.metallic == 1.0)
    p2 = dict(p, metallic=torch.full_like(p["metallic"], 10.0))
    metal = render_prd(p2, light, viewmat, K, 32, 32, 0, None, blend="pbr", **kw)
    assert torch.allclose(spec.final, metal.final, atol=1e-3)  # metallic ~1: no diffuse term either way


def test_edge_aware_smoothness_follows_the_photo():
    H, W = 8, 10
    step = torch.zeros(H, W, 1)
    step[:, 5:] = 1.0  # a map with a vertical edge
    flat_photo = torch.full((H, W, 3), 0.5)
    edged_photo = flat_photo.clone()
    edged_photo[:, 5:] = 0.9  # the photo changes where the map does
    mask = torch.ones(H, W, dtype=torch.bool)
    assert float(edge_aware_smoothness(torch.full((H, W, 2), 0.3), edged_photo, mask)) == 0.0
    plain = float(edge_aware_smoothness(step, flat_photo, mask))
    n_pairs = H * (W - 1) + (H - 1) * W
    assert plain == pytest.approx(H / n_pairs)  # one unit jump per row, unweighted
    assert float(edge_aware_smoothness(step, edged_photo, mask, edge_scale=10.0)) == pytest.approx(
        plain * math.exp(-4.0), rel=1e-5)
    # pairs with a pixel outside the mask do not count
    mask[:, 5:] = False
    assert float(edge_aware_smoothness(step, flat_photo, mask)) == 0.0
    x = torch.rand(H, W, 3, requires_grad=True)
    edge_aware_smoothness(x, flat_photo, torch.ones(H, W, dtype=torch.bool)).backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_metallic_commitment_pulls_mostly_metal_pixels_up_and_leaves_the_rest():
    m = torch.tensor([0.9, 0.6, 0.5, 0.3, 0.05, 0.95]).reshape(2, 3, 1).requires_grad_(True)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    loss = metallic_commitment(m, mask)
    assert float(loss.detach()) == pytest.approx((0.1 + 0.4) / 5)  # 0.9 and 0.6 count; 0.95 is not an object pixel
    loss.backward()
    g = m.grad[..., 0]
    assert torch.allclose(g, torch.tensor([[-0.2, -0.2, 0.0], [0.0, 0.0, 0.0]]))  # descent raises them, only them
    assert float(metallic_commitment(torch.ones(2, 3, 1), mask)) == 0.0  # pure metal: nothing to pull
    assert float(metallic_commitment(m.detach(), torch.zeros(2, 3, dtype=torch.bool))) == 0.0  # no object


def test_metal_albedo_smoothness_ignores_dielectrics_and_the_photo():
    H, W = 6, 8
    albedo = torch.rand(H, W, 3)
    mask = torch.ones(H, W, dtype=torch.bool)
    dielectric = torch.zeros(H, W, 1)
    assert float(metal_albedo_smoothness(albedo, dielectric, mask)) == 0.0  # any texture on a dielectric
    metal = torch.ones(H, W, 1)
    flat = torch.full((H, W, 3), 0.7)
    assert float(metal_albedo_smoothness(flat, metal, mask)) == 0.0
    # a jump of 0.3 in one channel between columns 3 and 4 of a metal: (H pairs) x 0.3 over all pairs
    step = flat.clone()
    step[:, 4:, 0] = 0.4
    pairs = H * (W - 1) + (H - 1) * W
    assert float(metal_albedo_smoothness(step, metal, mask)) == pytest.approx(H * 0.3 / pairs, rel=1e-5)
    # weighted by the smaller metallic of the two pixels; masked pairs do not count
    half = torch.full((H, W, 1), 0.5)
    assert float(metal_albedo_smoothness(step, half, mask)) == pytest.approx(0.5 * H * 0.3 / pairs, rel=1e-5)
    assert float(metal_albedo_smoothness(step, metal, mask & (torch.arange(W) != 4))) == 0.0
    # the gradient reaches the albedo, not the metallic (a metal must not turn dielectric to escape it)
    a = step.clone().requires_grad_(True)
    m = metal.clone().requires_grad_(True)
    metal_albedo_smoothness(a, m, mask).backward()
    assert float(a.grad.abs().sum()) > 0 and m.grad is None


# ---------------------------------------------------------------- trainer


def _cfg(data, out, **kw):
    strategy = DensifyStrategy(refine_start_iter=3, refine_stop_iter=8, refine_every=4, reset_every=100)
    distill = DistillConfig(specular_steps=4, diffuse_steps=4, joint_steps=4, light_resolution=16, mesh_normal_resolution=24,
                            ao=AOConfig(grid_resolution=16, num_directions=4))
    kw.setdefault("steps", 10)
    return TrainConfig(
        data=data, out=out, init_num_points=1500, downscale=4, strategy=strategy, distill=distill,
        checkpoint_every=5, sh_degree_interval=5, progress=False, eval_at_end=False, **kw,
    )


def test_ambient_visibility_when_the_shadowing_transfer_is_off(embedded_scene, tmp_path):
    cfg = _cfg(embedded_scene, tmp_path / "r")
    cfg.distill.ao = AOConfig(grid_resolution=16, num_directions=4, shadow_sh_degree=None)
    t = PRDTrainer(cfg)
    t.train_step()
    while t.schedule.stage_at(t.step) != "diffuse":  # the visibility is baked when stage 3 starts
        t.train_step()
    n = t.params["means"].shape[0]
    assert t.visibility is not None and t.visibility.shape == (n, 1)
    assert t.shadows is None  # the sharp shadows refine a transfer record, which is off
    assert 0 <= float(t.visibility.min()) and float(t.visibility.max()) <= 1
    assert float(t.visibility.min()) >= cfg.distill.ao.indirect - 1e-6  # AO + fill (1 - AO) >= fill


def test_stage_switches_do_what_prd_says(embedded_scene, tmp_path):
    t = PRDTrainer(_cfg(embedded_scene, tmp_path / "r"))
    for _ in range(10):
        t.train_step()
    assert "albedo" not in t.params and t.light is None
    n = t.params["means"].shape[0]
    t.train_step()  # step 11: specular distillation starts
    d = t.cfg.distill
    # stage 2 has no diffuse term (metallic held at 1): nothing to shadow, nothing baked yet
    assert t.visibility is None and t.shadows is None
    assert t.optimizers["means"].param_groups[0]["lr"] < t.cfg.lr.means * t.extent * d.geometry_lr_scale * 1.0001
    albedo = torch.sigmoid(t.params["albedo"])
    assert torch.allclose(albedo, torch.full_like(albedo, 0.99), atol=0.02)  # one Adam step away from 0.99
    # the residual normal: trained from 0 at its own rate, one Adam step in
    res = t.params["normal_residual"]
    assert res.shape == (n, 3) and t.optimizers["normal_residual"].param_groups[0]["lr"] == d.lr_normal_residual
    assert 0 < float(res.detach().abs().max()) <= d.lr_normal_residual * 1.01
    quats = t.params["quats"].detach().clone()
    for _ in range(3):
        t.train_step()
    assert t.params["means"].shape[0] == n  # no densification after stage 1: visibility stays aligned
    assert not torch.equal(quats, t.params["quats"])  # the rotations still learn, from the images
    assert t.reflections is None  # stage 2 sees only the sky
    t.train_step()  # step 15: diffuse; metallic released from its stage-2 value
    from invrender.distill.model import view_dependence

    m = torch.sigmoid(t.params["metallic"].detach())[:, 0]
    v = view_dependence(t.params["sh0"].detach(), t.params["shN"].detach())
    want = d.metallic_init + (0.95 - d.metallic_init) * torch.sigmoid((v - d.metallic_vd_threshold) / d.metallic_vd_width)
    assert d.metallic_from_radiance and torch.allclose(m, want, atol=0.02)
    # the shadowing transfer record (degree 3: 16 + 16 SH coefficients and the bounce fill)
    k = (d.ao.shadow_sh_degree + 1) ** 2
    assert t.visibility is not None and t.visibility.shape == (n, 2 * k + 1)
    ao = t.visibility[:, 0] / t.visibility[:, k]
    torch.testing.assert_close(t.visibility[:, -1], d.ao.indirect * (1 - ao))  # the bounce fill is part of the bake
    under_light = light_visibility(t.visibility, t.light)
    assert under_light.shape == (n, 1)
    assert 0 <= float(under_light.detach().min()) and float(under_light.detach().max()) <= 1
    # traced reflections from stage 3 on, lit by the learned light, recorded in the run's meta
    assert t.reflections is not None and t.reflections.radiance is not None and t._reflection_inputs["step"] == 15
    # ...the sharp shadows that read the record per light (uint8 transmittance towards fixed directions)
    assert t.shadows is not None and t.shadows.transmittance.shape == (n, d.ao.shadow_directions)
    assert t.reflections.bounce is None  # the traced bounce is off by default: the record's grey fill
    assert t.meta()["reflection"] == dataclasses.asdict(d.reflection)
    for _ in range(3):
        t.train_step()
    assert t.optimizers["progress"].param_groups[0]["lr"] == d.lr_progress
    rec = t.train_step()  # step 19: joint
    assert rec["stage"] == "joint" and t.optimizers["progress"].param_groups[0]["lr"] == d.lr_progress_joint
    assert math.isfinite(rec["loss"]) and "light" in rec and "progress" in rec


def test_view_dependence_is_the_sh_beyond_dc_against_the_colour():
    from invrender.distill.model import view_dependence
    from invrender.splat.sh import C0

    sh0 = torch.tensor([[[0.5, 0.5, 0.5]], [[0.5, 0.5, 0.5]], [[-10.0, -10.0, -10.0]]]) / C0  # colours 1, 1, black
    shN = torch.zeros(3, 15, 3)
    shN[1, 0] = 0.3  # one first-degree coefficient of 0.3 in every channel
    shN[2, 4] = 0.01
    v = view_dependence(sh0, shN)
    torch.testing.assert_close(v, torch.tensor([0.0, 0.3, 0.5]))  # a black Gaussian divides by 0.02


def test_metallic_start_switch_needs_a_positive_width():
    with pytest.raises(ValueError, match="metallic-vd-width"):
        DistillConfig(metallic_vd_width=0.0)


@pytest.mark.parametrize(("name", "value"), [("mesh_normal_rebake_every", -300), ("mesh_normal_smoothing", -1)])
def test_mesh_normal_target_settings_cannot_be_negative(name, value):
    with pytest.raises(ValueError, match=name.replace("_", "-")):
        DistillConfig(**{name: value})


@pytest.mark.parametrize("name", ["lambda_light_smooth", "lambda_progress", "lambda_mesh_normal"])
def test_loss_weights_cannot_be_negative(name):
    with pytest.raises(ValueError, match=name.replace("_", "-")):
        DistillConfig(**{name: -0.1})
    assert getattr(DistillConfig(**{name: 0.0}), name) == 0.0  # 0 turns a term off


def _through_the_stage3_switch(data, out, edit, **distill):
    """A trainer one step into stage 3 (step 15), ``edit(trainer)`` applied just before the switch."""
    cfg = _cfg(data, out)
    for k, v in distill.items():
        setattr(cfg.distill, k, v)
    t = PRDTrainer(cfg)
    for _ in range(14):
        t.train_step()
    with torch.no_grad():
        edit(t)
    t.train_step()  # step 15: diffuse
    return t


def _half_view_dependent(t, roughness=None):
    """The first half of the Gaussians strongly view-dependent, the others not at all; with
    ``roughness``, every one left that rough by stage 2."""
    n = t.params["means"].shape[0]
    t.params["shN"].zero_()
    t.params["shN"][: n // 2, 0] = 1.0
    if roughness is not None:
        t.params["roughness"].fill_(math.log(roughness / (1 - roughness)))


def test_no_residual_normal_when_its_rate_is_zero(embedded_scene, tmp_path):
    cfg = _cfg(embedded_scene, tmp_path / "r")
    cfg.distill.lr_normal_residual = 0.0
    t = PRDTrainer(cfg)
    for _ in range(11):
        t.train_step()
    assert "albedo" in t.params and "normal_residual" not in t.params and "normal_residual" not in t.optimizers
    with pytest.raises(ValueError, match="lr-normal-residual"):
        DistillConfig(lr_normal_residual=-1e-3)


def test_metallic_can_start_from_the_radiance_view_dependence(embedded_scene, tmp_path):
    t = _through_the_stage3_switch(embedded_scene, tmp_path / "r", _half_view_dependent, metallic_from_radiance=True)
    n = t.params["means"].shape[0]
    m = torch.sigmoid(t.params["metallic"].detach())[:, 0]
    assert float(m[: n // 2].min()) > 0.9  # one Adam step away from 0.95
    assert float(m[n // 2:].max()) < 0.05  # one Adam step away from metallic_init


def test_roughness_reset_gives_dielectrics_the_initial_roughness_back(embedded_scene, tmp_path):
    # half metal-like (view-dependent), half not; stage 2 left both rough
    t = _through_the_stage3_switch(embedded_scene, tmp_path / "r", lambda t: _half_view_dependent(t, 0.9),
                                   metallic_from_radiance=True, roughness_reset=True)
    n = t.params["means"].shape[0]
    r = torch.sigmoid(t.params["roughness"].detach())[:, 0]
    assert float((r[: n // 2] - 0.9).abs().max()) < 0.02  # metals keep what stage 2 learned
    assert float((r[n // 2:] - t.cfg.distill.roughness_init).abs().max()) < 0.02  # dielectrics start over
    # off: stage 2's roughness is kept everywhere
    rough = lambda t: t.params["roughness"].fill_(math.log(0.9 / 0.1))  # noqa: E731
    t2 = _through_the_stage3_switch(embedded_scene, tmp_path / "r2", rough, metallic_from_radiance=True,
                                    roughness_reset=False)
    assert float((torch.sigmoid(t2.params["roughness"].detach()) - 0.9).abs().max()) < 0.02


def test_smoothness_terms_are_trained_when_weighted(embedded_scene, tmp_path):
    cfg = _cfg(embedded_scene, tmp_path / "r")
    cfg.distill.lambda_smooth_normal = 0.1
    cfg.distill.lambda_smooth_material = 0.1
    cfg.distill.lambda_smooth_albedo = 0.1
    t = PRDTrainer(cfg)
    for _ in range(10):
        t.train_step()
    rec = t.train_step()  # specular: normals only
    assert "smooth_normal" in rec and "smooth_material" not in rec and "smooth_albedo" not in rec
    for _ in range(4):
        rec = t.train_step()  # diffuse
    assert rec["smooth_material"] >= 0.0 and rec["smooth_albedo"] > 0.0 and math.isfinite(rec["loss"])


def test_pbr_preset_holds_progress_at_one(embedded_scene, tmp_path):
    t = PRDTrainer(_cfg(embedded_scene, tmp_path / "r", preset="pbr"))
    for _ in range(16):
        rec = t.train_step()
    assert rec["stage"] == "diffuse" and "progress" not in rec and t.blend() == "pbr"


def test_resume_across_stages_is_bit_for_bit(embedded_scene, tmp_path):
    def cfg(out, **kw):
        c = _cfg(embedded_scene, out, background="random", **kw)
        # reflections rebuilt at steps 15, 17, 19, 21; the bounce gathered at 15 and 21 only, so the
        # checkpoint of step 17 holds a grid whose bounce is older than it
        c.distill.reflection = ReflectionConfig(refresh_every=2, bounce_directions=4, bounce_refresh_every=5)
        return c

    straight = PRDTrainer(cfg(tmp_path / "a"))
    straight.train()
    assert straight.step == 22 and straight._reflection_inputs["bounce_step"] == 21
    assert straight.reflections.bounce.shape == (straight.params["means"].shape[0], 3)
    assert bool(torch.isfinite(straight.reflections.bounce).all())

    half = PRDTrainer(cfg(tmp_path / "b"))
    for _ in range(17):  # into the diffuse stage
        half.train_step()
    assert half._reflection_inputs["step"] == 17 and half._reflection_inputs["bounce_step"] == 15
    half.save_checkpoint()
    del half
    torch.manual_seed(4321)
    resumed = PRDTrainer(cfg(tmp_path / "b", resume=True))
    resumed.train()
    assert resumed.step == 22
    for k in straight.params:
        assert torch.equal(straight.params[k], resumed.params[k]), k
    assert torch.equal(straight.light.log_radiance, resumed.light.log_radiance)
    assert torch.equal(straight.visibility, resumed.visibility)
    assert torch.equal(straight.reflections.bounce, resumed.reflections.bounce)
    assert torch.equal(straight.shadows.transmittance, resumed.shadows.transmittance)
    sa = straight.optimizers["progress"].state[straight.params["progress"]]["exp_avg"]
    sb = resumed.optimizers["progress"].state[resumed.params["progress"]]["exp_avg"]
    assert torch.equal(sa, sb)


def test_non_finite_light_is_reported_with_step(embedded_scene, tmp_path):
    t = PRDTrainer(_cfg(embedded_scene, tmp_path / "r", steps=2))
    for _ in range(3):
        t.train_step()
    with torch.no_grad():
        t.light.log_radiance[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"step 4"):
        t.train_step()


def test_relighting_with_the_learned_light_reproduces_the_render():
    # the radiance part is carried as its ratio to the PBR colour under the learned light, so a
    # copy of that light gives back the PRD render, and a brighter light brightens both parts
    p = _flat_patch()
    viewmat, K = _cam()
    light = EnvironmentLight(8, 0.8)
    copy = EnvironmentLight(8, 0.8)
    kw = dict(backend="torch", material_override={"progress": 0.5})
    ref = render_prd(p, light, viewmat, K, 32, 32, 0, None, blend="prd", **kw)
    same = render_prd(p, light, viewmat, K, 32, 32, 0, None, blend="prd", target_light=copy, **kw)
    inside = ref.alpha[..., 0] > 0.5
    assert torch.allclose(same.final[inside], ref.final[inside], atol=2e-3)
    brighter = EnvironmentLight(8, 1.6)
    lit = render_prd(p, light, viewmat, K, 32, 32, 0, None, blend="prd", target_light=brighter, **kw)
    radiance_only = render_prd(p, light, viewmat, K, 32, 32, 0, None, blend="radiance", **kw)
    assert (lit.final[inside].mean() > ref.final[inside].mean() + 0.05)
    # ... whereas the radiance blend cannot be relit
    assert torch.equal(
        render_prd(p, light, viewmat, K, 32, 32, 0, None, blend="radiance", target_light=brighter, **kw).final,
        radiance_only.final,
    )


def test_mesh_normal_target_is_baked_at_stage_two_and_survives_resume(embedded_scene, tmp_path):
    def cfg(out, **kw):
        c = _cfg(embedded_scene, out, **kw)
        c.distill.lambda_mesh_normal = 0.1
        c.distill.mesh_normal_resolution = 32
        c.distill.mesh_normal_rebake = False
        return c

    t = PRDTrainer(cfg(tmp_path / "r"))
    for _ in range(10):
        t.train_step()
    assert t.mesh_normals is None
    rec = t.train_step()  # stage 2 starts: the mesh is extracted and its normals rasterized
    nm = t.mesh_normals
    assert nm.shape == (t.viewmats.shape[0], t.height, t.width, 3)
    length = nm.norm(dim=-1)
    covered = length > 0.5
    assert float(covered.float().mean()) > 0.05  # (10 steps from random points: a blob, maybe the frame)
    assert torch.allclose(length[covered], torch.ones_like(length[covered]), atol=1e-4)
    assert "mesh_normal" in rec and math.isfinite(rec["mesh_normal"])
    t.save_checkpoint()
    back = PRDTrainer(cfg(tmp_path / "r", resume=True))
    assert back.resume() and torch.equal(back.mesh_normals, nm)
    while t.schedule.stage_at(t.step + 1) == "specular":
        t.train_step()
    t.train_step()  # stage 3 starts: without the rebake the target stays
    assert t.schedule.stage_at(t.step) == "diffuse" and t.mesh_normals is nm


def test_mesh_normal_target_follows_the_normals_through_stages_three_and_four(embedded_scene, tmp_path, monkeypatch):
    c = _cfg(embedded_scene, tmp_path / "r")
    c.distill.lambda_mesh_normal = 0.1
    c.distill.mesh_normal_resolution = 32
    c.distill.mesh_normal_rebake_every = 2
    t = PRDTrainer(c)
    baked = []
    real = t.bake_mesh_normals
    monkeypatch.setattr(t, "bake_mesh_normals", lambda: (baked.append(t.step), real())[1])
    while t.step < t.schedule.total:
        t.train_step()
    r, s = t.schedule.radiance_steps, t.schedule.specular_steps
    # stage 2's start, stage 3's, then every second step through stage 4 (whose start is one of them)
    assert baked == [r, r + s, r + s + 2, r + s + 4, r + s + 6]
    assert t.schedule.stage_at(r + s + 5) == "joint"
    c.distill.mesh_normal_rebake_every = 0  # only at the stage-3 switch
    assert [k for k in range(1, t.schedule.total + 1) if t.rebakes_mesh_normals_at(k)] == [r + s + 1]
    c.distill.mesh_normal_rebake_every, c.distill.mesh_normal_rebake = 2, False  # no rebake at all
    assert not any(t.rebakes_mesh_normals_at(k) for k in range(1, t.schedule.total + 1))


def test_mesh_normal_target_is_extracted_again_when_stage_three_starts(embedded_scene, tmp_path, monkeypatch):
    c = _cfg(embedded_scene, tmp_path / "r")
    c.distill.lambda_mesh_normal = 0.1
    c.distill.mesh_normal_resolution = 32
    assert c.distill.mesh_normal_rebake  # the default
    t = PRDTrainer(c)
    baked = []
    real = t.bake_mesh_normals
    monkeypatch.setattr(t, "bake_mesh_normals", lambda: (baked.append(t.step), real())[1])
    while t.schedule.stage_at(t.step + 1) != "joint":
        t.train_step()
    first_diffuse = t.schedule.radiance_steps + t.schedule.specular_steps
    # once as stage 2 starts, once as stage 3 does (from the Gaussians stage 2 has trained)
    assert baked == [t.schedule.radiance_steps, first_diffuse]
    assert t.mesh_normals.shape == (t.viewmats.shape[0], t.height, t.width, 3)
