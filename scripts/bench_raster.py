"""Benchmark of the Gaussian compositing op (invrender.splat.composite) per backend.

Times forward and forward+backward (median of repeats after a warmup) over a sweep of scene
sizes, prints a table, optionally writes JSON, and puts the CPU ``native`` numbers next to a
roofline floor:

    floor_ms = FLOPs per Gaussian-pixel pair x (tile-pairs x tile_size^2) / peak FLOP/s

where tile-pairs is the number of (Gaussian, tile) entries of the binning, i.e. every pair the
tile lists could make the kernel evaluate. Peak FLOP/s is measured with a float32 torch.mm on
all threads. The FLOP counts follow cuda/raster_cpu.cpp (an FMA counts 2, a compare or select
1, exp 10):

- forward, per pair: offsets 2, sigma 9, clamp/negate 2, exp 10, opacity and min 2, tests 5,
  transmittance 3, selects and counters 6 = 39; plus the blend, 2 per channel and depth:
  ``FWD = 39 + 2 (C + 1)``
- backward, per pair: re-evaluation and transmittance recovery 37; dot product v_out . f and
  v_features, 4 per channel and depth; dL/dalpha and the sdot update 9; chain rule to the six
  2D parameters 31: ``BWD = 77 + 4 (C + 1)``

The floor is optimistic for dense scenes (every pair at peak, no memory traffic) but pessimistic
for the kernel's early exits (pixels that terminated and rows a Gaussian cannot reach are not
evaluated), so measured/floor can approach or drop below 1.

Usage:
    python scripts/bench_raster.py --quick
    python scripts/bench_raster.py --backends torch,native --json bench.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from invrender.splat.composite import composite  # noqa: E402


def flops_per_pair(channels: int) -> tuple[int, int]:
    """(forward, backward) FLOPs per evaluated Gaussian-pixel pair; see the module docstring."""
    return 39 + 2 * (channels + 1), 77 + 4 * (channels + 1)


def make_scene(n: int, width: int, height: int, channels: int, seed: int = 0,
               device: str = "cpu", dtype=torch.float32):
    """Random but plausible projected Gaussians: radii mostly 1-15 px with a few large ones,
    anisotropic and rotated, opacities spread over (0, 1), a margin of off-screen centres."""
    g = torch.Generator().manual_seed(seed)

    def u(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    margin = 0.05 * max(width, height)
    means2d = torch.stack([-margin + u(n) * (width + 2 * margin),
                           -margin + u(n) * (height + 2 * margin)], -1)  # [N, 2]
    # 3-sigma radius log-uniform in [1, 15] px; 2% are 3-8x larger
    sig = torch.exp(math.log(1 / 3) + u(n) * math.log(15.0)) * (1 + 0.7 * u(n))  # [N]
    sig = torch.where(u(n) < 0.02, sig * (3 + 5 * u(n)), sig)
    aniso = 0.3 + 0.7 * u(n)
    s1, s2 = sig, sig * aniso
    th = u(n) * math.pi
    cs, sn = torch.cos(th), torch.sin(th)
    cxx = cs * cs * s1 ** 2 + sn * sn * s2 ** 2
    cyy = sn * sn * s1 ** 2 + cs * cs * s2 ** 2
    cxy = cs * sn * (s1 ** 2 - s2 ** 2)
    det = cxx * cyy - cxy ** 2
    conics = torch.stack([cyy / det, -cxy / det, cxx / det], -1)  # [N, 3]
    radii = torch.ceil(3 * torch.sqrt(torch.maximum(cxx, cyy))).to(torch.int32)  # [N]
    opacities = 0.02 + 0.97 * u(n) ** 0.7  # [N]
    features = u(n, channels)  # [N, C]
    depths = 0.5 + 20 * u(n)  # [N]
    out = [t.to(device=device, dtype=dtype) for t in (means2d, conics, opacities, features, depths)]
    return (*out, radii.to(device))


def measure_peak_flops(repeats: int = 5, size: int = 2048) -> float:
    """float32 matmul FLOP/s on all torch threads (median)."""
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * size ** 3 / statistics.median(times)


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_case(backend, scene, width, height, warmup, repeats, device):
    inputs = [t.clone().requires_grad_(True) for t in scene[:5]]
    radii = scene[5]

    def fwd():
        with torch.no_grad():
            return composite(*inputs, radii, width, height, backend=backend)

    def fwdbwd():
        outs = composite(*inputs, radii, width, height, backend=backend)
        loss = sum((o * o).sum() for o in outs)
        return torch.autograd.grad(loss, inputs)

    res = {}
    for name, fn in (("fwd_ms", fwd), ("fwdbwd_ms", fwdbwd)):
        for _ in range(warmup):
            fn()
        _sync(device)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times.append((time.perf_counter() - t0) * 1e3)
        res[name] = statistics.median(times)
    return res


def count_tile_pairs(scene, width, height, tile_size=16) -> int:
    from invrender.splat.native import bin_tiles_torch

    means2d, _, _, _, depths, radii = scene
    _, flat_ids = bin_tiles_torch(means2d.cpu(), radii.cpu(), depths.cpu(), width, height, tile_size)
    return int(flat_ids.numel())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", default="torch,native", help="comma list of torch,native,gsplat")
    ap.add_argument("--quick", action="store_true", help="small subset (includes 50k/256^2/12ch)")
    ap.add_argument("--gaussians", default="10000,50000,200000")
    ap.add_argument("--sizes", default="128,256,512")
    ap.add_argument("--channels", default="3,12")
    ap.add_argument("--torch-all", action="store_true",
                    help="also time the torch backend on the largest cases (slow)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--torch-repeats", type=int, default=1,
                    help="repeats for the (slow, seconds per call) torch backend; no warmup")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="write {'cases': [...]} here")
    args = ap.parse_args(argv)

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if args.quick:
        cases = [(10000, 128, 3), (50000, 256, 12)]
    else:
        cases = [(n, s, c) for n in map(int, args.gaussians.split(","))
                 for s in map(int, args.sizes.split(",")) for c in map(int, args.channels.split(","))]
    peak = measure_peak_flops() if args.device == "cpu" else None
    if peak:
        print(f"peak float32 matmul: {peak / 1e9:.1f} GFLOP/s on {torch.get_num_threads()} threads")

    rows = []
    for n, size, ch in cases:
        scene = make_scene(n, size, size, ch, seed=args.seed, device=args.device)
        pairs = count_tile_pairs(scene, size, size)
        largest = n >= 200000 or size >= 512
        for be in backends:
            if be == "torch" and largest and not args.torch_all:
                continue
            warm, reps = (0, args.torch_repeats) if be == "torch" else (args.warmup, args.repeats)
            t = time_case(be, scene, size, size, warm, reps, args.device)
            row = dict(backend=be, device=args.device, n_gaussians=n, width=size, height=size,
                       channels=ch, tile_pairs=pairs, **t)
            if peak and be == "native":
                f_fwd, f_bwd = flops_per_pair(ch)
                evals = pairs * 16 * 16
                row["floor_fwd_ms"] = evals * f_fwd / peak * 1e3
                row["floor_ms"] = evals * (f_fwd + f_bwd) / peak * 1e3
                row["measured_over_floor"] = row["fwdbwd_ms"] / row["floor_ms"]
            rows.append(row)
            print(f"{be:7s} N={n:7d} {size}x{size} C={ch:2d} pairs={pairs:8d} "
                  f"fwd {t['fwd_ms']:9.1f} ms  fwd+bwd {t['fwdbwd_ms']:9.1f} ms", flush=True)

    print("\n| backend | N | size | C | fwd ms | fwd+bwd ms | speed-up vs torch | floor ms | measured/floor |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ref = [q for q in rows if q["backend"] == "torch" and (q["n_gaussians"], q["width"], q["channels"])
               == (r["n_gaussians"], r["width"], r["channels"])]
        if ref and r["backend"] != "torch":
            r["speedup_vs_torch"] = ref[0]["fwdbwd_ms"] / r["fwdbwd_ms"]
        sp = f"{r['speedup_vs_torch']:.1f}x" if "speedup_vs_torch" in r else "-"
        fl = f"{r['floor_ms']:.1f}" if "floor_ms" in r else "-"
        mf = f"{r['measured_over_floor']:.2f}" if "measured_over_floor" in r else "-"
        print(f"| {r['backend']} | {r['n_gaussians']} | {r['width']}x{r['height']} | {r['channels']} | "
              f"{r['fwd_ms']:.1f} | {r['fwdbwd_ms']:.1f} | {sp} | {fl} | {mf} |")
    if args.json:
        args.json.write_text(json.dumps({"peak_flops": peak, "cases": rows}, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
