"""GPU benchmark helper of scripts/gpu_check.sh: ms per training-style iteration per backend.

``splat``: one training-style render of a Gaussian scene, as ``invrender train`` stage 1 does it
per step: projection + SH colour (native kernels) -> compositing (the backend under test) ->
white background -> L1 loss against a fixed target image -> backward to every parameter.
The scene is ``--gaussians`` random Gaussians on a shell of radius 1 (the surface of an object
in the +-1.5 box of NeRF-synthetic / TensoIR), sized like a trained scene (3-sigma footprint of
a few pixels, i.e. about the surface spacing), SH degree 3, seen from 4 units away by an
``--size``^2 camera with the NeRF-synthetic field of view (0.69 rad). The optimizer step and the
densification bookkeeping are not timed (they are the same for every backend).

``mesh``: one differentiable frame of the mesh rasterizer (``invrender.mesh.raster``): visibility
(the backend under test: ``native`` kernel or ``nvdiffrast``) -> barycentrics and depth ->
interpolated normals -> a scalar loss -> backward to the vertices, on a UV sphere of about
``--faces`` triangles filling most of the frame.

Each case: ``--warmup`` untimed runs (the first one also JIT-builds the native extension), then
the median (and min) of ``--repeats`` timed runs, with ``torch.cuda.synchronize`` around every
timed run on CUDA. A backend that cannot run here (gsplat or nvdiffrast not installed, or on CPU)
is reported with status ``skipped`` and the reason; one that raises, ``failed`` with the error.
Prints one JSON object on stdout (``--json`` also writes it to a file); exit status 1 when a case
failed.

    python scripts/gpu_bench.py --device cuda                       # 300k Gaussians, 800^2
    python scripts/gpu_bench.py --device cpu --gaussians 2000 --size 64 --faces 2000  # plumbing
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from invrender.cameras import look_at_viewmat, make_K  # noqa: E402

FOV_X = 0.6911112070083618  # NeRF-synthetic / TensoIR camera_angle_x


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn, device: torch.device, warmup: int, repeats: int) -> dict:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(1e3 * (time.perf_counter() - t0))
    return {"median_ms": statistics.median(times), "min_ms": min(times), "repeats": repeats,
            "warmup": warmup}


def camera(size: int, device: torch.device):
    f = 0.5 * size / math.tan(0.5 * FOV_X)
    K = make_K(f, f, size / 2, size / 2).to(device)
    viewmat = look_at_viewmat((0.0, -3.8, 1.2)).float().to(device)
    return viewmat, K


# --------------------------------------------------------------------------------------------
# Gaussian splatting


def shell_gaussians(n: int, device: torch.device, seed: int = 0, sh_degree: int = 3) -> dict:
    """Unactivated Gaussian parameters (the layout of invrender.splat.gaussians) on a shell."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 3, generator=g)
    d = d / d.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    spacing = math.sqrt(4 * math.pi / n)  # mean distance between neighbours on the unit sphere
    means = d * (1.0 + 0.02 * torch.randn(n, 1, generator=g))
    scales = torch.log(spacing * (0.3 + 0.7 * torch.rand(n, 3, generator=g)))
    quats = torch.randn(n, 4, generator=g)
    opacities = torch.logit(0.05 + 0.9 * torch.rand(n, generator=g))
    k = (sh_degree + 1) ** 2
    sh0 = (torch.rand(n, 1, 3, generator=g) - 0.5) / 0.28209479177387814
    shN = 0.05 * torch.randn(n, k - 1, 3, generator=g)
    params = dict(means=means, scales=scales, quats=quats, opacities=opacities, sh0=sh0, shN=shN)
    return {name: t.float().contiguous().to(device).requires_grad_(True) for name, t in params.items()}


def backend_unavailable(kind: str, backend: str, device: torch.device) -> str | None:
    """Why ``backend`` cannot run here, or None."""
    if backend in ("gsplat", "nvdiffrast"):
        if device.type != "cuda":
            return f"{backend} needs CUDA (device is {device})"
        module = "gsplat" if backend == "gsplat" else "nvdiffrast.torch"
        try:
            __import__(module)
        except Exception as exc:  # ImportError, or a broken CUDA build
            return f"{backend} is not importable ({type(exc).__name__}: {exc}); pip install 'invrender[gpu]'"
    return None


def bench_splat(args, device: torch.device, backend: str) -> dict:
    from invrender.splat.gaussians import render_view

    params = shell_gaussians(args.gaussians, device, seed=args.seed)
    viewmat, K = camera(args.size, device)
    gen = torch.Generator().manual_seed(args.seed + 1)
    target = torch.rand(args.size, args.size, 3, generator=gen).to(device)
    bg = torch.ones(3, device=device)

    def forward():
        with torch.no_grad():
            render_view(params, viewmat, K, args.size, args.size, 3, bg, backend=backend)

    stats = {}

    def train_step():
        for p in params.values():
            p.grad = None
        out = render_view(params, viewmat, K, args.size, args.size, 3, bg, backend=backend)
        loss = (out.rgb - target).abs().mean()
        loss.backward()
        stats["loss"] = float(loss.detach())
        stats["visible"] = int((out.projected.radii > 0).sum())

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    fwd = time_fn(forward, device, args.warmup, args.repeats)
    it = time_fn(train_step, device, args.warmup, args.repeats)
    row = {"fwd_ms": fwd["median_ms"], "iter_ms": it["median_ms"], "iter_min_ms": it["min_ms"],
           "repeats": args.repeats, "warmup": args.warmup, **stats}
    if device.type == "cuda":
        row["peak_mem_mib"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return row


# --------------------------------------------------------------------------------------------
# mesh rasterizer


def bench_mesh(args, device: torch.device, backend: str) -> dict:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from bench_mesh_raster import uv_sphere
    finally:
        sys.path.pop(0)
    from invrender.mesh.raster import interpolate, rasterize

    n_lat = max(4, round(math.sqrt(args.faces / 4)))
    verts, faces, _, normals = uv_sphere(n_lat, 2 * n_lat)
    verts, faces, normals = verts.to(device), faces.to(device), normals.to(device)
    _, K = camera(args.size, device)
    viewmat = look_at_viewmat((1.6, -2.2, 0.8)).float().to(device)  # sphere fills most of the frame
    gen = torch.Generator().manual_seed(args.seed + 2)
    weights = torch.rand(args.size, args.size, 3, generator=gen).to(device)
    stats = {}

    def visibility():
        with torch.no_grad():
            r = rasterize(verts, faces, viewmat, K, args.size, args.size, backend=backend)
        stats["covered_pixels"] = int(r.pix.numel())

    def frame():
        v = verts.clone().requires_grad_(True)
        r = rasterize(v, faces, viewmat, K, args.size, args.size, backend=backend)
        nrm = interpolate(normals, faces, r)
        ((0.5 + 0.5 * nrm) * r.mask * weights).sum().backward()

    vis = time_fn(visibility, device, args.warmup, args.repeats)
    fr = time_fn(frame, device, args.warmup, args.repeats)
    return {"n_faces": int(faces.shape[0]), "raster_ms": vis["median_ms"], "frame_ms": fr["median_ms"],
            "frame_min_ms": fr["min_ms"], "repeats": args.repeats, "warmup": args.warmup, **stats}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda or cpu")
    ap.add_argument("--what", default="splat,mesh", help="comma list of splat,mesh")
    ap.add_argument("--backends", default="native,gsplat", help="splat backends (native,gsplat,torch)")
    ap.add_argument("--mesh-backends", default="native,nvdiffrast", help="mesh backends (native,nvdiffrast,torch)")
    ap.add_argument("--gaussians", type=int, default=300_000)
    ap.add_argument("--size", type=int, default=800, help="image width = height (pixels)")
    ap.add_argument("--faces", type=int, default=100_000, help="approximate triangle count (mesh)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"error": "--device cuda but torch.cuda.is_available() is False"}))
        return 2
    out = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "size": args.size,
        "cases": [],
    }
    failed = False
    plans = []
    what = [w.strip() for w in args.what.split(",") if w.strip()]
    if "splat" in what:
        plans += [("splat", b.strip()) for b in args.backends.split(",") if b.strip()]
    if "mesh" in what:
        plans += [("mesh", b.strip()) for b in args.mesh_backends.split(",") if b.strip()]
    for kind, backend in plans:
        case = {"kind": kind, "backend": backend, "width": args.size, "height": args.size}
        if kind == "splat":
            case["n_gaussians"] = args.gaussians
        why = backend_unavailable(kind, backend, device)
        if why:
            case.update(status="skipped", reason=why)
        else:
            try:
                case.update(bench_splat(args, device, backend) if kind == "splat" else bench_mesh(args, device, backend))
                case["status"] = "ok"
            except Exception as exc:
                failed = True
                case.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                            traceback=traceback.format_exc()[-2000:])
        out["cases"].append(case)
        summary = {k: case[k] for k in ("iter_ms", "fwd_ms", "frame_ms", "raster_ms", "reason", "error") if k in case}
        print(f"# {kind} {backend}: {case['status']} {summary}", file=sys.stderr, flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    text = json.dumps(out, indent=1)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
