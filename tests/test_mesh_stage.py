"""The mesh stage: extraction (TSDF fusion, marching cubes, cleaning, decimation, UVs), the mesh
renderer behind the shared shading, texture filling, and the stage end to end through the CLI."""

import json
import math
import subprocess
import sys

import pytest
import torch

from invrender.cameras import pixel_rays
from invrender.mesh.extract import (
    RawMesh, boundary_edge_count, chamfer_distance, clean_mesh, decimate, face_normals, fuse_tsdf, marching_cubes,
    smooth_vertex_normals, unwrap_uv, vertex_normals,
)
from invrender.mesh.render import render_mesh
from invrender.mesh.raster import fill_texture
from invrender.mesh.textured import TexturedMesh
from invrender.shading.shadowing import ambient_visibility

from test_train import TINY_DISTILL


def _look_at(eye, target=(0.0, 0.0, 0.0)) -> torch.Tensor:
    """World-to-camera [4, 4] (OpenCV axes) of a camera at ``eye`` looking at ``target``, Z up."""
    eye, target = torch.tensor(eye, dtype=torch.float32), torch.tensor(target, dtype=torch.float32)
    fwd = torch.nn.functional.normalize(target - eye, dim=0)
    up = torch.tensor([0.0, 0.0, 1.0]) if abs(float(fwd[2])) < 0.99 else torch.tensor([0.0, 1.0, 0.0])
    right = torch.nn.functional.normalize(torch.linalg.cross(fwd, up), dim=0)
    down = torch.linalg.cross(fwd, right)
    R = torch.stack([right, down, fwd])  # rows: camera axes in world
    m = torch.eye(4)
    m[:3, :3] = R
    m[:3, 3] = -R @ eye
    return m


def _sphere_views(radius=0.6, n=12, size=48):
    """Exact depth / coverage of a sphere at the origin from ``n`` cameras around it."""
    K = torch.tensor([[size * 1.2, 0, size / 2], [0, size * 1.2, size / 2], [0, 0, 1.0]])
    viewmats, depths, alphas = [], [], []
    for k in range(n):
        az, el = 2 * math.pi * k / n, (0.6 if k % 2 else -0.4)
        eye = 3.0 * torch.tensor([math.cos(az) * math.cos(el), math.sin(az) * math.cos(el), math.sin(el)])
        vm = _look_at(eye.tolist())
        rays = pixel_rays(K, size, size)  # [H, W, 3] camera space, z = 1
        d = torch.nn.functional.normalize(rays, dim=-1) @ vm[:3, :3]  # world directions
        o = eye
        b = (d * o).sum(-1)
        disc = b * b - (o.dot(o) - radius**2)
        t = -b - disc.clamp(min=0).sqrt()
        hit = disc > 0
        z = t / rays.norm(dim=-1)  # distance along the ray -> camera z
        depths.append(torch.where(hit, z, torch.zeros_like(z)))
        alphas.append(hit.float())
        viewmats.append(vm)
    return torch.stack(depths), torch.stack(alphas), torch.stack(viewmats), K.expand(n, 3, 3).clone()


def test_tsdf_fusion_of_a_sphere_is_closed_round_and_outward():
    depths, alphas, viewmats, Ks = _sphere_views()
    lo, hi = torch.full((3,), -1.0), torch.full((3,), 1.0)
    tsdf, origin, voxel = fuse_tsdf(depths, alphas, viewmats, Ks, lo, hi, 48)
    mesh = clean_mesh(marching_cubes(tsdf, origin, voxel))
    assert boundary_edge_count(mesh.faces) == (0, 0)  # watertight 2-manifold
    r = mesh.vertices.norm(dim=-1)
    assert abs(float(r.mean()) - 0.6) < 0.5 * voxel and float((r - 0.6).abs().max()) < 1.5 * voxel
    fn = face_normals(mesh.vertices, mesh.faces)
    centres = mesh.vertices[mesh.faces].mean(1)
    assert bool(((fn * centres).sum(-1) > 0).all())  # counter-clockwise seen from outside
    vn = vertex_normals(mesh.vertices, mesh.faces)
    cos = (vn * torch.nn.functional.normalize(mesh.vertices, dim=-1)).sum(-1)
    assert float(cos.mean()) > 0.97 and float((cos > 0.9).float().mean()) > 0.9 and float(cos.min()) > 0

    small = decimate(mesh, mesh.faces.shape[0] // 4)
    small = clean_mesh(small)
    assert small.faces.shape[0] <= mesh.faces.shape[0] // 4
    assert boundary_edge_count(small.faces) == (0, 0)
    ch = chamfer_distance(small.vertices, small.faces, mesh.vertices, mesh.faces, n=5000)
    assert ch["chamfer"] < voxel

    v, f, uv, vmap = unwrap_uv(small, texture_size=128)
    assert f.shape == small.faces.shape and v.shape[0] == vmap.shape[0] >= small.vertices.shape[0]
    assert torch.equal(v, small.vertices[vmap])
    assert float(uv.min()) >= 0 and float(uv.max()) <= 1
    # the unwrapped faces are the same triangles, only re-indexed
    assert torch.equal(vmap[f], small.faces)


def test_clean_mesh_drops_floaters_and_degenerate_faces():
    depths, alphas, viewmats, Ks = _sphere_views(n=8)
    tsdf, origin, voxel = fuse_tsdf(depths, alphas, viewmats, Ks, torch.full((3,), -1.0), torch.full((3,), 1.0), 32)
    big = marching_cubes(tsdf, origin, voxel)
    tiny = RawMesh(torch.tensor([[2.0, 2, 2], [2.1, 2, 2], [2, 2.1, 2]]), torch.tensor([[0, 1, 2]]))
    n = big.vertices.shape[0]
    degenerate = torch.tensor([[0, 0, 1]])
    soup = RawMesh(torch.cat([big.vertices, tiny.vertices]),
                   torch.cat([big.faces, tiny.faces + n, degenerate]))
    clean = clean_mesh(soup, min_component_fraction=0.05)
    assert clean.faces.shape[0] == big.faces.shape[0]
    assert clean.vertices.shape[0] == n


def test_vertex_normals_are_unit_where_faces_cancel():
    # a fin: two triangles on the same edge pair with opposite windings cancel at their shared
    # vertices; an unused vertex has no face at all
    v = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [5, 5, 5]])
    f = torch.tensor([[0, 1, 2], [0, 2, 1]])
    n = vertex_normals(v, f)
    assert torch.allclose(n.norm(dim=-1), torch.ones(4))
    assert abs(float(n[0, 2])) == 1.0 and torch.equal(n[3], torch.tensor([0.0, 0.0, 1.0]))


def test_smoothing_vertex_normals_removes_a_staircase_and_keeps_a_plane_flat():
    # a 12 x 12 vertex grid in the plane z = 0 (two triangles per cell, wound to face +z)
    n = 12
    ii, jj = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    v = torch.stack([jj.float(), ii.float(), torch.zeros(n, n)], -1).reshape(-1, 3)
    a, b, c, d = (ii * n + jj)[:-1, :-1], (ii * n + jj + 1)[:-1, :-1], ((ii + 1) * n + jj)[:-1, :-1], ((ii + 1) * n + jj + 1)[:-1, :-1]
    f = torch.cat([torch.stack([a, b, d], -1).reshape(-1, 3), torch.stack([a, d, c], -1).reshape(-1, 3)])
    up = vertex_normals(v, f)
    assert torch.allclose(up[:, 2], torch.ones(n * n))
    assert torch.allclose(smooth_vertex_normals(up, f, 5), up)  # a plane stays flat
    # alternating tilts of 10 degrees, as a voxel staircase leaves them
    t = math.radians(10.0)
    sign = torch.where((ii + jj).reshape(-1) % 2 == 0, 1.0, -1.0)
    noisy = torch.stack([sign * math.sin(t), torch.zeros(n * n), torch.full((n * n,), math.cos(t))], -1)
    assert torch.equal(smooth_vertex_normals(noisy, f, 0), noisy)

    def err(x):
        return float(torch.rad2deg(torch.acos(x[:, 2].clamp(-1, 1))).mean())

    once, thrice = smooth_vertex_normals(noisy, f, 1), smooth_vertex_normals(noisy, f, 3)
    assert torch.allclose(thrice.norm(dim=-1), torch.ones(n * n))
    assert err(thrice) < err(once) < 0.6 * err(noisy)
    with pytest.raises(ValueError, match="iterations"):
        smooth_vertex_normals(noisy, f, -1)


def test_tsdf_without_surface_is_a_clear_error():
    with pytest.raises(ValueError, match="no surface"):
        marching_cubes(torch.ones(8, 8, 8), torch.zeros(3), 0.1)


def test_fill_texture_keeps_observed_texels_and_fills_holes():
    vals = torch.zeros(8, 8, 3)
    w = torch.zeros(8, 8, 1)
    vals[2, 3] = torch.tensor([2.0, 4.0, 6.0])  # two samples summed
    w[2, 3] = 2.0
    vals[6, 6] = torch.tensor([0.5, 0.5, 0.5])
    w[6, 6] = 1.0
    out = fill_texture(vals, w)
    assert torch.allclose(out[2, 3], torch.tensor([1.0, 2.0, 3.0]))
    assert torch.allclose(out[6, 6], torch.full((3,), 0.5))
    assert bool(torch.isfinite(out).all())
    # a hole next to one observation takes that observation's value (its 2x2 parent holds only it)
    assert torch.allclose(out[2, 2], out[2, 3])
    # far holes get a blend of the observations
    assert float(out[0, 7].min()) >= 0.5 - 1e-6 and float(out[0, 7].max()) <= 3.0 + 1e-6


def _quad_mesh(T=8):
    # a unit square in the z = 0 plane facing +z, UVs covering the texture
    v = torch.tensor([[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.5, 0.5, 0.0], [-0.5, 0.5, 0.0]])
    f = torch.tensor([[0, 1, 2], [0, 2, 3]])
    uv = torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    n = torch.tensor([[0.0, 0.0, 1.0]]).expand(4, 3).clone()
    return v, f, uv, n


def test_render_mesh_blends_like_the_gaussians_and_gets_gradients():
    from invrender.shading.light import EnvironmentLight
    from invrender.shading.prefilter import SpecularMips

    v, f, uv, n = _quad_mesh()
    T = 16
    tex = torch.cat([
        torch.full((T, T, 3), 0.6), torch.full((T, T, 1), 0.7), torch.zeros(T, T, 1),  # albedo, rough, metal
        torch.full((T, T, 1), 0.25), torch.full((T, T, 3), 0.3),  # progress, radiance
    ], dim=-1).requires_grad_(True)
    light = EnvironmentLight(8)
    mips = SpecularMips(8)
    vm = _look_at([0.0, 0.0, 2.0], [0.0, 0.0, 0.0])
    K = torch.tensor([[40.0, 0, 16], [0, 40.0, 16], [0, 0, 1]])
    verts = v.clone().requires_grad_(True)
    rad = render_mesh(verts, f, uv, n, tex, light, vm, K, 32, 32, blend="radiance")
    pbr = render_mesh(verts, f, uv, n, tex, light, vm, K, 32, 32, blend="pbr", mips=mips)
    prd = render_mesh(verts, f, uv, n, tex, light, vm, K, 32, 32, blend="prd", mips=mips)
    cov = rad.alpha[..., 0] > 0
    assert 0.3 < float(cov.float().mean()) < 0.9
    assert torch.allclose(rad.final[cov], torch.full_like(rad.final[cov], 0.3), atol=1e-5)
    # prd = 0.25 pbr + 0.75 radiance, per pixel, exactly as render_prd blends
    assert torch.allclose(prd.final[cov], 0.25 * pbr.final[cov] + 0.75 * 0.3, atol=1e-5)
    assert float(prd.gbuffer.normal.detach()[cov][:, 2].min()) > 0.999
    prd.final.sum().backward()
    assert tex.grad is not None and float(tex.grad.abs().sum()) > 0
    assert verts.grad is not None  # through the barycentrics (zero here: flat uniform textures)
    # a relit render differs from the training light's
    bright = EnvironmentLight(8, init_radiance=2.0)
    relit = render_mesh(v, f, uv, n, tex.detach(), light, vm, K, 32, 32, blend="prd", mips=mips, target_light=bright)
    assert float(relit.final.detach()[cov].mean()) > float(prd.final.detach()[cov].mean())


def test_textured_mesh_roundtrip_and_validation(tmp_path):
    v, f, uv, n = _quad_mesh()
    T = 4
    kw = dict(albedo=torch.rand(T, T, 3), roughness=torch.rand(T, T, 1), metallic=torch.rand(T, T, 1),
              progress=torch.rand(T, T, 1), radiance=torch.rand(T, T, 3))
    norm = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0]))
    norm[:3, 3] = torch.tensor([1.0, 0.0, -1.0])
    m = TexturedMesh(v, f, uv, n, **kw, normalization=norm, visibility=torch.rand(4, 1))
    back = TexturedMesh.load(m.save(tmp_path / "m.pt"))
    for k in ("vertices", "faces", "albedo", "visibility", "normalization"):
        assert torch.equal(getattr(back, k), getattr(m, k))
    assert torch.allclose(back.vertices_capture_frame(), (v - norm[:3, 3]) / 2.0)
    with pytest.raises(ValueError, match="uvs"):
        TexturedMesh(v, f, uv[:3], n, **kw, normalization=norm)
    TexturedMesh(v, f, uv, n, **kw, normalization=norm, visibility=torch.rand(4, 33))  # a shadowing record
    with pytest.raises(ValueError, match="visibility"):
        TexturedMesh(v, f, uv, n, **kw, normalization=norm, visibility=torch.rand(4, 2))
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="bad.pt"):
        TexturedMesh.load(tmp_path / "bad.pt")


def test_mesh_stage_end_to_end_cli(embedded_scene, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "invrender.cli"]
    r = subprocess.run(
        cmd + ["train", "--data", str(embedded_scene), "--out", str(run), "--steps", "40", "--downscale", "2",
               "--init-num-points", "3000", "--no-progress", "--no-eval-at-end", *TINY_DISTILL],
        capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stderr
    r = subprocess.run(cmd + ["eval", "--run", str(run), "--geometry", "mesh"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0 and "invrender mesh --run" in r.stderr and "Traceback" not in r.stderr

    tiny = ["--mesh.extract.resolution", "40", "--mesh.extract.max-faces", "3000", "--mesh.texture-size", "64",
            "--mesh.steps", "6", "--mesh.checkpoint-every", "3", "--mesh.no-progress"]
    r = subprocess.run(cmd + ["mesh", "--run", str(run), *tiny], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    mesh = TexturedMesh.load(run / "mesh" / "textured_mesh.pt")
    assert 0 < mesh.faces.shape[0] <= 6000 and mesh.texture_size == 64  # decimation stops before opening it
    _, weld = torch.unique(mesh.vertices, dim=0, return_inverse=True)  # undo the UV seams' vertex splits
    assert boundary_edge_count(weld[mesh.faces])[0] == 0  # watertight: no edge with a single face
    # the run's Gaussians carry a shadowing transfer record (degree 3), and so do the vertices
    assert mesh.visibility is not None and mesh.visibility.shape == (mesh.vertices.shape[0], 33)
    amb = ambient_visibility(mesh.visibility)
    assert 0 <= float(amb.min()) and float(amb.max()) <= 1
    m = json.loads((run / "metrics_mesh.json").read_text())
    assert m["geometry"] == "mesh" and m["n_faces"] == mesh.faces.shape[0]
    for k in ("nvs_psnr", "nvs_psnr_obj", "albedo_psnr_obj", "normal_mae_deg"):
        assert isinstance(m[k], float), k
    assert set(m["relight_psnr_obj"]) >= {"mean"}
    ch = m["mesh_stage"]["chamfer"]
    assert ch is not None and 0 < ch["chamfer"] < 2.0  # the dataset ships gt_mesh.ply (40 steps: a rough blob)
    assert (run / "renders_mesh" / "test" / "test_000.png").exists() and (run / "eval_mesh" / "metrics.md").exists()
    log = [json.loads(x) for x in (run / "mesh" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 6 and all(math.isfinite(x["loss"]) for x in log)

    # resume continues from the stage's checkpoint without extracting again, here with the
    # StableMaterial prior (a tiny random model of its shape) on the textures
    from invrender.prior.tiny import save_tiny_stablematerial

    tiny_prior = save_tiny_stablematerial(tmp_path / "prior")
    r = subprocess.run(cmd + ["mesh", "--run", str(run), "--resume", "--no-eval", *tiny[:-5],
                              "--mesh.steps", "8", "--mesh.no-progress", "--prior.path", str(tiny_prior),
                              "--prior.resolution", "32", "--prior.loss", "sds"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "resumed at step 6" in r.stdout
    log = [json.loads(x) for x in (run / "mesh" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 8 and math.isfinite(log[-1]["prior"])
    again = TexturedMesh.load(run / "mesh" / "textured_mesh.pt")
    assert torch.equal(again.faces, mesh.faces) and not torch.equal(again.albedo, mesh.albedo)

    # the exported GLB reads back to the same geometry and (8-bit) materials, and relights alike
    from invrender.export.check import glb_roundtrip_relight
    from invrender.export.gltf import read_glb

    r = subprocess.run(cmd + ["export", "--run", str(run), "--format", "glb", "--out", str(tmp_path / "m.glb")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    back = read_glb(tmp_path / "m.glb", again.normalization)
    assert torch.allclose(back.vertices, again.vertices, atol=1e-5) and torch.equal(back.faces, again.faces)
    assert float((back.roughness - again.roughness).abs().max()) <= 0.5 / 255 + 1e-6
    assert float((back.albedo - again.albedo).abs().max()) < 0.01  # sRGB 8-bit steps stay below 1 %
    # the PRD extension brings back the progress, radiance and the run's shadowing record
    assert float((back.progress - again.progress).abs().max()) <= 0.5 / 255 + 1e-6
    assert torch.allclose(back.visibility, again.visibility, atol=1e-5)
    res = glb_roundtrip_relight(run, max_views=2)
    assert res["views"] == 2 and math.isfinite(res["difference_db"]) and math.isfinite(res["viewer_difference_db"])
    assert set(res["trained"]) == set(res["envs"]) | {"mean"} == set(res["viewer"])
    # read back whole, the file relights as the trained mesh does, up to its 8-bit textures
    assert abs(res["difference_db"]) < 0.5, res

    # the relight CLI renders the mesh
    out = tmp_path / "relit"
    env = embedded_scene / "envmaps" / "sunset.hdr"
    r = subprocess.run(cmd + ["relight", "--run", str(run), "--envmap", str(env), "--out", str(out), "--geometry",
                              "mesh"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (out / "test_000.png").exists()


def test_vertex_values_baked_into_the_atlas_and_the_glb_occlusion(tmp_path):
    from invrender.export.gltf import read_glb, write_glb
    from invrender.mesh.render import bake_vertex_values

    v, f, uv, n = _quad_mesh()
    # the quad's UVs cover the whole atlas: a value linear in u comes back linear at texel centres
    vals = uv[:, :1].clone()  # [4, 1] = u
    tex = bake_vertex_values(uv, f, vals, 16)
    centres = (torch.arange(16, dtype=torch.float32) + 0.5) / 16
    assert torch.allclose(tex[..., 0], centres[None, :].expand(16, 16), atol=1e-5)

    # a mesh whose charts leave most of the atlas empty: the holes are filled, the chart kept
    small_uv = uv * 0.25 + 0.1
    tex = bake_vertex_values(small_uv, f, torch.full((4, 1), 0.3), 32)
    assert torch.allclose(tex, torch.full_like(tex, 0.3), atol=1e-6)

    # the GLB carries the per-vertex visibility as the ORM's R channel + occlusionTexture
    T = 16
    vis = torch.tensor([[0.2], [0.9], [0.9], [0.2]])
    mesh = TexturedMesh(v, f, uv, n, albedo=torch.full((T, T, 3), 0.5), roughness=torch.full((T, T, 1), 0.4),
                        metallic=torch.zeros(T, T, 1), progress=torch.ones(T, T, 1), radiance=torch.zeros(T, T, 3),
                        normalization=torch.eye(4), visibility=vis)
    back = read_glb(write_glb(tmp_path / "q.glb", mesh), prd=False)  # the occlusion texture, as viewers read it
    assert back.visibility is not None
    # read bilinearly at the vertex UVs (texel-centre clamped at the atlas border): within a texel's slope
    assert torch.allclose(back.visibility, vis, atol=0.7 / T + 1 / 255)
    # a shadowing transfer record (degree 1: T, U, fill) exports its light-independent part, AO + fill
    k_u = torch.tensor([[math.pi, 0.0, 1.0, 0.0]]) * 0.3  # any open-sky projection with U_0 != 0
    ao = vis * 0.8
    record = torch.cat([k_u.expand(4, 4) * ao, k_u.expand(4, 4), 0.25 * (1 - ao)], dim=1)  # [4, 9]
    mesh = TexturedMesh(v, f, uv, n, albedo=torch.full((T, T, 3), 0.5), roughness=torch.full((T, T, 1), 0.4),
                        metallic=torch.zeros(T, T, 1), progress=torch.ones(T, T, 1), radiance=torch.zeros(T, T, 3),
                        normalization=torch.eye(4), visibility=record)
    back = read_glb(write_glb(tmp_path / "r.glb", mesh), prd=False)
    expect = ao + 0.25 * (1 - ao)
    assert torch.allclose(back.visibility, expect, atol=0.7 / T + 1 / 255)
