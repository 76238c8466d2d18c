"""Pins the environment-map convention (DESIGN.md) and Mitsuba's envmap frame to it.

Ours: world Z up, u = 0.5 - atan2(y, x) / 2pi (mod 1), v = acos(z) / pi, row 0 looks up.
Mitsuba: Y up, u = atan2(x, -z) / 2pi, v = acos(y) / pi; bridged by ``mitsuba_envmap_to_world()``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from invrender.shading.envmap import (
    dir_to_uv,
    direction_grid,
    mitsuba_envmap_to_world,
    read_hdr,
    sample_nearest,
    uv_to_dir,
    write_hdr,
)


def _random_dirs(n, seed=0):
    d = np.random.default_rng(seed).normal(size=(n, 3))
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


# ------------------------------------------------------------------------------------------
# our convention
# ------------------------------------------------------------------------------------------

def test_known_directions():
    cases = {
        (0.0, 0.0, 1.0): (None, 0.0),  # zenith: row 0, any u
        (0.0, 0.0, -1.0): (None, 1.0),
        (1.0, 0.0, 0.0): (0.5, 0.5),  # +X is the centre of the map
        (0.0, 1.0, 0.0): (0.25, 0.5),  # +Y left of centre
        (0.0, -1.0, 0.0): (0.75, 0.5),
        (-1.0, 0.0, 0.0): (0.0, 0.5),  # -X on the seam (u = 0 == 1)
    }
    for d, (u, v) in cases.items():
        uv = dir_to_uv(np.array(d))
        assert uv[1] == pytest.approx(v, abs=1e-9)
        if u is not None:
            assert min(abs(uv[0] - u), abs(abs(uv[0] - u) - 1.0)) < 1e-9, (d, uv)


def test_row0_is_up():
    g = direction_grid(16, 32)
    assert g.shape == (16, 32, 3)
    assert np.all(g[0, :, 2] > 0.98)
    assert np.all(g[-1, :, 2] < -0.98)
    assert np.allclose(uv_to_dir(np.array([0.3, 0.0])), [0, 0, 1], atol=1e-12)


def test_roundtrip_numpy_and_torch():
    d = _random_dirs(1000)
    uv = dir_to_uv(d)
    assert uv.min() >= 0.0 and uv.max() < 1.0
    assert np.allclose(uv_to_dir(uv), d, atol=1e-9)
    uv2 = np.random.default_rng(1).uniform(0.001, 0.999, size=(500, 2))
    assert np.allclose(dir_to_uv(uv_to_dir(uv2)), uv2, atol=1e-9)

    dt = torch.tensor(d * 2.5, dtype=torch.float64)  # unnormalized input is accepted
    uvt = dir_to_uv(dt)
    assert isinstance(uvt, torch.Tensor) and uvt.shape == (1000, 2)
    assert torch.allclose(uvt, torch.from_numpy(uv), atol=1e-9)
    assert torch.allclose(uv_to_dir(uvt), torch.from_numpy(d), atol=1e-9)


# ------------------------------------------------------------------------------------------
# Mitsuba's frame
# ------------------------------------------------------------------------------------------

def _mitsuba():
    mi = pytest.importorskip("mitsuba")
    mi.set_variant("scalar_rgb")
    return mi


def _env_scene(mi, img):
    return mi.load_dict({
        "type": "scene",
        "integrator": {"type": "path", "max_depth": 2},
        "env": {
            "type": "envmap",
            "bitmap": mi.Bitmap(np.ascontiguousarray(img, dtype=np.float32)),
            "to_world": mi.ScalarTransform4f(mitsuba_envmap_to_world()),
        },
    })


def test_mitsuba_to_world_is_a_rotation():
    m = np.array(mitsuba_envmap_to_world())
    assert m.shape == (4, 4)
    r = m[:3, :3]
    assert np.allclose(r @ r.T, np.eye(3)) and np.linalg.det(r) == pytest.approx(1.0)


def test_mitsuba_envmap_eval_matches_our_lookup():
    """A smooth map coding its own direction: Mitsuba's value in d must be the code of d."""
    mi = _mitsuba()
    h, w = 128, 256
    code = 0.5 + 0.5 * direction_grid(h, w)  # colour = direction, so any frame error shows
    emitter = _env_scene(mi, code).environment()
    for d in _random_dirs(64, seed=3):
        si = mi.SurfaceInteraction3f()
        si.wi = mi.Vector3f(*(-d))  # wi points away from the environment
        got = np.array(emitter.eval(si))
        want = sample_nearest(code, d)
        # bilinear (Mitsuba) vs nearest (ours): at most about one texel of gradient apart
        assert np.allclose(got, want, atol=0.02), (d, got, want)
        assert np.allclose(got, 0.5 + 0.5 * d, atol=0.02), (d, got)


def test_mitsuba_render_looks_where_we_look():
    """Render a map with coloured blobs through tiny cameras aimed along known directions."""
    mi = _mitsuba()
    h, w = 64, 128
    g = direction_grid(h, w)
    blobs = {
        (0.0, 0.0, 1.0): (1.0, 0.0, 0.0),
        (0.0, 0.0, -1.0): (0.0, 1.0, 0.0),
        (1.0, 0.0, 0.0): (0.0, 0.0, 1.0),
        (-1.0, 0.0, 0.0): (1.0, 1.0, 0.0),
        (0.0, 1.0, 0.0): (0.0, 1.0, 1.0),
        (0.0, -1.0, 0.0): (1.0, 0.0, 1.0),
        (0.6, -0.48, 0.64): (0.9, 0.5, 0.1),  # oblique: catches handedness / mirror errors
    }
    img = np.full((h, w, 3), 0.05, np.float32)
    for c, col in blobs.items():
        c = np.asarray(c) / np.linalg.norm(c)
        img[(g @ c) > math.cos(math.radians(14))] = col
    scene = _env_scene(mi, img)
    for c, col in blobs.items():
        c = np.asarray(c) / np.linalg.norm(c)
        up = [0.0, 0.0, 1.0] if abs(c[2]) < 0.9 else [1.0, 0.0, 0.0]
        sensor = mi.load_dict({
            "type": "perspective",
            "fov": 2.0,
            "to_world": mi.ScalarTransform4f().look_at(origin=[0, 0, 0], target=c.tolist(), up=up),
            "film": {"type": "hdrfilm", "width": 4, "height": 4, "rfilter": {"type": "box"}},
            "sampler": {"type": "independent", "sample_count": 1},
        })
        px = np.array(mi.render(scene, sensor=sensor, spp=1))[..., :3].reshape(-1, 3).mean(0)
        assert np.allclose(px, col, atol=1e-3), (c, px, col)
        assert np.allclose(px, sample_nearest(img, c), atol=1e-3)


# ------------------------------------------------------------------------------------------
# HDR I/O
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".hdr", ".exr"])
def test_hdr_roundtrip(tmp_path, suffix):
    if suffix == ".exr":
        from invrender.shading.envmap import _cv2_has_exr

        if not _cv2_has_exr():
            pytest.importorskip("mitsuba")  # the EXR fallback
    rng = np.random.default_rng(0)
    img = (rng.random((8, 16, 3)) * np.array([1.0, 4.0, 50.0])).astype(np.float32)
    img[0, 0] = [1.0, 0.0, 0.0]  # channel order check
    path = write_hdr(tmp_path / f"env{suffix}", img)
    assert path.exists() and not list(tmp_path.glob(".env*"))  # no temp file left behind
    back = read_hdr(path)
    assert back.dtype == np.float32 and back.shape == (8, 16, 3)
    rtol = 1e-2 if suffix == ".hdr" else 1e-3  # RGBE keeps ~8 bits of mantissa per pixel
    assert np.allclose(back, img, rtol=rtol, atol=rtol * img.max(axis=-1, keepdims=True))
    assert back[0, 0, 0] > 0.9 and back[0, 0, 1] < 0.05


def test_read_hdr_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.hdr"
    with pytest.raises(FileNotFoundError, match="nope.hdr"):
        read_hdr(missing)
    bad = tmp_path / "bad.hdr"
    bad.write_bytes(b"not an image")
    with pytest.raises(OSError, match="bad.hdr"):
        read_hdr(bad)
