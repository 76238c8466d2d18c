"""The viewer's rendering, without a browser: every buffer and control of
:mod:`invrender.viewer.render` on a tiny run, parity with ``render_prd``, the caches, uploads,
PNG saving and the CLI entry. (The browser end of it: tests/test_viewer_browser.py.)"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from invrender.eval import render_run_view
from invrender.image_io import read_image
from invrender.relight import load_envmap_light
from invrender.shading.envmap import write_hdr
from invrender.viewer.render import (
    BUFFERS,
    LEARNED,
    UploadError,
    ViewerCamera,
    ViewerContext,
    ViewerError,
    ViewerState,
    camera_from_viser,
    read_envmap_upload,
    render_buffer,
    render_frame,
    save_png,
    viser_pose,
)

RES = 64  # frames are 64 px a side: every test is about controls, not image quality


@pytest.fixture(scope="module")
def ctx(tiny_prd_run):
    return ViewerContext.from_run_dir(tiny_prd_run)


@pytest.fixture()
def cam(ctx):
    return ctx.training_camera(5)


def _state(**kw) -> ViewerState:
    return ViewerState(**{"resolution": RES, **kw})


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def test_context_lists_maps_cameras_and_backends(ctx):
    assert ctx.run.blend == "prd"
    assert ctx.envmap_names() == [LEARNED, "courtyard", "night", "overcast", "studio", "sunset"]
    assert len(ctx.views) == 72 and ctx.views.width == 64  # every training view, at the run's downscale
    assert ctx.backend_options() == [("Gaussian", True, "")]  # no trained mesh: Gaussian only


@pytest.mark.parametrize("buffer", BUFFERS)
def test_every_buffer_renders(ctx, cam, buffer):
    img = render_frame(ctx, _state(buffer=buffer, envmap="sunset"), cam)
    assert img.dtype == np.uint8 and img.shape == (RES, RES, 3)
    if buffer != "albedo":  # 20 steps leave the albedo at its uniform start
        assert img.reshape(-1, 3).std(0).max() > 2, "the scene shows"
    if buffer != "final":
        assert _diff(img, render_frame(ctx, _state(envmap="sunset"), cam)) > 0.5, "another picture than final"


def test_learned_and_relit_frames_equal_render_prd(ctx):
    """At a training camera's own size, the viewer's cached / masked pipeline gives render_prd's image."""
    views, i = ctx.views, 3
    cam = ctx.training_camera(i)
    res = views.width
    ref = render_run_view(ctx.run, views, i, mips=ctx.mips)
    # render_prd leaves the blend unclipped; the viewer clips to display range before compositing
    a = ref.alpha
    expect = (ref.final / a.clamp(min=1e-4)).clamp(0, 1) * a + (1 - a)
    got = render_buffer(ctx, ViewerState(resolution=res), cam)
    torch.testing.assert_close(got, expect, atol=2e-3, rtol=0)  # alpha < 1e-4 pixels are left unshaded

    light = load_envmap_light(ctx._envmap_paths["sunset"], ctx.run.light_resolution, 30.0, 1.5)
    ref = render_run_view(ctx.run, views, i, light, mips=ctx.mips)
    a = ref.alpha
    expect = (ref.final / a.clamp(min=1e-4)).clamp(0, 1) * a + (1 - a)
    got = render_buffer(ctx, ViewerState(resolution=res, envmap="sunset", rotation_deg=30.0, intensity=1.5), cam)
    # the intensity is applied after shading (linear), the light's log floor of 1e-6 before: same to 1e-4.
    # The shadows differ a little: the viewer rasterizes the shadowing transfer records once and reads
    # them per pixel for any light (ratio of blends), render_prd reads them per Gaussian for the
    # light it shades with (blend of ratios); they part only where Gaussians of different
    # visibility mix in one pixel
    torch.testing.assert_close(got, expect, atol=1e-2, rtol=0)
    assert float((got - expect).abs().mean()) < 1e-3


def test_light_controls_change_the_image_and_reuse_the_caches(ctx, cam):
    learned = render_frame(ctx, _state(), cam)
    sunset = render_frame(ctx, _state(envmap="sunset"), cam)
    assert _diff(learned, sunset) > 1.0, "env map swap"
    night = render_frame(ctx, _state(envmap="night"), cam)
    assert _diff(sunset, night) > 1.0

    rotated = render_frame(ctx, _state(envmap="sunset", rotation_deg=90.0), cam)
    assert ctx.stats["shaded"] and not ctx.stats["rasterized"], "a light change reshades the cached G-buffer"
    assert _diff(sunset, rotated) > 0.5, "rotation"
    assert _diff(render_frame(ctx, _state(envmap="sunset", rotation_deg=450.0), cam), rotated) == 0.0  # 450° = 90°
    learned_rot = render_frame(ctx, _state(rotation_deg=120.0), cam)
    assert _diff(learned, learned_rot) > 0.1, "the learned light rotates too"

    brighter = render_frame(ctx, _state(envmap="sunset", intensity=2.0), cam)
    assert not ctx.stats["shaded"] and not ctx.stats["rasterized"], "intensity only rescales the linear colour"
    assert brighter.astype(float).mean() > sunset.astype(float).mean() + 1.0 or _diff(brighter, sunset) > 1.0

    aces = render_frame(ctx, _state(envmap="sunset", tonemapping="aces"), cam)
    assert not ctx.stats["shaded"]
    assert _diff(aces, sunset) > 0.5, "tone mapping"
    # the intensity 1, unrotated learned light is the trained appearance; anything else relights
    assert not _state().relit and _state(intensity=1.01).relit and _state(envmap="night").relit


def test_camera_move_rasterizes_and_coarse_frames_are_smaller(ctx, cam):
    render_frame(ctx, _state(), cam)
    moved = ViewerCamera(cam.viewmat @ _rot_z(10.0), cam.fov_y, cam.aspect)
    render_frame(ctx, _state(), moved)
    assert ctx.stats["rasterized"]
    coarse = render_frame(ctx, _state(resolution=128), moved, coarse=True)
    assert coarse.shape == (64, 64, 3) and ctx.stats["coarse"]
    wide = ViewerCamera(cam.viewmat, cam.fov_y, aspect=1.5)
    assert render_frame(ctx, _state(resolution=96), wide).shape == (64, 96, 3)
    tall = ViewerCamera(cam.viewmat, cam.fov_y, aspect=0.5)
    assert render_frame(ctx, _state(resolution=96), tall).shape == (96, 48, 3)
    assert render_frame(ctx, _state(resolution=96, coarse_scale=0.25), tall, coarse=True).shape == (24, 12, 3)


def test_a_camera_that_sees_nothing_gives_the_background(ctx, cam):
    c2w = np.linalg.inv(cam.viewmat)
    c2w[:3, :3] = c2w[:3, :3] @ np.diag([-1.0, 1.0, -1.0])  # turn around: look away from the object
    away = ViewerCamera(np.linalg.inv(c2w), cam.fov_y, cam.aspect)
    for buffer in ("final", "depth", "normal"):
        assert (render_frame(ctx, _state(buffer=buffer, envmap="sunset"), away) == 255).all()


def test_scalar_buffers_use_the_colormap(ctx, cam):
    turbo = render_frame(ctx, _state(buffer="roughness"), cam)
    gray = render_frame(ctx, _state(buffer="roughness", colormap="gray"), cam)
    assert _diff(turbo, gray) > 1.0
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    depth = render_frame(ctx, _state(buffer="depth", colormap="viridis"), cam)
    assert depth.reshape(-1, 3).std(0).max() > 5


def test_split_view_shows_two_buffers_side_by_side(ctx, cam):
    left = render_frame(ctx, _state(buffer="final"), cam)
    right = render_frame(ctx, _state(buffer="normal"), cam)
    split = render_frame(ctx, _state(buffer="final", split=True, split_buffer="normal"), cam)
    h = RES // 2
    assert (split[:, : h - 1] == left[:, : h - 1]).all()
    assert (split[:, h + 1:] == right[:, h + 1:]).all()
    assert (split[:, h - 1: h + 1] == 128).all(), "a divider between the halves"


def test_snap_to_training_camera_is_the_training_pose(ctx):
    i = 7
    cam = ctx.training_camera(i)
    np.testing.assert_allclose(cam.viewmat, ctx.views.viewmats[i].double().numpy(), atol=1e-6)
    K = cam.K(ctx.views.width, ctx.views.height)
    torch.testing.assert_close(K, ctx.views.Ks[i], atol=1e-4, rtol=0)
    # what the app sends to the browser comes back as the same camera
    pose = viser_pose(cam)
    back = camera_from_viser(pose["wxyz"], pose["position"], pose["fov"], cam.aspect)
    np.testing.assert_allclose(back.viewmat, cam.viewmat, atol=1e-6)
    fwd = (pose["look_at"] - pose["position"]) / np.linalg.norm(pose["look_at"] - pose["position"])
    np.testing.assert_allclose(fwd, np.linalg.inv(cam.viewmat)[:3, 2], atol=1e-9)
    assert np.linalg.norm(pose["look_at"]) < 0.5, "orbit about the object, which the cameras look at"
    with pytest.raises(ViewerError, match="training camera 999"):
        ctx.training_camera(999)


def test_save_png_writes_a_valid_png_atomically(ctx, cam, tmp_path, monkeypatch):
    img = render_frame(ctx, _state(), cam)
    renames = []
    real_replace = os.replace

    def spy(src, dst):
        renames.append((str(src), str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    path = save_png(img, tmp_path / "shots", stem="final")
    assert path.parent == tmp_path / "shots" and path.suffix == ".png" and path.name.startswith("final_")
    assert renames == [(renames[0][0], str(path))] and renames[0][0] != str(path)
    assert os.path.dirname(renames[0][0]) == str(path.parent), "temp file beside the target: rename is atomic"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal((read_image(path) * 255).round().astype(np.uint8), img)
    again = save_png(img, tmp_path / "shots", stem="final")
    assert again != path, "never overwrites an earlier save"
    assert sorted(p.name for p in (tmp_path / "shots").iterdir()) == sorted([path.name, again.name]), "no temp left"


def _hdr_bytes(tmp_path, img) -> bytes:
    return write_hdr(tmp_path / "up.hdr", img).read_bytes()


def test_uploads_are_validated_and_rejections_are_messages(ctx, cam, tmp_path, monkeypatch):
    with pytest.raises(UploadError, match="expected a .hdr or .exr"):
        read_envmap_upload("notes.txt", b"hello")
    with pytest.raises(UploadError, match="not a .hdr image"):
        read_envmap_upload("fake.hdr", b"this is plain text, not an image" * 10)
    with pytest.raises(UploadError, match="not a .exr image"):
        read_envmap_upload("fake.exr", b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(UploadError, match="over the upload limit of 1 MB"):
        read_envmap_upload("huge.hdr", b"#?RADIANCE\n" + bytes(2**20), max_bytes=2**20)
    with pytest.raises(UploadError, match="empty"):
        read_envmap_upload("empty.hdr", b"")
    with pytest.raises(UploadError, match="pixels is over the limit"):
        read_envmap_upload("bomb.hdr", b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 100000 +X 200000\n" + bytes(64))
    with pytest.raises(UploadError, match="could not decode|shape"):
        read_envmap_upload("cut.hdr", b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 64 +X 128\n" + bytes(7))

    # a real map goes in the list and lights the object; a rejected one leaves the context working
    d = np.zeros((16, 32, 3), np.float32)
    d[:8] = [4.0, 1.0, 0.2]  # a warm sky over a dark ground
    key = ctx.add_upload("my sky.hdr", _hdr_bytes(tmp_path, d))
    assert key == "upload: my sky" and key in ctx.envmap_names()
    lit = render_frame(ctx, _state(envmap=key), cam)
    assert _diff(lit, render_frame(ctx, _state(envmap="night"), cam)) > 1.0
    # kept maps are bounded: wide ones are downsampled, and only the newest few are kept
    import invrender.viewer.render as vr

    monkeypatch.setattr(vr, "STORED_UPLOAD_WIDTH", 16)
    monkeypatch.setattr(vr, "MAX_UPLOADS", 2)
    keys = [ctx.add_upload(f"sky{k}.hdr", _hdr_bytes(tmp_path, d * (k + 1))) for k in range(3)]
    assert ctx._envmap_images[keys[-1]].shape == (8, 16, 3)
    assert [n for n in ctx.envmap_names() if n.startswith("upload: ")] == keys[1:]
    with pytest.raises(ViewerError, match="unknown environment map"):
        render_frame(ctx, _state(envmap=keys[0]), cam)
    small = ViewerContext(ctx.run, views=ctx.views, envmaps={}, mips=ctx.mips, max_upload_bytes=1000)
    with pytest.raises(UploadError, match="over the upload limit"):
        small.add_upload("big.hdr", _hdr_bytes(tmp_path, np.ones((64, 128, 3), np.float32) * 0.7))
    assert render_frame(small, _state(), cam).shape == (RES, RES, 3)


def test_bad_requests_are_viewer_errors(ctx, cam, tmp_path, monkeypatch):
    with pytest.raises(ViewerError, match="unknown environment map 'nope'"):
        render_frame(ctx, _state(envmap="nope"), cam)
    with pytest.raises(ViewerError, match="no trained mesh"):
        render_frame(ctx, _state(backend="mesh"), cam)
    for bad in (dict(resolution=8), dict(buffer="shiny"), dict(intensity=-1.0), dict(rotation_deg=math.inf)):
        with pytest.raises(ViewerError):
            render_frame(ctx, _state(**bad), cam)
    # a run with a mesh lists the mesh backend; when its renderer cannot be imported it is shown off, with why
    mesh_ctx = ViewerContext(ctx.run, views=ctx.views, envmaps={}, mips=ctx.mips, mesh_file=tmp_path / "m.pt")
    (tmp_path / "m.pt").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "invrender.mesh.render", None)
    (name, ok, msg), = mesh_ctx.backend_options()[1:]
    assert name == "mesh" and not ok and "invrender.mesh.render" in msg
    with pytest.raises(ViewerError, match="mesh renderer unavailable"):
        render_frame(mesh_ctx, _state(backend="mesh"), cam)
    assert render_frame(mesh_ctx, _state(), cam).shape == (RES, RES, 3), "Gaussian still works"


def test_mesh_backend_goes_through_render_mesh_view(ctx, cam, tmp_path, monkeypatch):
    """The mesh case calls invrender.mesh.render.render_mesh_view (its signature: mesh, light, viewmat, K,
    width, height, ..., blend) for the G-buffer and shades it like the Gaussians'."""
    import types

    calls = []

    def fake_render_mesh_view(mesh, light, viewmat, K, width, height, background=None, *, visibility=None, **kw):
        calls.append((mesh, light is ctx.run.light, tuple(viewmat.shape), tuple(K.shape), width, height, kw))
        # stands in for the mesh renderer: the Gaussians' own G-buffer
        from invrender.distill.model import render_prd
        from invrender.eval import prd_params

        return render_prd(prd_params(ctx.run), ctx.run.light, viewmat, K, width, height, ctx.run.meta["sh_degree"],
                          None, blend="radiance", visibility=ctx.run.visibility, visibility_per_pixel=True)

    fake_module = types.SimpleNamespace(render_mesh_view=fake_render_mesh_view)
    monkeypatch.setitem(sys.modules, "invrender.mesh.render", fake_module)
    (tmp_path / "m.pt").write_bytes(b"")
    mesh_ctx = ViewerContext(ctx.run, views=ctx.views, envmaps=dict(ctx._envmap_paths), mips=ctx.mips,
                             mesh_file=tmp_path / "m.pt")
    mesh_ctx._mesh = "a mesh"  # skip loading: the fake renderer does not need one
    assert mesh_ctx.backend_options() == [("Gaussian", True, ""), ("mesh", True, "")]
    st = _state(envmap="sunset")
    got = render_frame(mesh_ctx, dataclasses.replace(st, backend="mesh"), cam)
    assert calls == [("a mesh", True, (4, 4), (3, 3), RES, RES, {"blend": "radiance"})]
    # the mesh is not trained with traced reflections: the same as the Gaussians shaded without them
    assert ctx.run.meta.get("reflection")  # (the Gaussians of this run do trace them)
    flat = dataclasses.replace(ctx.run, meta={**ctx.run.meta, "reflection": None})
    plain = ViewerContext(flat, views=ctx.views, envmaps=dict(ctx._envmap_paths), mips=ctx.mips)
    np.testing.assert_array_equal(got, render_frame(plain, st, cam))
    assert np.abs(got.astype(float) - render_frame(ctx, st, cam).astype(float)).max() > 0


def test_a_run_without_light_shows_its_radiance(ctx, cam):
    """Stage-1 runs (blend radiance, no learned light): final is the radiance, nothing to relight."""
    run = dataclasses.replace(ctx.run, light=None, blend="radiance")
    plain = ViewerContext(run, views=ctx.views, envmaps=dict(ctx._envmap_paths), mips=ctx.mips)
    assert not plain.has_light and LEARNED not in plain.envmap_names()
    final = render_frame(plain, _state(envmap="sunset"), cam)
    np.testing.assert_array_equal(final, render_frame(ctx, _state(buffer="radiance"), cam))
    assert (render_frame(plain, _state(envmap="sunset", buffer="pbr"), cam) != 255).any()


def test_cli_view_help_and_bad_run(tmp_path):
    r = subprocess.run([sys.executable, "-m", "invrender.cli", "view", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "--port" in r.stdout and "127.0.0.1" in r.stdout
    missing = tmp_path / "nope"
    r = subprocess.run([sys.executable, "-m", "invrender.cli", "view", "--run", str(missing)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and str(missing) in r.stderr


def _rot_z(deg: float) -> np.ndarray:
    a = math.radians(deg)
    R = np.eye(4)
    R[:2, :2] = [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]
    return R
