#!/usr/bin/env python
"""Render the embedded synthetic capture ``data/toybox/`` with Mitsuba 3 (``scalar_rgb``).

Layout: NeRF-synthetic (``transforms_{train,test}.json``) + TensoIR (``train_XXX/``, ``test_XXX/`` with
``rgba.png``, ``metadata.json``; test views also ``albedo.png``, ``normal.png``, ``roughness.png``,
``metallic.png`` and ``rgba_<env>.png`` relit under the test environment maps). Everything is
procedural and deterministic (fixed seeds). See ``data/toybox/README.md`` for the file conventions.

    python scripts/make_synthetic.py                      # the committed 128x128 scene
    python scripts/make_synthetic.py --res 800 --n-train 100 --n-test 200 --out /tmp/toybox800
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from invrender.shading.envmap import (  # noqa: E402
    direction_grid,
    mitsuba_envmap_to_world,
    read_hdr,
    write_hdr,
)

TRAIN_ENV = "courtyard"
TEST_ENVS = ("sunset", "studio", "overcast", "night")
ENV_RES = (256, 512)  # H, W of the procedural maps
RADIUS = 3.7  # camera distance from the object centre
FOV_X_DEG = 40.0
CENTER = np.zeros(3)  # the object is built around the origin

# ------------------------------------------------------------------------------------------
# small numpy helpers
# ------------------------------------------------------------------------------------------


def _smoothstep(e0, e1, x):
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _srgb(x):
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(np.maximum(x, 0.0031308), 1 / 2.4) - 0.055)


def _to_u8(x):
    return np.clip(np.round(np.asarray(x) * 255.0), 0, 255).astype(np.uint8)


def _save_png(path: Path, arr: np.ndarray, mode: str):
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(arr))  # [H, W, 4] -> RGBA, [H, W, 2] -> LA
    assert im.mode == mode, (path, im.mode, mode)
    im.save(path, optimize=True)


def _sphere_noise(dirs, rng, n_waves=24, f_lo=2.0, f_hi=24.0):
    """Smooth, seamless noise on the sphere: a sum of random plane waves over 3D directions, ~N(0, 1)."""
    out = np.zeros(dirs.shape[:-1])
    for _ in range(n_waves):
        k = rng.normal(size=3)
        k /= np.linalg.norm(k)
        f = f_lo * (f_hi / f_lo) ** rng.random()
        out += np.sin(f * (dirs @ k) + rng.uniform(0, 2 * np.pi)) / math.sqrt(f)
    return out / (out.std() + 1e-8)


def _unit(az_deg, el_deg):
    a, e = math.radians(az_deg), math.radians(el_deg)
    return np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])


def _disk(dirs, center, radius_deg, soft_deg=0.4):
    """Soft-edged disk mask around ``center`` of angular radius ``radius_deg``."""
    ang = np.degrees(np.arccos(np.clip(dirs @ center, -1, 1)))
    return 1.0 - _smoothstep(radius_deg - soft_deg, radius_deg + soft_deg, ang)


def _glow(dirs, center, width_deg):
    ang = np.arccos(np.clip(dirs @ center, -1, 1))
    return np.exp(-((ang / math.radians(width_deg)) ** 2))


def _rect(az, el, az0, el0, w, h, soft=0.6):
    """Soft rectangle in (azimuth, elevation) degrees, centred at (az0, el0), size w x h."""
    daz = (az - az0 + 180.0) % 360.0 - 180.0
    mx = 1 - _smoothstep(w / 2 - soft, w / 2 + soft, np.abs(daz))
    my = 1 - _smoothstep(h / 2 - soft, h / 2 + soft, np.abs(el - el0))
    return mx * my


# ------------------------------------------------------------------------------------------
# procedural environment maps (this project's convention: Z up, row 0 = +Z)
# ------------------------------------------------------------------------------------------


def make_envmaps(height: int, width: int) -> dict[str, np.ndarray]:
    d = direction_grid(height, width)  # [H, W, 3]
    z = d[..., 2]
    el = np.degrees(np.arcsin(np.clip(z, -1, 1)))
    az = np.degrees(np.arctan2(d[..., 1], d[..., 0]))
    up = _smoothstep(-0.01, 0.01, z)[..., None]  # sky weight
    maps = {}

    # courtyard (training light): blue sky with clouds, a warm sun, buildings with windows, paving
    rng = np.random.default_rng(11)
    zen, hor = np.array([0.16, 0.32, 0.80]), np.array([0.75, 0.85, 1.0])
    t = np.clip(z, 0, 1)[..., None] ** 0.5
    sky = hor * (1 - t) + zen * t
    cloud = _smoothstep(0.3, 1.4, _sphere_noise(d, rng, f_lo=3, f_hi=30))[..., None] * _smoothstep(0.05, 0.3, z)[..., None]
    sky = sky * (1 - 0.8 * cloud) + 1.0 * cloud
    n_bld = 14
    edges = np.sort(rng.uniform(-180, 180, n_bld))
    idx = np.searchsorted(edges, az) % n_bld
    heights = rng.uniform(6, 22, n_bld)
    wall_cols = rng.choice(np.array([[0.45, 0.20, 0.14], [0.55, 0.50, 0.40], [0.30, 0.31, 0.33], [0.60, 0.42, 0.26]]), n_bld)
    bld = ((el >= 0) & (el < heights[idx]))[..., None]
    win = ((np.mod(az * 1.3 + idx * 7.0, 4.0) < 1.6) & (np.mod(el, 3.0) > 1.4) & (el > 1.0))[..., None]
    wall = wall_cols[idx] * 0.55 * (1 - win) + win * np.array([0.9, 0.85, 0.6]) * 0.9
    sky = np.where(bld, wall, sky)
    gx, gy = d[..., 0] / np.maximum(-z, 0.02), d[..., 1] / np.maximum(-z, 0.02)
    tile = ((np.floor(gx * 1.5) + np.floor(gy * 1.5)) % 2)[..., None]
    ground = np.array([0.30, 0.30, 0.26]) * (0.75 + 0.25 * tile) + np.array([0.05, 0.12, 0.03]) * (gx**2 + gy**2 > 30)[..., None]
    env = sky * up + ground * (1 - up)
    sun = _unit(35, 48)
    env = env + (_disk(d, sun, 3.5) * 110.0)[..., None] * np.array([1.0, 0.93, 0.80])
    env = env + (_glow(d, sun, 8) * 1.2)[..., None] * np.array([1.0, 0.9, 0.7])
    maps[TRAIN_ENV] = env

    # sunset: low orange sun, orange-to-violet sky, dark hills
    rng = np.random.default_rng(12)
    t = np.clip(z, 0, 1)[..., None] ** 0.35
    sky = np.array([1.10, 0.50, 0.22]) * (1 - t) + np.array([0.10, 0.10, 0.32]) * t
    hills = (el < 2.5 + 2.0 * np.sin(np.radians(az) * 3 + 1.0) + 1.2 * np.sin(np.radians(az) * 11))[..., None]
    sky = np.where(hills & (z >= 0)[..., None], np.array([0.05, 0.04, 0.05]), sky)
    ground = np.array([0.07, 0.05, 0.04])
    env = sky * up + ground * (1 - up)
    sun = _unit(-120, 7)
    env = env + (_disk(d, sun, 4.0) * 80.0)[..., None] * np.array([1.0, 0.55, 0.22])
    env = env + (_glow(d, sun, 15) * 2.5)[..., None] * np.array([1.0, 0.5, 0.2])
    maps["sunset"] = env

    # studio: dark room, three coloured softboxes and a grey floor
    t = np.clip(z, 0, 1)[..., None]
    env = np.array([0.05, 0.05, 0.055]) * (1 - 0.5 * t) * up + np.array([0.14, 0.13, 0.12]) * (1 - up)
    env = env + (_rect(az, el, 60, 35, 32, 22) * 7.0)[..., None] * np.array([1.0, 1.0, 0.97])
    env = env + (_rect(az, el, -75, 12, 24, 30) * 3.0)[..., None] * np.array([0.45, 0.65, 1.0])
    env = env + (_rect(az, el, 175, 55, 70, 6) * 6.0)[..., None] * np.array([1.0, 0.75, 0.45])
    env = env + (_rect(az, el, -150, 25, 8, 40) * 4.0)[..., None] * np.array([1.0, 0.35, 0.55])
    maps["studio"] = env

    # overcast: soft bright grey sky, brighter where the hidden sun is, grey-green ground
    rng = np.random.default_rng(14)
    n = _sphere_noise(d, rng, f_lo=1.5, f_hi=6)[..., None]
    sky = np.array([0.75, 0.80, 0.88]) * (0.8 + 0.45 * np.clip(z, 0, 1)[..., None]) * (1 + 0.08 * n)
    sky = sky + (_glow(d, _unit(100, 55), 30) * 0.8)[..., None] * np.array([1.0, 0.98, 0.92])
    ground = np.array([0.22, 0.25, 0.20]) * (1 + 0.1 * n)
    maps["overcast"] = sky * up + ground * (1 - up)

    # night: navy sky with stars, a cold moon and warm street lamps near the horizon
    rng = np.random.default_rng(15)
    t = np.clip(z, 0, 1)[..., None]
    env = (np.array([0.035, 0.05, 0.10]) * (1 - t) + np.array([0.01, 0.015, 0.04]) * t) * up
    env = env + np.array([0.03, 0.025, 0.02]) * (1 - up)
    stars = (rng.random((height, width)) < 0.004) & (z > 0.05)
    env = env + (stars * rng.uniform(1.0, 6.0, (height, width)))[..., None]
    moon = _unit(-30, 38)
    env = env + (_disk(d, moon, 4.0) * 55.0)[..., None] * np.array([0.80, 0.88, 1.0])
    env = env + (_glow(d, moon, 10) * 0.4)[..., None] * np.array([0.6, 0.7, 1.0])
    for az0, el0, r in ((40, 8, 3.5), (95, 12, 3.0), (150, 6, 4.0), (-95, 10, 3.2)):
        env = env + (_disk(d, _unit(az0, el0), r) * 25.0)[..., None] * np.array([1.0, 0.62, 0.25])
    maps["night"] = env

    return {k: np.maximum(v, 0.0).astype(np.float32) for k, v in maps.items()}


# ------------------------------------------------------------------------------------------
# geometry (numpy meshes, world frame, Z up)
# ------------------------------------------------------------------------------------------


class TriMesh:
    def __init__(self, v, n, uv, f):
        self.v, self.n, self.uv, self.f = (np.asarray(a, dtype=dt) for a, dt in
                                           ((v, np.float32), (n, np.float32), (uv, np.float32), (f, np.int32)))

    @staticmethod
    def concat(meshes):
        off = np.cumsum([0] + [len(m.v) for m in meshes[:-1]])
        return TriMesh(np.concatenate([m.v for m in meshes]), np.concatenate([m.n for m in meshes]),
                       np.concatenate([m.uv for m in meshes]), np.concatenate([m.f + o for m, o in zip(meshes, off)]))


def _grid_faces(rows, cols, wrap_cols):
    """Faces of a (rows x cols) vertex grid; columns wrap around if ``wrap_cols``."""
    f = []
    nc = cols if wrap_cols else cols - 1
    for i in range(rows - 1):
        for j in range(nc):
            a, b = i * cols + j, i * cols + (j + 1) % cols
            c, e = a + cols, b + cols
            f += [(a, c, b), (b, c, e)]
    return np.array(f)


def mesh_cylinder(radius, z0, z1, seg=128):
    """Closed cylinder (sharp rims). UV atlas: side in v in [0, 0.5], caps as a disk in the lower half."""
    th = np.linspace(0, 2 * np.pi, seg + 1)  # duplicated seam column for the UVs
    c, s = np.cos(th), np.sin(th)
    # side: 2 rows
    v = np.concatenate([np.stack([radius * c, radius * s, np.full_like(c, z)], -1) for z in (z1, z0)])
    n = np.concatenate([np.stack([c, s, np.zeros_like(c)], -1)] * 2)
    uv = np.concatenate([np.stack([th / (2 * np.pi), np.full_like(th, vv)], -1) for vv in (0.02, 0.48)])
    side = TriMesh(v, n, uv, _grid_faces(2, seg + 1, False))
    caps = []
    for z, sgn in ((z1, 1.0), (z0, -1.0)):
        cv = np.concatenate([[[0, 0, z]], np.stack([radius * c[:-1], radius * s[:-1], np.full(seg, z)], -1)])
        cn = np.tile([0, 0, sgn], (seg + 1, 1))
        # disk inscribed in the square u in [0.25, 0.75], v in [0.5, 1.0]
        cuv = np.stack([0.5 + 0.24 * cv[:, 0] / radius, 0.75 + 0.24 * cv[:, 1] / radius], -1)
        i = np.arange(seg)
        f = np.stack([np.zeros(seg, int), 1 + i, 1 + (i + 1) % seg], -1)
        if sgn < 0:
            f = f[:, [0, 2, 1]]
        caps.append(TriMesh(cv, cn, cuv, f))
    return TriMesh.concat([side] + caps)


def mesh_uv_sphere(center, radius, n_lat=48, n_lon=96):
    th = np.linspace(0, np.pi, n_lat + 1)
    ph = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)
    T, P = np.meshgrid(th, ph, indexing="ij")
    n = np.stack([np.sin(T) * np.cos(P), np.sin(T) * np.sin(P), np.cos(T)], -1).reshape(-1, 3)
    uv = np.stack([P / (2 * np.pi), T / np.pi], -1).reshape(-1, 2)
    return TriMesh(np.asarray(center) + radius * n, n, uv, _grid_faces(n_lat + 1, n_lon, True))


def mesh_torus(center, R, r, axis_az_deg, n_u=128, n_v=40):
    """Upright torus: its symmetry axis is horizontal at azimuth ``axis_az_deg``."""
    U, V = np.meshgrid(np.linspace(0, 2 * np.pi, n_u, endpoint=False), np.linspace(0, 2 * np.pi, n_v, endpoint=False), indexing="ij")
    # local frame: axis = e3 ; ring in (e1, e2)
    a = math.radians(axis_az_deg)
    e3 = np.array([math.cos(a), math.sin(a), 0.0])
    e1 = np.array([0.0, 0.0, 1.0])
    e2 = np.cross(e3, e1)
    ring = np.cos(U)[..., None] * e1 + np.sin(U)[..., None] * e2
    n = np.cos(V)[..., None] * ring + np.sin(V)[..., None] * e3
    v = np.asarray(center) + R * ring + r * n
    uv = np.stack([U / (2 * np.pi), V / (2 * np.pi)], -1)
    faces = []
    for i in range(n_u):
        for j in range(n_v):
            p, q = i * n_v + j, i * n_v + (j + 1) % n_v
            pn, qn = ((i + 1) % n_u) * n_v + j, ((i + 1) % n_u) * n_v + (j + 1) % n_v
            faces += [(p, pn, q), (q, pn, qn)]
    m = TriMesh(v.reshape(-1, 3), n.reshape(-1, 3), uv.reshape(-1, 2), np.array(faces))
    # make the winding agree with the outward normals
    tri = m.v[m.f]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    if np.mean(np.sum(fn * m.n[m.f[:, 0]], -1)) < 0:
        m.f = m.f[:, [0, 2, 1]]
    return m


def mesh_box(center, size, yaw_deg):
    """Axis-aligned-in-Z box rotated by ``yaw_deg`` about Z; sharp edges (4 vertices per face)."""
    h = np.asarray(size, float) / 2
    a = math.radians(yaw_deg)
    Rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    vs, ns, uvs, fs = [], [], [], []
    for axis in range(3):
        for sgn in (1.0, -1.0):
            nrm = np.zeros(3)
            nrm[axis] = sgn
            t1, t2 = np.roll(np.eye(3), 1, axis=0)[axis], np.roll(np.eye(3), 2, axis=0)[axis]
            if sgn < 0:
                t1, t2 = t2, t1
            base = len(vs)
            for du, dv in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
                p = nrm * h + du * t1 * h + dv * t2 * h
                vs.append(Rz @ p + center)
                ns.append(Rz @ nrm)
                uvs.append(((du + 1) / 2, (dv + 1) / 2))
            fs += [(base, base + 1, base + 2), (base, base + 2, base + 3)]
    return TriMesh(vs, ns, uvs, fs)


def write_ply(path: Path, m: TriMesh, with_attrs=True):
    """Binary little-endian PLY (positions [+ normals + uv], triangles)."""
    props = ["x", "y", "z"] + (["nx", "ny", "nz", "u", "v"] if with_attrs else [])
    head = ["ply", "format binary_little_endian 1.0", f"element vertex {len(m.v)}"]
    head += [f"property float {p}" for p in props]
    head += [f"element face {len(m.f)}", "property list uchar int vertex_indices", "end_header"]
    vert = np.concatenate([m.v, m.n, m.uv], 1) if with_attrs else m.v
    face = np.zeros(len(m.f), dtype=[("c", "u1"), ("i", "<i4", (3,))])
    face["c"], face["i"] = 3, m.f
    with open(path, "wb") as fh:
        fh.write(("\n".join(head) + "\n").encode("ascii"))
        fh.write(np.ascontiguousarray(vert, dtype="<f4").tobytes())
        fh.write(face.tobytes())


# ------------------------------------------------------------------------------------------
# the object: parts, materials and textures
# ------------------------------------------------------------------------------------------

S = 1.15  # overall scale of the layout below (object bounding box about +-0.92 x +-0.92 x +-0.63)
PED_R, PED_Z0, PED_Z1 = 0.8 * S, -0.55 * S, -0.25 * S
SPHERE_C, SPHERE_R = S * np.array([-0.28, -0.15, -0.25 + 0.38]), 0.38 * S
TORUS_C, TORUS_R, TORUS_r, TORUS_AZ = S * np.array([0.30, 0.28, -0.25 + 0.40]), 0.30 * S, 0.10 * S, 45.0
BOX_C, BOX_S, BOX_YAW = S * np.array([0.32, -0.42, -0.25 + 0.15]), (0.30 * S,) * 3, 25.0


def pedestal_textures(res=512):
    """Base colour (linear RGB) and roughness of the pedestal atlas, [res, res, 3] and [res, res]."""
    rng = np.random.default_rng(7)
    yy, xx = (np.mgrid[0:res, 0:res] + 0.5) / res  # v (row), u (col)
    col = np.zeros((res, res, 3))
    rough = np.zeros((res, res))
    # side (v < 0.5): vertical stripes of three colours around, with a thin band
    side = yy < 0.5
    k = np.floor(xx * 24).astype(int) % 3
    stripe_cols = np.array([[0.70, 0.62, 0.48], [0.15, 0.30, 0.55], [0.62, 0.18, 0.12]])
    col[side] = stripe_cols[k[side]]
    band = side & (np.abs(yy - 0.25) < 0.03)
    col[band] = [0.85, 0.82, 0.75]
    rough[side] = np.where(k[side] == 1, 0.3, 0.65)
    # top (v >= 0.5): checker board (cream / terracotta) inside the cap disk, with value noise
    top = ~side
    cx, cy = (xx - 0.5) / 0.24, (yy - 0.75) / 0.24  # cap coordinates in units of the radius
    chk = ((np.floor(cx * 4) + np.floor(cy * 4)) % 2).astype(bool)
    c1, c2 = np.array([0.80, 0.74, 0.60]), np.array([0.50, 0.16, 0.08])
    col[top] = np.where(chk[top][:, None], c1, c2)
    rough[top] = np.where(chk[top], 0.25, 0.7)
    ring = top & (np.abs(np.hypot(cx, cy) - 0.9) < 0.05)
    col[ring] = [0.10, 0.35, 0.25]
    rough[ring] = 0.45
    # low-frequency multiplicative noise on the colour (grain), smooth noise on roughness
    small = rng.random((16, 16))
    import cv2

    grain = cv2.resize(small.astype(np.float32), (res, res), interpolation=cv2.INTER_CUBIC)
    col *= (0.85 + 0.3 * grain)[..., None]
    rough = np.clip(rough + 0.1 * (grain - 0.5), 0.05, 1.0)
    return np.clip(col, 0, 1).astype(np.float32), rough.astype(np.float32)


SPHERE_MAT = dict(base_color=[1.0, 0.72, 0.30], roughness=0.2, metallic=1.0)  # gold
TORUS_MAT = dict(base_color=[0.10, 0.45, 0.40], roughness=0.35, metallic=0.0)  # teal plastic
BOX_MAT = dict(base_color=[0.90, 0.50, 0.35], roughness=0.45, metallic=1.0)  # brushed copper


def build_parts(tmp: Path):
    ped = mesh_cylinder(PED_R, PED_Z0, PED_Z1)
    torus = mesh_torus(TORUS_C, TORUS_R, TORUS_r, TORUS_AZ)
    box = mesh_box(BOX_C, BOX_S, BOX_YAW)
    for name, m in (("pedestal", ped), ("torus", torus), ("box", box)):
        write_ply(tmp / f"{name}.ply", m)
    gt = TriMesh.concat([ped, mesh_uv_sphere(SPHERE_C, SPHERE_R), torus, box])
    return gt


def scene_dict(mi, tmp: Path, mode: str, env: np.ndarray | None, max_depth: int):
    """mode: 'beauty' (path tracer under ``env``), 'aov' (albedo + normal), 'rm' (albedo AOV of (roughness, metallic, 0))."""
    col, rough = pedestal_textures()

    def bsdf(base, r, m):
        return {"type": "principled", "base_color": base, "roughness": r, "metallic": m}

    def const(x):
        return {"type": "rgb", "value": list(map(float, x))}

    def tex(arr, raw):
        return {"type": "bitmap", "bitmap": mi.Bitmap(np.ascontiguousarray(arr, dtype=np.float32)), "raw": raw,
                "filter_type": "bilinear", "wrap_mode": "clamp"}

    mats = {}
    if mode == "rm":
        rm = np.stack([rough, np.zeros_like(rough), np.zeros_like(rough)], -1)
        mats["pedestal"] = bsdf(tex(rm, True), 0.5, 0.0)
        for name, m in (("sphere", SPHERE_MAT), ("torus", TORUS_MAT), ("box", BOX_MAT)):
            mats[name] = bsdf(const([m["roughness"], m["metallic"], 0.0]), 0.5, 0.0)
    else:
        mats["pedestal"] = bsdf(tex(col, True), tex(rough[..., None], True), 0.0)
        for name, m in (("sphere", SPHERE_MAT), ("torus", TORUS_MAT), ("box", BOX_MAT)):
            mats[name] = bsdf(const(m["base_color"]), m["roughness"], m["metallic"])

    d = {"type": "scene"}
    if mode == "beauty":
        d["integrator"] = {"type": "path", "max_depth": max_depth, "hide_emitters": True}
        d["env"] = {"type": "envmap", "bitmap": mi.Bitmap(np.ascontiguousarray(env, dtype=np.float32)),
                    "to_world": mi.ScalarTransform4f(mitsuba_envmap_to_world())}
    else:
        # the inner integrator only supplies the alpha (coverage) channel: no emitters, so its colour is 0
        d["integrator"] = {"type": "aov", "aovs": "alb:albedo,nn:sh_normal",
                           "inner": {"type": "direct", "emitter_samples": 1, "bsdf_samples": 0}}
    for name in ("pedestal", "torus", "box"):
        d[name] = {"type": "ply", "filename": str(tmp / f"{name}.ply"), "face_normals": False, "bsdf": mats[name]}
    d["sphere"] = {"type": "sphere", "center": SPHERE_C.tolist(), "radius": SPHERE_R, "bsdf": mats["sphere"]}
    return d


# ------------------------------------------------------------------------------------------
# cameras
# ------------------------------------------------------------------------------------------


def camera_positions(n, z_lo, z_hi, az_offset, radius):
    """Fibonacci-like spiral: heights uniform in [z_lo, z_hi] (unit sphere), golden-angle azimuths."""
    golden = math.pi * (3 - math.sqrt(5))
    i = np.arange(n) + 0.5
    z = z_lo + (z_hi - z_lo) * i / n
    phi = az_offset + golden * np.arange(n)
    r = np.sqrt(1 - z * z)
    return CENTER + radius * np.stack([r * np.cos(phi), r * np.sin(phi), z], -1)


def look_at_gl(eye, target, up=(0.0, 0.0, 1.0)):
    """Camera-to-world in OpenGL/Blender axes (x right, y up, z backwards)."""
    eye, target, up = (np.asarray(a, float) for a in (eye, target, up))
    back = eye - target
    back /= np.linalg.norm(back)
    right = np.cross(up, back)
    right /= np.linalg.norm(right)
    upv = np.cross(back, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, upv, back, eye
    return c2w


def gl_to_mitsuba(c2w_gl):
    """Mitsuba's camera looks along local +Z with +Y up and +X to the image's left."""
    return c2w_gl @ np.diag([-1.0, 1.0, -1.0, 1.0])


def sensor_dict(mi, c2w_gl, res, spp, fov_x_deg):
    return {
        "type": "perspective",
        "fov": fov_x_deg,
        "fov_axis": "x",
        "near_clip": 0.05,
        "far_clip": 100.0,
        "to_world": mi.ScalarTransform4f(gl_to_mitsuba(c2w_gl).tolist()),
        "sampler": {"type": "multijitter", "sample_count": spp},
        "film": {"type": "hdrfilm", "width": res, "height": res, "pixel_format": "rgba",
                 "rfilter": {"type": "gaussian"}},
    }


# ------------------------------------------------------------------------------------------
# image encoding
# ------------------------------------------------------------------------------------------


def _unpremultiply(x, a):
    return np.where(a[..., None] > 1e-4, x / np.maximum(a[..., None], 1e-4), 0.0)


def encode_rgba(img):
    """Premultiplied linear RGBA [H, W, 4] -> straight-alpha sRGB 8-bit RGBA."""
    a = np.clip(img[..., 3], 0, 1)
    rgb = _srgb(_unpremultiply(img[..., :3], a))
    rgb[a <= 1e-4] = 0.0
    return _to_u8(np.concatenate([rgb, a[..., None]], -1))


# ------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "data" / "toybox")
    p.add_argument("--res", type=int, default=128)
    p.add_argument("--spp", type=int, default=144, help="samples per pixel of the path-traced images (multijitter: a square is exact)")
    p.add_argument("--aov-spp", type=int, default=16, help="samples per pixel of the G-buffer images")
    p.add_argument("--max-depth", type=int, default=6)
    p.add_argument("--n-train", type=int, default=72)
    p.add_argument("--n-test", type=int, default=24)
    p.add_argument("--env-res", type=int, nargs=2, default=ENV_RES, metavar=("H", "W"))
    p.add_argument("--preview", action="store_true", help="only write a contact sheet of one view per env to /tmp")
    args = p.parse_args(argv)

    import mitsuba as mi

    mi.set_variant("scalar_rgb")
    t0 = time.time()
    out: Path = args.out
    envs = make_envmaps(*args.env_res)

    if not args.preview:
        for sub in list(out.glob("train_*")) + list(out.glob("test_*")):
            shutil.rmtree(sub)
        for f in out.glob("transforms_*.json"):
            f.unlink()
    env_dir = out / "envmaps" if not args.preview else Path(tempfile.mkdtemp(prefix="toybox_env_"))
    env_dir.mkdir(parents=True, exist_ok=True)
    for name, img in envs.items():
        write_hdr(env_dir / f"{name}.hdr", img)
    # render from the stored (RGBE-quantized) files so that the maps on disk are exactly the lighting
    envs = {name: read_hdr(env_dir / f"{name}.hdr") for name in envs}

    with tempfile.TemporaryDirectory(prefix="toybox_") as td:
        tmp = Path(td)
        gt_mesh = build_parts(tmp)
        scenes = {name: mi.load_dict(scene_dict(mi, tmp, "beauty", env, args.max_depth)) for name, env in envs.items()}
        if args.preview:
            return preview(mi, scenes, args)
        out.mkdir(parents=True, exist_ok=True)
        write_ply(out / "gt_mesh.ply", gt_mesh, with_attrs=False)
        aov_scene = mi.load_dict(scene_dict(mi, tmp, "aov", None, args.max_depth))
        rm_scene = mi.load_dict(scene_dict(mi, tmp, "rm", None, args.max_depth))

        splits = {
            "train": camera_positions(args.n_train, -0.2, 0.95, 0.0, RADIUS),
            # test: another spiral whose azimuth offset (searched once) keeps every test camera >= 5 deg
            # away from all 72 train cameras
            "test": camera_positions(args.n_test, -0.12, 0.92, 2.077, RADIUS),
        }
        for split, eyes in splits.items():
            frames = []
            for i, eye in enumerate(eyes):
                c2w = look_at_gl(eye, CENTER)
                name = f"{split}_{i:03d}"
                vdir = out / name
                vdir.mkdir(parents=True, exist_ok=True)
                seed = (0 if split == "train" else 100000) + i
                sensor = mi.load_dict(sensor_dict(mi, c2w, args.res, args.spp, FOV_X_DEG))
                img = np.array(mi.render(scenes[TRAIN_ENV], sensor=sensor, seed=seed, spp=args.spp))
                _save_png(vdir / "rgba.png", encode_rgba(img), "RGBA")
                if split == "test":
                    for env_name in TEST_ENVS:
                        img_e = np.array(mi.render(scenes[env_name], sensor=sensor, seed=seed, spp=args.spp))
                        _save_png(vdir / f"rgba_{env_name}.png", encode_rgba(img_e), "RGBA")
                    write_gbuffers(mi, vdir, aov_scene, rm_scene, c2w, args, seed)
                meta = {
                    "imw": args.res,
                    "imh": args.res,
                    "cam_angle_x": math.radians(FOV_X_DEG),
                    # TensoIR style: 16 comma-separated floats, row-major 4x4 camera-to-world, OpenGL axes
                    "cam_transform_mat": ",".join(f"{x:.8f}" for x in c2w.reshape(-1)),
                    "envmap": TRAIN_ENV,
                }
                if split == "test":
                    meta["relight_envmaps"] = list(TEST_ENVS)
                (vdir / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
                frames.append({"file_path": f"./{name}/rgba", "transform_matrix": c2w.round(8).tolist()})
                print(f"[{time.time() - t0:7.1f}s] {name}", flush=True)
            tf = {"camera_angle_x": math.radians(FOV_X_DEG), "frames": frames}
            (out / f"transforms_{split}.json").write_text(json.dumps(tf, indent=2) + "\n")
    print(f"done in {time.time() - t0:.1f}s -> {out}")


def write_gbuffers(mi, vdir: Path, aov_scene, rm_scene, c2w, args, seed):
    sensor_box = sensor_dict(mi, c2w, args.res, args.aov_spp, FOV_X_DEG)
    sensor_box["film"]["rfilter"] = {"type": "box"}  # no negative lobes / blur on data maps
    sensor = mi.load_dict(sensor_box)
    g = np.array(mi.render(aov_scene, sensor=sensor, seed=seed, spp=args.aov_spp))
    rm = np.array(mi.render(rm_scene, sensor=sensor, seed=seed, spp=args.aov_spp))
    a = np.clip(g[..., 3], 0, 1)
    mask = a > 1e-4
    alb = np.clip(_unpremultiply(g[..., 4:7], a), 0, 1)
    nrm = _unpremultiply(g[..., 7:10], a)
    nrm = nrm / np.maximum(np.linalg.norm(nrm, axis=-1, keepdims=True), 1e-8)
    rmv = np.clip(_unpremultiply(rm[..., 4:7], a), 0, 1)
    a8 = _to_u8(a)[..., None]
    alb8 = _to_u8(np.where(mask[..., None], _srgb(alb), 0))
    nrm8 = _to_u8(np.where(mask[..., None], nrm * 0.5 + 0.5, 0))
    _save_png(vdir / "albedo.png", np.concatenate([alb8, a8], -1), "RGBA")
    _save_png(vdir / "normal.png", np.concatenate([nrm8, a8], -1), "RGBA")
    for ch, name in ((0, "roughness"), (1, "metallic")):
        v8 = _to_u8(np.where(mask, rmv[..., ch], 0))[..., None]
        _save_png(vdir / f"{name}.png", np.concatenate([v8, a8], -1), "LA")


def preview(mi, scenes, args):
    """Contact sheet: a few views under each env (for tuning the exposure), written to /tmp."""
    from PIL import Image

    eyes = camera_positions(4, 0.0, 0.7, 0.3, RADIUS)
    rows = []
    for name, scene in scenes.items():
        row = []
        for eye in eyes:
            sensor = mi.load_dict(sensor_dict(mi, look_at_gl(eye, CENTER), args.res, args.spp, FOV_X_DEG))
            img = np.array(mi.render(scene, sensor=sensor, seed=1, spp=args.spp))
            rgba = encode_rgba(img).astype(np.float32) / 255
            row.append(rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:]) * 0.5)
        rows.append(np.concatenate(row, 1))
    sheet = _to_u8(np.concatenate(rows, 0))
    Image.fromarray(sheet).save("/tmp/toybox_preview.png")
    print("wrote /tmp/toybox_preview.png", list(scenes))


if __name__ == "__main__":
    main()
