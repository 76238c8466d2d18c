"""Mesh rasterizer (invrender.mesh.raster): visibility backends against analytic scenes and each
other, the fill rule, near-plane clipping, gradients, texture filtering, nvdiffrast parity."""

from __future__ import annotations

import math

import pytest
import torch

from invrender.cameras import look_at_viewmat, make_K
from invrender.mesh.raster import (
    Rasterized, build_mips, interpolate, mesh_visibility_torch, rasterize, texture_lookup,
    uv_derivatives,
)

CPU_BACKENDS = ["torch", "native"]


def uv_sphere(n_lat: int, n_lon: int, radius: float = 1.0, dtype=torch.float32):
    """UV sphere: vertices [V, 3], faces [F, 3] (outward, counter-clockwise), uvs [V, 2].
    The seam column is duplicated so uv stays continuous inside every triangle."""
    theta = torch.linspace(0, math.pi, n_lat + 1, dtype=torch.float64)  # polar, from +z
    phi = torch.linspace(0, 2 * math.pi, n_lon + 1, dtype=torch.float64)
    t, p = torch.meshgrid(theta, phi, indexing="ij")  # [n_lat + 1, n_lon + 1]
    v = torch.stack([t.sin() * p.cos(), t.sin() * p.sin(), t.cos()], -1) * radius
    # poles and seam bit-identical (sin(pi), sin(2 pi) are not 0): no hairline cracks
    v[0, :] = torch.tensor([0.0, 0.0, radius], dtype=torch.float64)
    v[-1, :] = torch.tensor([0.0, 0.0, -radius], dtype=torch.float64)
    v[:, -1] = v[:, 0]
    v = v.reshape(-1, 3)
    uv = torch.stack([p / (2 * math.pi), t / math.pi], -1).reshape(-1, 2)
    idx = torch.arange((n_lat + 1) * (n_lon + 1)).reshape(n_lat + 1, n_lon + 1)
    a, b = idx[:-1, :-1], idx[:-1, 1:]
    c, d = idx[1:, :-1], idx[1:, 1:]
    # the quads of the first and last rows touch a pole: drop their degenerate halves
    tris = [torch.stack([a, c, d], -1)[:-1], torch.stack([a, d, b], -1)[1:]]
    faces = torch.cat([x.reshape(-1, 3) for x in tris], 0)
    return v.to(dtype), faces, uv.to(dtype)


def cam64(f=50.0, size=64):
    return make_K(f, f, size / 2, size / 2), torch.eye(4)


# ---------------------------------------------------------------------------------------------
# analytic scenes


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_quad_facing_camera(backend):
    # quad on z = 2: px = 25 x + 32, py = 25 y + 32; its edges land on pixel borders (integers),
    # half a pixel from any centre, so the expected coverage has no ties
    K, vm = cam64()
    x0, x1, y0, y1 = -0.4, 0.32, -0.2, 0.36  # px in [22, 40], py in [27, 41]
    verts = torch.tensor([[x0, y0, 2.0], [x1, y0, 2.0], [x1, y1, 2.0], [x0, y1, 2.0]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    r = rasterize(verts, faces, vm, K, 64, 64, backend=backend)
    expect = torch.zeros(64, 64, dtype=torch.bool)
    expect[27:41, 22:40] = True
    assert torch.equal(r.tri_id >= 0, expect)
    assert torch.equal(r.mask[..., 0] > 0, expect)
    assert set(r.tri_id[expect].unique().tolist()) == {0, 1}
    assert torch.all(r.tri_id[~expect] == -1)
    torch.testing.assert_close(r.depth[expect], torch.full_like(r.depth[expect], 2.0))
    assert torch.all(r.depth[~expect] == 0) and torch.all(r.bary[~expect] == 0)
    torch.testing.assert_close(r.bary.sum(-1)[expect], torch.ones(int(expect.sum())))
    assert r.bary[expect].min() >= -1e-6
    # interpolating the vertex positions gives the point on the quad seen by each pixel centre
    p = interpolate(verts, faces, r)[expect]  # [P, 3]
    ii, jj = torch.nonzero(expect, as_tuple=True)
    torch.testing.assert_close(50 * p[:, 0] / p[:, 2] + 32, jj + 0.5, atol=1e-4, rtol=0)
    torch.testing.assert_close(50 * p[:, 1] / p[:, 2] + 32, ii + 0.5, atol=1e-4, rtol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_viewmat_is_applied(backend):
    # moving both the world and the camera by the same rigid motion changes nothing
    K, vm = cam64()
    verts = torch.tensor([[-0.4, -0.2, 2.0], [0.32, -0.2, 2.5], [0.0, 0.36, 1.8]])
    faces = torch.tensor([[0, 1, 2]])
    ref = rasterize(verts, faces, vm, K, 64, 64, backend=backend)
    world_from_cam = torch.linalg.inv(look_at_viewmat((1.0, 2.0, 3.0)).double()).float()
    moved = verts @ world_from_cam[:3, :3].T + world_from_cam[:3, 3]
    viewmat = torch.linalg.inv(world_from_cam.double()).float()
    r = rasterize(moved, faces, viewmat, K, 64, 64, backend=backend)
    assert (r.tri_id != ref.tri_id).sum() <= 2  # float32 round trip may move an edge pixel
    same = (r.tri_id == ref.tri_id) & (r.tri_id >= 0)
    torch.testing.assert_close(r.depth[same], ref.depth[same], atol=1e-4, rtol=0)
    torch.testing.assert_close(r.bary[same], ref.bary[same], atol=1e-4, rtol=0)


def cube():
    v = torch.tensor([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
    # index = 4 (x > 0) + 2 (y > 0) + (z > 0); two counter-clockwise (outward) triangles per face
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    faces = []
    for a, b, c, d in quads:
        faces += [[a, b, c], [a, c, d]]
    return v, torch.tensor(faces)


def test_cube_is_outward():
    v, f = cube()
    tri = v[f]
    n = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    assert torch.all((n * tri.mean(1)).sum(-1) > 0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_cube_occlusion_and_depth(backend):
    v, f = cube()
    eye = torch.tensor([2.1, 1.6, 1.3])
    vm = look_at_viewmat(eye.tolist())
    K = make_K(60.0, 60.0, 40.0, 36.0)
    r = rasterize(v, f, vm, K, 80, 72, backend=backend)
    cov = r.tri_id >= 0
    # three faces are visible from a corner direction, and only front faces are ever seen
    tri = v[f]
    normals = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    front = ((eye - tri[:, 0]) * normals).sum(-1) > 0  # [12]
    seen = r.tri_id[cov].unique()
    assert front[seen].all()
    assert len({int(t) // 2 for t in seen}) == 3
    # ray-box intersection (slabs) in world space
    R, t = vm[:3, :3].double(), vm[:3, 3].double()
    H, W = 72, 80
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    d_cam = torch.stack([(xs - 40) / 60, (ys - 36) / 60, torch.ones_like(xs)], -1).double()
    d = d_cam @ R  # world direction whose camera z component is 1
    o = -R.T @ t
    with torch.no_grad():
        inv = 1 / d
        ta, tb = (-0.5 - o) * inv, (0.5 - o) * inv
        tnear = torch.minimum(ta, tb).amax(-1)
        tfar = torch.maximum(ta, tb).amin(-1)
    hit = tnear <= tfar
    assert (hit != cov).sum() <= 2  # pixel centres grazing the silhouette may round either way
    both = hit & cov
    torch.testing.assert_close(r.depth[both][:, 0].double(), tnear[both], atol=1e-4, rtol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_near_plane_clips_per_pixel(backend):
    # a huge quad on the plane z = 1 + 2 y (camera space), reaching behind the camera: along the
    # ray (rx, ry, 1) it sits at z = 1 / (1 - 2 ry), which is >= near = 0.5 iff ry >= -0.5
    K = make_K(32.0, 32.0, 32.0, 32.0)
    pts = [(x, y, 1 + 2 * y) for x, y in ((-40, -20), (40, -20), (40, 20), (-40, 20))]
    verts = torch.tensor(pts, dtype=torch.float32)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    r = rasterize(verts, faces, torch.eye(4), K, 64, 64, near=0.5, backend=backend)
    ry = (torch.arange(64) + 0.5 - 32) / 32
    rows = (ry >= -0.5) & (ry < 0.5)
    assert torch.equal(r.tri_id >= 0, rows[:, None].expand(64, 64))
    z = 1 / (1 - 2 * ry[rows].double())
    torch.testing.assert_close(r.depth[rows][..., 0].double(), z[:, None].expand(-1, 64),
                               rtol=1e-5, atol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_camera_inside_sphere_sees_it_everywhere(backend):
    # every pixel ray leaves a closed surface around the camera exactly once, including through
    # triangles that straddle the camera plane (no vertex clipping, no holes)
    v, f, _ = uv_sphere(12, 24, radius=2.0)
    K = make_K(20.0, 20.0, 24.0, 20.0)  # wide: 100 x 90 degrees
    vm = look_at_viewmat((0.3, -0.2, 0.1), target=(1.0, 0.5, 0.2))
    r = rasterize(v, f, vm, K, 48, 40, near=1e-3, backend=backend)
    assert bool((r.tri_id >= 0).all())
    assert float(r.depth.min()) > 0


# ---------------------------------------------------------------------------------------------
# fill rule: every pixel of a tiling covered exactly once


def coverage_count(verts, faces, K, W, H, backend):
    """How many triangles cover each pixel, rasterizing them one at a time (no depth test)."""
    count = torch.zeros(H, W, dtype=torch.int64)
    for t in range(faces.shape[0]):
        r = rasterize(verts, faces[t:t + 1], torch.eye(4), K, W, H, backend=backend)
        count += (r.tri_id >= 0).long()
    return count


def grid_mesh(n: int, lo: float, hi: float, depth):
    """n x n grid of quads over [lo, hi]^2 in *ray* coordinates (x/z, y/z), split along
    alternating diagonals; vertex (x, y) is placed at depth(x, y) * (x, y, 1)."""
    s = torch.linspace(lo, hi, n + 1, dtype=torch.float64)
    y, x = torch.meshgrid(s, s, indexing="ij")
    z = depth(x, y)
    verts = torch.stack([x * z, y * z, z], -1).reshape(-1, 3)
    idx = torch.arange((n + 1) ** 2).reshape(n + 1, n + 1)
    faces = []
    for i in range(n):
        for j in range(n):
            a, b, c, d = int(idx[i, j]), int(idx[i, j + 1]), int(idx[i + 1, j]), int(idx[i + 1, j + 1])
            faces += [[a, b, d], [a, d, c]] if (i + j) % 2 else [[a, b, c], [b, d, c]]
    return verts, torch.tensor(faces)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_tiling_covered_exactly_once(backend):
    # K maps ray coordinate r to pixel r + 0.5 - 0.5 = r: ray_x[j] = j exactly, so the grid's
    # vertices sit on pixel centres and its edges (rows, columns, diagonals) pass through them;
    # all arithmetic is exact here, which makes this a test of the tie rule itself
    K = make_K(1.0, 1.0, 0.5, 0.5)
    verts, faces = grid_mesh(6, 2.0, 14.0, lambda x, y: torch.full_like(x, 3.0))
    count = coverage_count(verts.float(), faces, K, 17, 17, backend)
    inner = torch.zeros(17, 17, dtype=torch.bool)
    inner[3:14, 3:14] = True  # centres strictly inside the square
    assert torch.all(count[inner] == 1), count
    assert torch.all(count <= 1)
    # top-left rule on the square's own border: the left and top sides are in, right and bottom out
    assert torch.all(count[2, 2:14] == 1) and torch.all(count[2:14, 2] == 1)
    assert torch.all(count[14, :] == 0) and torch.all(count[:, 14] == 0)
    # and the depth test picks the same single triangle
    r = rasterize(verts, faces, torch.eye(4), K, 17, 17, backend=backend)
    assert torch.equal(r.tri_id >= 0, count == 1)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bumpy_tiling_covered_exactly_once(backend):
    # a non-planar grid (every vertex its own random depth), vertices on half-integer ray
    # coordinates so the diagonals pass through pixel centres: there the two triangles' edge
    # functions are rounded, and only the canonical edge order makes them exact opposites
    K = make_K(1.0, 1.0, 0.5, 0.5)
    g = torch.Generator().manual_seed(1)
    bumps = torch.rand(8, 8, generator=g, dtype=torch.float64)
    verts, faces = grid_mesh(6, 2.5, 14.5, lambda x, y: 1.0 + bumps[(x / 2).long(), (y / 2).long()])
    for dtype in (torch.float64, torch.float32):
        count = coverage_count(verts.to(dtype), faces, K, 17, 17, backend)
        inner = torch.zeros(17, 17, dtype=torch.bool)
        inner[3:15, 3:15] = True
        assert torch.all(count[inner] == 1), count
        assert torch.all(count[~inner] == 0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fan_around_a_pixel_centre(backend):
    # 8 triangles around a vertex on pixel centre (8, 8), rim vertices on pixel centres too
    K = make_K(1.0, 1.0, 0.5, 0.5)
    ring = [(13, 8), (13, 13), (8, 13), (3, 13), (3, 8), (3, 3), (8, 3), (13, 3)]
    verts = torch.tensor([[8.0, 8.0, 1.0]] + [[x, y, 1.0] for x, y in ring]) * 2.0
    faces = torch.tensor([[0, 1 + k, 1 + (k + 1) % 8] for k in range(8)])
    count = coverage_count(verts, faces, K, 17, 17, backend)
    assert int(count[8, 8]) == 1
    assert torch.all(count[4:13, 4:13] == 1) and torch.all(count <= 1)


# ---------------------------------------------------------------------------------------------
# native kernel against the torch reference


def random_soup(n, seed, spread=1.0, depth=4.0):
    g = torch.Generator().manual_seed(seed)
    centres = (torch.rand(n, 1, 3, generator=g) - 0.5) * torch.tensor([3.0, 3.0, 2.0]) * spread
    centres[..., 2] += depth
    verts = (centres + torch.randn(n, 3, 3, generator=g) * 0.4).reshape(-1, 3)
    return verts, torch.arange(3 * n).reshape(n, 3)


def assert_same_raster(a: Rasterized, b: Rasterized):
    assert torch.equal(a.tri_id, b.tri_id)
    # same ids -> the torch part runs on the same numbers: equal bit for bit
    assert torch.equal(a.bary, b.bary) and torch.equal(a.depth, b.depth)
    assert torch.equal(a.mask, b.mask)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_native_matches_torch_on_soups(seed):
    verts, faces = random_soup(300, seed)
    K, vm = make_K(70.0, 60.0, 48.0, 40.0), torch.eye(4)
    a = rasterize(verts, faces, vm, K, 96, 80, backend="torch")
    b = rasterize(verts, faces, vm, K, 96, 80, backend="native")
    assert int((a.tri_id >= 0).sum()) > 2000
    assert_same_raster(a, b)


def test_native_matches_torch_across_near_plane():
    # the soup straddles the camera plane: triangles in front, behind and crossing it
    verts, faces = random_soup(300, 7, spread=2.0, depth=0.3)
    K, vm = make_K(40.0, 40.0, 32.0, 32.0), torch.eye(4)
    for near in (0.01, 0.4):
        a = rasterize(verts, faces, vm, K, 64, 64, near=near, backend="torch")
        b = rasterize(verts, faces, vm, K, 64, 64, near=near, backend="native")
        assert_same_raster(a, b)
        assert float(a.depth[a.tri_id >= 0].min()) >= near * (1 - 1e-6)


def test_native_matches_torch_on_sphere_and_float64():
    v, f, _ = uv_sphere(24, 48)
    vm = look_at_viewmat((2.5, 1.0, 1.2))
    K = make_K(80.0, 80.0, 50.0, 44.0)
    for dtype in (torch.float32, torch.float64):
        a = rasterize(v.to(dtype), f, vm, K, 100, 88, backend="torch")
        b = rasterize(v.to(dtype), f, vm, K, 100, 88, backend="native")
        assert_same_raster(a, b)
        assert a.bary.dtype == dtype


def test_native_and_torch_depth_outputs_agree():
    # the ops' own depth (float32 of the key) matches between twins and the recomputed depth
    from invrender.splat.native import mesh_visibility_native

    verts, faces = random_soup(200, 3)
    ray_x = (torch.arange(64, dtype=torch.float64) + 0.5 - 32) / 50
    ray_y = (torch.arange(48, dtype=torch.float64) + 0.5 - 24) / 50
    args = (verts.double(), faces.int(), ray_x, ray_y, 50.0, 50.0, 32.0, 24.0, 0.01)
    ta, za = mesh_visibility_torch(*args)
    tb, zb = mesh_visibility_native(*args)
    assert ta.dtype == tb.dtype == torch.int32 and za.dtype == zb.dtype == torch.float32
    assert torch.equal(ta, tb) and torch.equal(za, zb)
    r = rasterize(verts, faces, torch.eye(4), make_K(50.0, 50.0, 32.0, 24.0), 64, 48)
    torch.testing.assert_close(r.depth[..., 0], za, rtol=1e-5, atol=0)


def test_native_thread_count_does_not_change_the_result():
    verts, faces = random_soup(400, 5)
    K = make_K(70.0, 60.0, 48.0, 40.0)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = rasterize(verts, faces, torch.eye(4), K, 96, 80, backend="native")
        torch.set_num_threads(2)
        b = rasterize(verts, faces, torch.eye(4), K, 96, 80, backend="native")
    finally:
        torch.set_num_threads(old)
    assert_same_raster(a, b)


# ---------------------------------------------------------------------------------------------
# gradients


def small_scene(dtype=torch.float64):
    verts = torch.tensor([[-0.5, -0.4, 2.0], [0.6, -0.3, 2.4], [0.1, 0.5, 1.7], [0.7, 0.6, 2.2]],
                         dtype=dtype)
    faces = torch.tensor([[0, 1, 2], [1, 3, 2]])
    return verts, faces, make_K(12.0, 12.0, 6.0, 5.0).to(dtype), torch.eye(4, dtype=dtype)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradcheck_bary_depth(backend):
    verts, faces, K, vm = small_scene()
    ref = rasterize(verts, faces, vm, K, 12, 10, backend=backend)
    assert int((ref.tri_id >= 0).sum()) > 15

    def fn(v):
        r = rasterize(v, faces, vm, K, 12, 10, backend=backend)
        # coverage is piecewise constant; the scene keeps every pixel centre > 1e-3 from an edge
        assert torch.equal(r.tri_id, ref.tri_id)
        return r.bary, r.depth

    v = verts.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (v,), eps=1e-6, atol=1e-7)


def test_gradcheck_pose():
    # the camera pose is differentiable too (same formula, through v_cam)
    verts, faces, K, vm = small_scene()
    vm = vm.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda m: rasterize(verts, faces, m, K, 12, 10, backend="native").depth, (vm,),
        eps=1e-6, atol=1e-7,
    )


def test_gradcheck_interpolate():
    verts, faces, K, vm = small_scene()
    attr = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    v = verts.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, vv: interpolate(a, faces, rasterize(vv, faces, vm, K, 12, 10)), (attr, v),
        eps=1e-6, atol=1e-7,
    )


def test_depth_and_bary_are_homogeneous_in_the_vertices():
    # scaling the scene about the camera centre scales depth and keeps barycentrics (Euler:
    # sum_v grad . v = 1 x depth resp. 0), a whole-mesh check of the gradient's direction
    verts, faces, K, vm = small_scene(torch.float64)
    v = verts.clone().requires_grad_(True)
    r = rasterize(v, faces, vm, K, 12, 10)
    (g_depth,) = torch.autograd.grad(r.depth.sum(), v, retain_graph=True)
    torch.testing.assert_close((g_depth * verts).sum(), r.depth.sum().detach())
    w = torch.randn_like(r.bary)
    (g_bary,) = torch.autograd.grad((r.bary * w).sum(), v)
    torch.testing.assert_close((g_bary * verts).sum(), torch.tensor(0.0, dtype=torch.float64),
                               atol=1e-9, rtol=0)


def test_gradcheck_texture_lookup_bilinear():
    g = torch.Generator().manual_seed(0)
    tex = torch.rand(5, 7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    # interior points away from texel centres (where the bilinear cell changes)
    uv = (torch.rand(6, 2, generator=g, dtype=torch.float64) * 0.7 + 0.15)
    uv = uv + 0.013  # avoid exact centres
    uv.requires_grad_(True)
    for wrap in ("clamp", "repeat"):
        assert torch.autograd.gradcheck(
            lambda t, u: texture_lookup(t, u, mip=False, wrap=wrap), (tex, uv), eps=1e-6, atol=1e-7
        )


def test_gradcheck_texture_lookup_trilinear():
    g = torch.Generator().manual_seed(1)
    tex = torch.rand(16, 16, 2, generator=g, dtype=torch.float64, requires_grad=True)
    uv = (torch.rand(5, 2, generator=g, dtype=torch.float64) * 0.6 + 0.2).requires_grad_(True)
    # footprints of 1.6 to 5 texels: lod strictly between integer levels
    da = (torch.rand(5, 4, generator=g, dtype=torch.float64) * 0.15 + 0.1) / 16 * 2
    da.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda t, u, d: texture_lookup(t, u, uv_da=d), (tex, uv, da), eps=1e-6, atol=1e-7
    )


# ---------------------------------------------------------------------------------------------
# texture filtering


def test_bilinear_by_hand():
    tex = torch.tensor([[0.0, 1.0], [2.0, 3.0]])[..., None]  # [2, 2, 1]
    uv = torch.tensor([[0.5, 0.5], [0.25, 0.25], [0.375, 0.25], [0.75, 0.625], [0.0, 0.0]])
    out = texture_lookup(tex, uv, mip=False)[:, 0]
    # texel centres at 0.25 / 0.75; (0.375, 0.25): x = 0.25 of the way from texel 0 to 1 -> 0.25
    # (0.75, 0.625): column 1, y = 0.75 of the way from row 0 to 1 -> 1 + 0.75 * 2 = 2.5
    torch.testing.assert_close(out, torch.tensor([1.5, 0.0, 0.25, 2.5, 0.0]))
    # repeat: u = 0 is halfway between the last and the first column
    rep = texture_lookup(tex, torch.tensor([[0.0, 0.25]]), mip=False, wrap="repeat")
    torch.testing.assert_close(rep[0, 0], torch.tensor(0.5))
    # a general point against the textbook formula on a random texture
    g = torch.Generator().manual_seed(3)
    t = torch.rand(4, 6, 2, generator=g)
    u, v = 0.61, 0.37
    x, y = u * 6 - 0.5, v * 4 - 0.5
    i, j = math.floor(y), math.floor(x)
    a, b = y - i, x - j
    want = ((1 - a) * (1 - b) * t[i, j] + (1 - a) * b * t[i, j + 1] + a * (1 - b) * t[i + 1, j]
            + a * b * t[i + 1, j + 1])
    torch.testing.assert_close(texture_lookup(t, torch.tensor([u, v]), mip=False), want)


def checker(n: int) -> torch.Tensor:
    i = torch.arange(n)
    return ((i[:, None] + i[None, :]) % 2).float()[..., None]  # [n, n, 1], mean 0.5


def test_mip_pyramid_is_a_box_filter():
    tex = torch.rand(8, 4, 3)
    levels = build_mips(tex)
    assert [tuple(lv.shape[:2]) for lv in levels] == [(8, 4), (4, 2), (2, 1), (1, 1)]
    torch.testing.assert_close(levels[1][0, 0], tex[:2, :2].mean((0, 1)))
    torch.testing.assert_close(levels[-1][0, 0], tex.mean((0, 1)))
    assert len(build_mips(tex, max_mip_level=1)) == 2


def test_minified_checkerboard_returns_its_mean():
    tex = checker(64)
    # an 8 x 8 image of the whole texture: 8 texels per pixel, lod 3
    s = (torch.arange(8) + 0.5) / 8
    v, u = torch.meshgrid(s, s, indexing="ij")
    uv = torch.stack([u, v], -1)  # [8, 8, 2]
    aliased = texture_lookup(tex, uv, mip=False)
    assert set(aliased.unique().tolist()) <= {0.0, 0.5, 1.0}
    filtered = texture_lookup(tex, uv)  # uv_da from the pixel neighbours
    torch.testing.assert_close(filtered, torch.full_like(filtered, 0.5))
    # an explicit footprint far beyond the texture reaches the 1 x 1 level
    da = torch.tensor([[3.0, 0.0, 0.0, 3.0]]).expand(5, 4)
    far = texture_lookup(tex, torch.rand(5, 2), uv_da=da)
    torch.testing.assert_close(far, torch.full_like(far, 0.5))
    # a footprint under one texel keeps level 0 (magnification is plain bilinear)
    near = texture_lookup(tex, uv, uv_da=torch.full((8, 8, 4), 1e-3))
    torch.testing.assert_close(near, aliased)


def test_uv_derivatives_on_a_rasterized_plane():
    # a fronto-parallel quad with uv = affine in pixel coordinates: exact derivatives everywhere,
    # also on pixels whose only same-triangle neighbour is behind them
    K, vm = cam64()
    verts = torch.tensor([[-0.8, -0.8, 2.0], [0.8, -0.8, 2.0], [0.8, 0.8, 2.0], [-0.8, 0.8, 2.0]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    uvs = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    r = rasterize(verts, faces, vm, K, 64, 64)
    uv = interpolate(uvs, faces, r)
    da = uv_derivatives(uv, r.tri_id)
    cov = r.tri_id >= 0
    step = 1 / 40  # the quad spans 40 pixels
    want = torch.tensor([step, 0.0, 0.0, step]).expand(int(cov.sum()), 4)
    torch.testing.assert_close(da[cov], want, atol=1e-5, rtol=0)
    assert torch.all(da[~cov] == 0)


def test_texture_lookup_with_tri_id_samples_covered_pixels_only():
    K, vm = cam64()
    v, f, uvs = uv_sphere(8, 16)
    r = rasterize(v, f, look_at_viewmat((0.0, -3.0, 0.5)), K, 64, 64)
    uv = interpolate(uvs, f, r)
    tex = torch.rand(16, 16, 3)
    full = texture_lookup(tex, uv, mip=False)
    part = texture_lookup(tex, uv, mip=False, tri_id=r.tri_id)
    cov = r.tri_id >= 0
    assert torch.equal(part[cov], full[cov]) and torch.all(part[~cov] == 0)
    with pytest.raises(ValueError, match="tri_id"):
        texture_lookup(tex, uv, tri_id=r.tri_id[:3])


def test_texture_on_mesh_end_to_end_gradients():
    # rasterize -> interpolate uv -> mip lookup -> loss: gradients reach vertices and texture,
    # and are identical for both CPU visibility backends
    v, f, uvs = uv_sphere(16, 32)
    K, vm = make_K(60.0, 60.0, 32.0, 32.0), look_at_viewmat((0.0, -3.0, 0.5))
    tex = torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(0))
    grads = []
    for backend in CPU_BACKENDS:
        vv, tt = v.clone().requires_grad_(True), tex.clone().requires_grad_(True)
        r = rasterize(vv, f, vm, K, 64, 64, backend=backend)
        uv = interpolate(uvs, f, r)
        col = texture_lookup(tt, uv, tri_id=r.tri_id) * r.mask
        (col * torch.linspace(0, 1, 64)[:, None, None]).sum().backward()
        assert vv.grad.abs().sum() > 0 and tt.grad.abs().sum() > 0
        grads.append((vv.grad, tt.grad))
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# argument checking


def test_bad_arguments_raise_value_error_naming_them():
    K, vm = cam64()
    v, f = torch.rand(4, 3), torch.tensor([[0, 1, 2]])
    with pytest.raises(ValueError, match="vertices"):
        rasterize(v[:, :2], f, vm, K, 8, 8)
    with pytest.raises(ValueError, match="faces"):
        rasterize(v, f.float(), vm, K, 8, 8)
    with pytest.raises(ValueError, match="faces"):
        rasterize(v, torch.tensor([[0, 1, 9]]), vm, K, 8, 8)
    with pytest.raises(ValueError, match="viewmat"):
        rasterize(v, f, vm[:3], K, 8, 8)
    with pytest.raises(ValueError, match="K"):
        rasterize(v, f, vm, torch.tensor([[50.0, 1.0, 4.0], [0.0, 50.0, 4.0], [0.0, 0.0, 1.0]]), 8, 8)
    with pytest.raises(ValueError, match="near"):
        rasterize(v, f, vm, K, 8, 8, near=0.0)
    with pytest.raises(ValueError, match="backend"):
        rasterize(v, f, vm, K, 8, 8, backend="opengl")
    r = rasterize(v, f, vm, K, 8, 8)
    with pytest.raises(ValueError, match="attr"):
        interpolate(torch.rand(4), f, r)
    with pytest.raises(ValueError, match="tex"):
        texture_lookup(torch.rand(4, 4), torch.rand(3, 2))
    with pytest.raises(ValueError, match="uv_da"):
        texture_lookup(torch.rand(4, 4, 1), torch.rand(3, 2))  # mip on a non-image needs uv_da
    with pytest.raises(ValueError, match="wrap"):
        texture_lookup(torch.rand(4, 4, 1), torch.rand(3, 2), mip=False, wrap="mirror")


def test_empty_mesh_and_empty_view():
    K, vm = cam64()
    r = rasterize(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.int64), vm, K, 8, 6)
    assert r.tri_id.shape == (6, 8) and torch.all(r.tri_id == -1)
    behind = torch.tensor([[0.0, 0.0, -1.0], [1.0, 0.0, -1.0], [0.0, 1.0, -1.0]])
    for backend in CPU_BACKENDS:
        r = rasterize(behind, torch.tensor([[0, 1, 2]]), vm, K, 8, 6, backend=backend)
        assert torch.all(r.tri_id == -1) and torch.all(r.mask == 0)


# ---------------------------------------------------------------------------------------------
# GPU


def _has_nvdiffrast() -> bool:
    try:
        import nvdiffrast.torch  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.gpu
def test_native_cuda_matches_cpu_on_sphere():
    v, f, _ = uv_sphere(64, 128)
    vm = look_at_viewmat((2.2, 1.0, 1.0))
    K = make_K(200.0, 200.0, 128.0, 120.0)
    cpu = rasterize(v, f, vm, K, 256, 240, backend="native")
    gpu = rasterize(v.cuda(), f.cuda(), vm.cuda(), K.cuda(), 256, 240, backend="native")
    # the same uncontracted double arithmetic on both: identical ids
    assert torch.equal(gpu.tri_id.cpu(), cpu.tri_id)
    # the barycentrics are torch's float32 arithmetic on each device (CUDA's elementwise kernels
    # fuse multiply-adds, the CPU's do not): on an H200 0.13 % of them differed by more than 1e-5,
    # at most by 8.8e-5, a fifth of a texel of a 2048² atlas
    torch.testing.assert_close(gpu.bary.cpu(), cpu.bary, atol=2e-4, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not _has_nvdiffrast(), reason="nvdiffrast not installed ([gpu] extra)")
def test_nvdiffrast_parity_on_sphere():
    v, f, _ = uv_sphere(64, 128)
    vm = look_at_viewmat((2.2, 1.0, 1.0)).cuda()
    K = make_K(200.0, 200.0, 128.0, 120.0).cuda()
    v, f = v.cuda(), f.cuda()
    nat = rasterize(v, f, vm, K, 256, 240, backend="native")
    nvd = rasterize(v, f, vm, K, 256, 240, backend="nvdiffrast")
    assert rasterize(v, f, vm, K, 256, 240).tri_id.equal(nvd.tri_id)  # auto picks nvdiffrast
    # nvdiffrast snaps vertices to its sub-pixel grid, so pixel centres within a hair of an edge
    # may go to the neighbour: allow a thin fraction of edge pixels
    agree = nat.tri_id == nvd.tri_id
    assert agree.float().mean() > 0.99
    assert torch.equal(nat.tri_id >= 0, nvd.tri_id >= 0) or (
        ((nat.tri_id >= 0) != (nvd.tri_id >= 0)).float().mean() < 0.005
    )
    torch.testing.assert_close(nat.bary[agree], nvd.bary[agree], rtol=0, atol=0)
    torch.testing.assert_close(nat.depth[agree], nvd.depth[agree], rtol=0, atol=0)


def test_nvdiffrast_plugin_folder_put_on_path(monkeypatch, tmp_path):
    # nvdiffrast under torch 2.11 builds its plugin, then cannot import it by name: the context
    # is asked for again with the build folder on sys.path (a stand-in nvdiffrast, no GPU needed)
    import sys
    import types

    import torch.utils.cpp_extension as ce

    import invrender.mesh.raster as raster

    plugin = "nvdiffrast_plugin_0_0_test"
    build = str(tmp_path / plugin)
    calls = []

    class Context:
        def __init__(self, device):
            calls.append(device)
            if build not in sys.path:
                raise ModuleNotFoundError(f"No module named '{plugin}'", name=plugin)

    fake = types.ModuleType("nvdiffrast.torch")
    fake.RasterizeCudaContext = Context
    monkeypatch.setitem(sys.modules, "nvdiffrast", types.ModuleType("nvdiffrast"))
    monkeypatch.setitem(sys.modules, "nvdiffrast.torch", fake)
    monkeypatch.setattr(ce, "_get_build_directory", lambda name, verbose: str(tmp_path / name))
    monkeypatch.setattr(sys, "path", list(sys.path))
    ctx = raster._nvdiffrast_context.__wrapped__(0)
    assert isinstance(ctx, Context) and len(calls) == 2 and build in sys.path

    # any other missing module is not ours to fix: it propagates
    class Broken:
        def __init__(self, device):
            raise ModuleNotFoundError("No module named 'somethingelse'", name="somethingelse")

    fake.RasterizeCudaContext = Broken
    with pytest.raises(ModuleNotFoundError, match="somethingelse"):
        raster._nvdiffrast_context.__wrapped__(0)

