"""Relighting and the full evaluation: metrics on a tiny trained run, the albedo alignment, the
relight CLI, and the direction in which a rotated environment moves a highlight."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from invrender.distill.model import material_params, render_prd
from invrender.eval import albedo_alignment_scale, albedo_psnr, align_albedo, evaluate_run, load_run
from invrender.relight import load_envmap_light
from invrender.shading.envmap import direction_grid, write_hdr
from invrender.shading.prefilter import SpecularMips

ENVS = ("night", "overcast", "studio", "sunset")


@pytest.fixture(scope="module")
def tiny_metrics(tiny_prd_run):
    return evaluate_run(tiny_prd_run, tiny_prd_run / "metrics.json")


def _finite(x) -> bool:
    return isinstance(x, float) and math.isfinite(x)


def test_eval_writes_every_metric_as_finite_numbers(tiny_prd_run, tiny_metrics):
    m = json.loads((tiny_prd_run / "metrics.json").read_text())
    assert m == json.loads(json.dumps(tiny_metrics))
    assert m["blend"] == "prd" and m["n_views"] == 24
    for k in ("nvs_psnr", "nvs_psnr_obj", "nvs_ssim", "albedo_psnr", "albedo_psnr_obj", "normal_mae_deg",
              "roughness_mae", "metallic_mae", "progress_mean"):
        assert _finite(m[k]), (k, m[k])
        if not k.startswith("nvs"):
            assert m[f"{k.split('_')[0]}_note"] is None, k
    assert 0 <= m["normal_mae_deg"] <= 180 and 0 <= m["progress_mean"] <= 1
    assert len(m["albedo_scale"]) == 3 and all(_finite(s) and s > 0 for s in m["albedo_scale"])
    assert sorted(m["relight_envs"]) == list(ENVS)
    for k in ("relight_psnr", "relight_psnr_obj", "relight_ssim", "grey_baseline_relight_psnr_obj"):
        assert sorted(m[k]) == sorted((*ENVS, "mean")), k
        assert all(_finite(v) for v in m[k].values()), (k, m[k])
        assert m[k]["mean"] == pytest.approx(sum(m[k][e] for e in ENVS) / len(ENVS))
    assert len(m["per_view"]) == 24 and m["per_view"][0]["view"] == "test_000"
    figs = tiny_prd_run / "eval"
    for name in ("rgb", "albedo", "roughness", "metallic", "normal", "progress", *(f"relight_{e}" for e in ENVS)):
        assert (figs / f"{name}.png").is_file(), name
    from invrender.image_io import read_image

    grid = read_image(figs / "rgb.png")
    assert grid.shape[0] == 3 * 64 + 2 * 2 and grid.shape[1] == 3 * 64 + 2 * 2  # 3 views x (GT | ours | error)
    md = (figs / "metrics.md").read_text()
    assert "| novel views" in md and "| sunset |" in md


def test_eval_without_relighting_and_for_a_run_without_materials(tiny_prd_run, tiny_metrics, tmp_path):
    m = evaluate_run(tiny_prd_run, None, relight=False, renders_dir=tmp_path / "r", figures_dir=tmp_path / "f")
    assert m["relight_psnr"] is None and m["grey_baseline_relight_psnr_obj"] is None
    assert "relight=False" in m["relight_note"]
    # the albedo no longer comes from a relit render: same numbers
    assert m["albedo_psnr"] == pytest.approx(tiny_metrics["albedo_psnr"], abs=1e-6)
    assert m["nvs_psnr"] == pytest.approx(tiny_metrics["nvs_psnr"], abs=1e-6)

    # the same run as if it had stopped after stage 1: no materials, blend radiance
    ckpt = sorted((tiny_prd_run / "checkpoints").glob("ckpt_*.pt"))[-1]
    sd = torch.load(ckpt, weights_only=False)
    for k in ("albedo", "roughness", "metallic", "progress"):
        del sd["params"][k]
    for k in ("light", "light_opt", "visibility", "shadows"):
        del sd[k]
    sd["meta"] = {k: v for k, v in sd["meta"].items() if k not in ("blend", "stage")}
    (tmp_path / "stage1" / "checkpoints").mkdir(parents=True)
    torch.save(sd, tmp_path / "stage1" / "checkpoints" / ckpt.name)
    run = load_run(tmp_path / "stage1")
    assert run.blend == "radiance" and run.light is None and not run.has_materials
    m = evaluate_run(tmp_path / "stage1", None, renders_dir=tmp_path / "r1")
    for key, note in (("albedo_psnr", "albedo"), ("albedo_psnr_obj", "albedo"), ("roughness_mae", "roughness"),
                      ("metallic_mae", "metallic"), ("progress_mean", "progress")):
        assert m[key] is None and "no materials" in m[f"{note}_note"], key
    assert _finite(m["nvs_psnr"]) and _finite(m["normal_mae_deg"])
    # no physically based part: relit = radiance (the honest answer), and the grey baseline still runs
    assert _finite(m["relight_psnr"]["mean"]) and _finite(m["grey_baseline_relight_psnr_obj"]["mean"])


def test_relit_shadows_are_the_new_lights_own(tiny_prd_run, embedded_scene):
    """A run's visibility is a shadowing transfer record: relit, the diffuse term is shadowed for
    the new light (what rendering under that light directly gives), not for the learned one."""
    from invrender.eval import _load_split, prd_params
    from invrender.shading.shadowing import is_transfer_record

    run = load_run(tiny_prd_run)
    assert run.visibility is not None and is_transfer_record(run.visibility)
    _, views = _load_split(run, "test", load_gt=False)
    sunset = load_envmap_light(embedded_scene / "envmaps" / "sunset.hdr", run.light.resolution)
    args = (prd_params(run), views.viewmats[0], views.Ks[0], views.width, views.height, run.meta["sh_degree"])
    params, rest = args[0], args[1:]
    with torch.no_grad():
        relit = render_prd(params, run.light, *rest, blend="pbr", visibility=run.visibility, target_light=sunset)
        direct = render_prd(params, sunset, *rest, blend="pbr", visibility=run.visibility)
        learned = render_prd(params, run.light, *rest, blend="pbr", visibility=run.visibility)
        # the viewer's way: the record rasterized per pixel, read by shade() for each light
        per_pixel = render_prd(params, sunset, *rest, blend="pbr", visibility=run.visibility,
                               visibility_per_pixel=True)
    torch.testing.assert_close(relit.final, direct.final, atol=1e-5, rtol=0)
    assert learned.gbuffer.visibility.shape[-1] == 1 and per_pixel.gbuffer.visibility.shape[-1] == 33
    obj = direct.alpha[..., 0] > 0.5
    assert float((direct.gbuffer.visibility - learned.gbuffer.visibility)[obj].abs().max()) > 1e-3
    # per pixel the ratio of blended records, per Gaussian the blend of ratios: close, not equal
    assert float((per_pixel.final - direct.final)[obj].abs().mean()) < 0.02
    # the sharp shadows the run was trained with: read for the new light too, and not the SH share
    assert run.shadows is not None and run.shadows.transmittance.shape[0] == run.visibility.shape[0]
    with torch.no_grad():
        relit_s = render_prd(params, run.light, *rest, blend="pbr", visibility=run.visibility, target_light=sunset,
                             shadows=run.shadows)
        direct_s = render_prd(params, sunset, *rest, blend="pbr", visibility=run.visibility, shadows=run.shadows)
    torch.testing.assert_close(relit_s.final, direct_s.final, atol=1e-5, rtol=0)
    assert float((direct_s.gbuffer.visibility - direct.gbuffer.visibility)[obj].abs().max()) > 1e-3


def test_albedo_alignment_recovers_a_per_channel_scale():
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(2, 16, 16, 3, generator=g) * 0.8 + 0.1  # [V, H, W, 3] linear
    alpha = torch.zeros(2, 16, 16, 1)
    alpha[:, 3:13, 2:14] = 1.0
    obj = alpha[..., 0] > 0.5
    pred = gt / 2
    pred[:, 0, 0] = 1.0  # background pixels must not matter
    scale = albedo_alignment_scale(pred[obj], gt[obj])
    torch.testing.assert_close(scale, torch.full((3,), 2.0), rtol=1e-5, atol=0)
    bg = torch.ones(3)
    p, po = albedo_psnr(align_albedo(pred[0], scale), gt[0], alpha[0], alpha[0], bg)
    raw, raw_obj = albedo_psnr(pred[0], gt[0], alpha[0], alpha[0], bg)
    assert p > 80 and po > 80 and raw_obj < 25

    # per channel, and robust to a minority of outliers (the median, not the mean)
    factors = torch.tensor([0.5, 2.0, 4.0])
    pred = gt * factors
    pred[0, 3:5, 2:14] = 0.0  # ~8 % of object pixels predicted black
    scale = albedo_alignment_scale(pred[obj], gt[obj])
    torch.testing.assert_close(scale, 1 / factors, rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="no object pixels"):
        albedo_alignment_scale(torch.zeros(0, 3), torch.zeros(0, 3))


def test_relight_cli_writes_one_png_per_view(tiny_prd_run, embedded_scene, tmp_path):
    from invrender.image_io import read_image

    out = tmp_path / "relit"
    cmd = [sys.executable, "-m", "invrender.cli", "relight", "--run", str(tiny_prd_run), "--out", str(out),
           "--envmap", str(embedded_scene / "envmaps" / "sunset.hdr"), "--rotation", "30", "--intensity", "2",
           "--albedo-scale", "1", "0.9", "0.8"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"test_{i:03d}.png" for i in range(24)]
    img = read_image(out / "test_000.png")
    assert img.shape == (64, 64, 4) and 0 < img[..., 3].mean() < 1


@pytest.mark.parametrize("bad", ["missing.hdr", "not_an_image.hdr", "wrong.png"])
def test_relight_cli_bad_envmap_is_one_clear_line(tiny_prd_run, tmp_path, capsys, bad):
    from invrender.cli import main

    envmap = tmp_path / bad
    if bad != "missing.hdr":
        envmap.write_bytes(b"this is not an image")
    # in-process (the subprocess path is covered above): main() turns the error into one line
    with pytest.raises(SystemExit) as e:
        main(["relight", "--run", str(tiny_prd_run), "--envmap", str(envmap), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 1
    assert str(envmap) in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["render", "relight", "eval"])
def test_device_choice_of_render_relight_eval(tiny_prd_run, embedded_scene, tmp_path, capsys, command):
    from invrender.cli import main

    args = {"render": ["--out", str(tmp_path / "o")],
            "relight": ["--out", str(tmp_path / "o"), "--envmap", str(embedded_scene / "envmaps" / "sunset.hdr")],
            "eval": ["--out", str(tmp_path / "m.json"), "--no-relight", "--figures", str(tmp_path / "f")]}[command]
    if not torch.cuda.is_available():
        # asking for CUDA where there is none: one line saying so, nothing written
        with pytest.raises(SystemExit) as e:
            main([command, "--run", str(tiny_prd_run), "--device", "cuda", *args])
        err = capsys.readouterr().err
        assert e.value.code == 1 and "--device cuda" in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "o").exists() and not (tmp_path / "m.json").exists()
    main([command, "--run", str(tiny_prd_run), "--device", "cpu", *args])
    assert (tmp_path / "o").is_dir() or (tmp_path / "m.json").is_file()


# ------------------------------------------------------------------------------------------------
# rotation: a mirror-like gold ball under a map with one bright spot


def _mirror_ball(n: int = 1500) -> dict:
    """Flat Gaussians tangent to the unit sphere (Fibonacci spiral), roughness 0.2, metallic 1."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (1 + 5**0.5) * i
    r = torch.sqrt(1 - z * z)
    normals = torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], -1).float()  # [N, 3]
    ez = torch.tensor([0.0, 0.0, 1.0]).expand(n, 3)
    quats = F.normalize(torch.cat([1 + normals[:, 2:], torch.cross(ez, normals, dim=-1)], -1), dim=-1)  # e_z -> n
    params = {
        "means": normals.clone(),
        "quats": quats,
        "scales": torch.log(torch.tensor([0.07, 0.07, 1e-3])).expand(n, 3).clone(),  # thin along the normal
        "opacities": torch.full((n,), math.log(0.99 / 0.01)),
        "sh0": torch.zeros(n, 1, 3),
        "shN": torch.zeros(n, 0, 3),
    }
    mats = material_params(n, albedo=0.99, roughness=0.2, metallic=1.0, progress=1.0)
    return {**params, **{k: v.detach() for k, v in mats.items()}}


def test_rotating_the_light_moves_the_highlight_counter_clockwise(tmp_path):
    # camera on +X looking at the ball's centre, Z up: image right = world +Y, image down = world -Z
    R = torch.tensor([[0.0, 1, 0], [0, 0, -1], [-1, 0, 0]])
    C = torch.tensor([4.0, 0, 0])
    viewmat = torch.eye(4)
    viewmat[:3, :3], viewmat[:3, 3] = R, -R @ C
    K = torch.tensor([[120.0, 0, 48], [0, 120.0, 48], [0, 0, 1]])
    params = _mirror_ball()

    # a dim map with one bright spot at azimuth 30 deg, elevation 20 deg
    h, w = 64, 128
    az0, el = math.radians(30.0), math.radians(20.0)

    def spot_dir(az):
        return np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])

    img = np.full((h, w, 3), 0.05, np.float32)
    img[direction_grid(h, w) @ spot_dir(az0) > math.cos(math.radians(6.0))] = 50.0
    write_hdr(tmp_path / "spot.hdr", img)
    # rotating counter-clockwise by +90 deg adds 90 deg of azimuth: u = 0.5 - az / 2pi drops by 1/4
    write_hdr(tmp_path / "rolled.hdr", np.roll(img, -w // 4, axis=1))
    mips = SpecularMips(64)

    def render(path, rotation):
        light = load_envmap_light(path, 64, rotation_deg=rotation)
        with torch.no_grad():
            out = render_prd(params, light, viewmat, K, 96, 96, 0, None, blend="pbr", mips=mips)
        return out.pbr_linear * (out.alpha > 0.5)  # [H, W, 3]

    def brightest(img):
        idx = int(img.mean(-1).argmax())
        return np.array([idx % 96 + 0.5, idx // 96 + 0.5])  # pixel centre (x, y)

    def mirror_point(az):
        """Pixel where a mirror ball shows a distant light along ``spot_dir(az)``: the surface point
        whose normal halves the light and camera directions (fixed-point iteration on the sphere)."""
        L = torch.tensor(spot_dir(az), dtype=torch.float32)
        n = F.normalize(L + F.normalize(C, dim=0), dim=0)
        for _ in range(20):
            n = F.normalize(L + F.normalize(C - n, dim=0), dim=0)  # the point is n itself (unit sphere)
        uvw = K @ (R @ n + viewmat[:3, 3])
        return (uvw[:2] / uvw[2]).numpy()

    still = render(tmp_path / "spot.hdr", 0.0)
    plus, minus = render(tmp_path / "spot.hdr", 90.0), render(tmp_path / "spot.hdr", -90.0)
    rolled = render(tmp_path / "rolled.hdr", 0.0)
    # --rotation +90 is the map rotated by hand, and not the map rotated the other way
    torch.testing.assert_close(plus, rolled, atol=1e-3, rtol=1e-3)
    assert (plus - minus).abs().max() > 1.0

    # the highlight sits where the reflection law puts it (a few pixels of slack: the split sum
    # looks rough lobes up off-specular, and the surfels' normals are blended)
    for rotation, img_r in ((0.0, still), (90.0, plus), (-90.0, minus)):
        expected = mirror_point(az0 + math.radians(rotation))
        assert np.abs(brightest(img_r) - expected).max() < 4.0, (rotation, brightest(img_r), expected)
    # counter-clockwise about +Z seen from +X: the spot swings towards +Y, i.e. to the image's right
    assert brightest(plus)[0] > brightest(still)[0] + 10 > brightest(minus)[0] + 20
