"""Benchmark of the CPU mesh rasterizer (invrender.mesh.raster) on ~100k-triangle meshes.

One differentiable frame, as the mesh stage trains it: visibility (native kernel) -> barycentrics
and depth (torch) -> interpolation of uv and normals -> mip-mapped texture lookup -> a scalar
loss -> backward to the vertex positions and the texture. Each stage is timed separately
(median of ``--repeats`` runs after a warmup), and so is the whole frame:

- ``visibility_ms``: the native ``mesh_visibility`` op alone (setup, binning, tiled z-buffer);
- ``raster_ms``: ``rasterize`` (camera transform, visibility, barycentrics and depth);
- ``interp_ms``: ``interpolate`` of uv [V, 2] and normals [V, 3];
- ``texture_ms``: ``texture_lookup`` of a 1024^2 RGB texture with mips and derived uv_da;
- ``backward_ms``: ``loss.backward()`` to vertices and texture;
- ``total_ms``: one whole frame, forward + backward, timed on its own (``total_min_ms``: the
  fastest of those runs).

The acceptance target is total < 1 s at 512^2 on 2 cores (visibility + interpolation + backward).
Scenes: a UV sphere filling most of the frame (``sphere``) and a soup of small random triangles
in the view frustum (``soup``, more overdraw, no coherence).

Usage:
    python scripts/bench_mesh_raster.py --json docs/bench/mesh_raster_cpu_<date>.json

On cores shared with other jobs, set OMP_WAIT_POLICY=PASSIVE: spinning OpenMP workers of
oversubscribed cores otherwise inflate every torch op several times over.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from invrender.cameras import look_at_viewmat, make_K  # noqa: E402
from invrender.mesh.raster import (  # noqa: E402
    _check_intrinsics, _pixel_ray_tables, interpolate, mesh_visibility_torch, rasterize,
    texture_lookup,
)
from invrender.splat.native import mesh_visibility_native  # noqa: E402


def uv_sphere(n_lat: int, n_lon: int):
    """Vertices [V, 3], faces [F, 3], uvs [V, 2], normals [V, 3] of a unit UV sphere."""
    theta = torch.linspace(0, math.pi, n_lat + 1, dtype=torch.float64)
    phi = torch.linspace(0, 2 * math.pi, n_lon + 1, dtype=torch.float64)
    t, p = torch.meshgrid(theta, phi, indexing="ij")
    v = torch.stack([t.sin() * p.cos(), t.sin() * p.sin(), t.cos()], -1)
    v[0], v[-1], v[:, -1] = torch.tensor([0.0, 0, 1]), torch.tensor([0.0, 0, -1]), v[:, 0]
    uv = torch.stack([p / (2 * math.pi), t / math.pi], -1).reshape(-1, 2)
    idx = torch.arange((n_lat + 1) * (n_lon + 1)).reshape(n_lat + 1, n_lon + 1)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    faces = torch.cat([torch.stack([a, c, d], -1)[:-1].reshape(-1, 3),
                       torch.stack([a, d, b], -1)[1:].reshape(-1, 3)])
    v = v.reshape(-1, 3).float()
    return v, faces, uv.float(), v.clone()


def soup(n: int, seed: int = 0):
    """n random triangles (~4 px across at 512^2) spread over the view of a unit sphere."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(n, 1, 3, generator=g)
    c = c / c.norm(dim=-1, keepdim=True) * torch.rand(n, 1, 1, generator=g) ** (1 / 3)
    v = (c + torch.randn(n, 3, 3, generator=g) * 0.008).reshape(-1, 3)
    faces = torch.arange(3 * n).reshape(n, 3)
    uv = torch.rand(3 * n, 2, generator=g)
    nrm = torch.nn.functional.normalize(torch.randn(3 * n, 3, generator=g), dim=-1)
    return v, faces, uv, nrm


def times_ms(fn, repeats: int) -> list[float]:
    fn()  # warmup (and, the first time, the JIT build)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    return times


def median_ms(fn, repeats: int) -> float:
    return statistics.median(times_ms(fn, repeats))


def bench_scene(name, verts, faces, uvs, normals, size, tex_size, repeats, with_torch_ref):
    K = make_K(550.0 * size / 512, 550.0 * size / 512, size / 2, size / 2)
    vm = look_at_viewmat((2.2, -1.2, 0.6))
    tex0 = torch.rand(tex_size, tex_size, 3, generator=torch.Generator().manual_seed(1))
    weights = torch.rand(size, size, 3, generator=torch.Generator().manual_seed(2))
    fx, fy, cx, cy = _check_intrinsics(K)
    ray_x, ray_y = _pixel_ray_tables(fx, fy, cx, cy, size, size, "cpu")
    v_cam = (verts.double() @ vm[:3, :3].double().T + vm[:3, 3].double()).contiguous()
    f32 = faces.int().contiguous()

    def visibility():
        return mesh_visibility_native(v_cam, f32, ray_x, ray_y, fx, fy, cx, cy, 0.01)

    state = {}

    def frame_parts():
        v = verts.clone().requires_grad_(True)
        tex = tex0.clone().requires_grad_(True)
        state.update(v=v, tex=tex)
        t0 = time.perf_counter()
        r = rasterize(v, faces, vm, K, size, size, backend="native")
        t1 = time.perf_counter()
        uv = interpolate(uvs, faces, r)
        nrm = interpolate(normals, faces, r)
        t2 = time.perf_counter()
        col = texture_lookup(tex, uv, tri_id=r.tri_id)
        t3 = time.perf_counter()
        loss = ((col * (0.5 + 0.5 * nrm[..., 2:3]) * r.mask) * weights).sum()
        loss.backward()
        t4 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2, t4 - t3, r

    def frame():
        v = verts.clone().requires_grad_(True)
        tex = tex0.clone().requires_grad_(True)
        r = rasterize(v, faces, vm, K, size, size, backend="native")
        uv = interpolate(uvs, faces, r)
        nrm = interpolate(normals, faces, r)
        col = texture_lookup(tex, uv, tri_id=r.tri_id)
        ((col * (0.5 + 0.5 * nrm[..., 2:3]) * r.mask) * weights).sum().backward()

    vis_ms = median_ms(visibility, repeats)
    frame_parts()
    parts = [frame_parts() for _ in range(repeats)]
    covered = int((parts[-1][4].tri_id >= 0).sum())
    raster_ms, interp_ms, tex_ms, bwd_ms = (1000 * statistics.median(p[i] for p in parts)
                                            for i in range(4))
    totals = times_ms(frame, repeats)
    case = {
        "scene": name, "n_faces": int(faces.shape[0]), "n_vertices": int(verts.shape[0]),
        "width": size, "height": size, "texture": tex_size, "covered_pixels": covered,
        "visibility_ms": vis_ms, "raster_ms": raster_ms, "interp_ms": interp_ms,
        "texture_ms": tex_ms, "backward_ms": bwd_ms,
        "total_ms": statistics.median(totals),
        # the least disturbed run: on a shared machine the median can include other jobs' load
        "total_min_ms": min(totals),
    }
    if with_torch_ref:
        case["visibility_torch_ms"] = median_ms(
            lambda: mesh_visibility_torch(v_cam, f32, ray_x, ray_y, fx, fy, cx, cy, 0.01), 1
        )
        assert torch.equal(visibility()[0], mesh_visibility_torch(
            v_cam, f32, ray_x, ray_y, fx, fy, cx, cy, 0.01)[0])
    return case


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--faces", type=int, default=100_000, help="approximate triangle count")
    ap.add_argument("--texture", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scenes", default="sphere,soup")
    ap.add_argument("--torch-ref", action="store_true", help="also time the torch reference visibility")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]

    cases = []
    for name in args.scenes.split(","):
        if name == "sphere":
            n_lat = max(4, round(math.sqrt(args.faces / 4)))
            mesh = uv_sphere(n_lat, 2 * n_lat)
        elif name == "soup":
            mesh = soup(args.faces)
        else:
            raise SystemExit(f"unknown scene {name!r}")
        case = bench_scene(name, *mesh, args.size, args.texture, args.repeats, args.torch_ref)
        cases.append(case)
        print(f"{name:7s} F={case['n_faces']:6d} {args.size}^2 covered={case['covered_pixels']:6d}  "
              f"visibility {case['visibility_ms']:6.1f} ms | rasterize {case['raster_ms']:6.1f} | "
              f"interp {case['interp_ms']:5.1f} | texture {case['texture_ms']:6.1f} | "
              f"backward {case['backward_ms']:6.1f} | total {case['total_ms']:6.1f} ms "
              f"(min {case['total_min_ms']:.1f})"
              + (f" | torch visibility {case['visibility_torch_ms']:.0f} ms" if args.torch_ref else ""))
    if args.json:
        out = {
            "threads": args.threads,
            "torch": torch.__version__,
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            # PASSIVE makes idle OpenMP threads sleep instead of spinning, which is what keeps
            # timings sane when other jobs share the cores
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
            # 1-minute load averages around the run: above the core count, other jobs competed
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg()[0],
            "note": "median of repeats after a warmup (total_min_ms: fastest run); "
                    "the cores were shared with other jobs",
            "cases": cases,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
