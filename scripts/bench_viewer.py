"""Time the viewer's refreshes on a trained run: what one interaction costs at a given resolution.

    python scripts/bench_viewer.py                     # runs/toybox, 256², 10 repeats, 2 threads
    python scripts/bench_viewer.py --run RUN --resolution 512 --repeats 20

Each case times :func:`invrender.viewer.render.render_frame` right after one control changed, the
median over the repeats (every repeat really changes the input, so no cache hides the work):

- ``rotation``: the environment map's rotation (light rebuilt, mips prefiltered, G-buffer reshaded);
- ``intensity``: the exposure (only tone mapping: shading is linear in the light);
- ``camera (full)`` / ``camera (coarse)``: the camera orbits 2° (rasterize + shade), at the full
  resolution (the frame sent when the camera stops) and at the coarse one (the frames sent while
  it moves);
- ``buffer``: switching the displayed buffer (albedo, from the cached G-buffer).

Camera cases are timed under the learned light and under a dataset map (relit: two shadings, the
radiance residual needs the learned light's too). Target (acceptance): <= 0.3 s a refresh at 256²
on 2 CPU cores. Besides wall time (median, min) it prints the process CPU time (all threads): on a
machine shared with other jobs the wall time is inflated by waiting for a core, the CPU time is not.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "toybox")
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--envmap", default=None, help="dataset map for the relit cases (default: the first)")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from invrender.viewer.render import LEARNED, ViewerCamera, ViewerContext, ViewerState, render_frame

    ctx = ViewerContext.from_run_dir(args.run)
    names = [n for n in ctx.envmap_names() if n != LEARNED]
    env = args.envmap or (names[0] if names else LEARNED)
    cam0 = ctx.training_camera(0) if ctx.views is not None else None
    if cam0 is None:
        raise SystemExit("bench_viewer: the run's dataset (training cameras) was not found")
    cam0 = ViewerCamera(cam0.viewmat, cam0.fov_y, 1.0)

    def orbit(cam: ViewerCamera, deg: float) -> ViewerCamera:
        a = math.radians(deg)
        Rz = np.eye(4)
        Rz[:2, :2] = [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]
        return ViewerCamera(cam.viewmat @ Rz, cam.fov_y, cam.aspect)  # the world turns under the camera

    base = ViewerState(resolution=args.resolution)
    render_frame(ctx, base, cam0)  # warm-up: native kernels, mips matrices, map reads
    for n in names:
        render_frame(ctx, replace(base, envmap=n), cam0)

    def timed(fn) -> tuple[float, float]:
        t, c = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - t, time.process_time() - c

    results: list[tuple[str, float, float, float, str]] = []

    def case(label: str, make_call, note: str = "") -> None:
        ts = [timed(make_call(k)) for k in range(args.repeats)]
        wall = [t for t, _ in ts]
        results.append((label, statistics.median(wall), min(wall), statistics.median(c for _, c in ts), note))

    relit = replace(base, envmap=env)
    render_frame(ctx, relit, cam0)
    case("rotation", lambda k: lambda: render_frame(ctx, replace(relit, rotation_deg=7.0 * (k + 1)), cam0),
         f"map {env}: light rebuilt + reshade")
    case("intensity", lambda k: lambda: render_frame(ctx, replace(relit, rotation_deg=7.0 * args.repeats,
                                                                  intensity=1.0 + 0.1 * (k + 1)), cam0),
         "tone mapping only")
    for label, st in (("learned light", base), (f"map {env}", relit)):
        case(f"camera (full) {label}", lambda k, st=st: lambda: render_frame(ctx, st, orbit(cam0, 2.0 * (k + 1))),
             "rasterize + shade")
        case(f"camera (coarse) {label}",
             lambda k, st=st: lambda: render_frame(ctx, st, orbit(cam0, -2.0 * (k + 1)), coarse=True),
             f"{round(args.resolution * base.coarse_scale)}² while moving")
    render_frame(ctx, base, cam0)
    case("buffer", lambda k: lambda: render_frame(ctx, replace(base, buffer=("albedo", "normal")[k % 2]), cam0),
         "from the cached G-buffer")

    n = ctx.run.params["means"].shape[0]
    print(f"viewer refresh, {args.run} ({n} Gaussians), {args.resolution}² full, torch threads {args.threads}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}, median of {args.repeats}:")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"  {'case':34s} {'median':>9s} {'min':>9s} {'cpu':>9s}   (load average {load:.1f} at the end)")
    for label, t, tmin, cpu, note in results:
        print(f"  {label:34s} {t:7.3f} s {tmin:7.3f} s {cpu:7.3f} s   {note}")
    worst = max(t for label, t, *_ in results if "coarse" not in label)
    print(f"slowest full refresh {worst:.3f} s wall (target <= 0.3 s); 'cpu' is process CPU time, all threads: "
          "wall time on a busy machine is inflated, cpu is not")
    return 0


if __name__ == "__main__":
    sys.exit(main())
