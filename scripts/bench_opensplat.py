#!/usr/bin/env python3
"""Speed / quality comparison against the peer OpenSplat (CPU build).

The peer binary is built *outside* this repository (see the lead's notes; the
build recipe lives next to the peer checkout, e.g. /work/peer/BUILD.md).  This
script only drives it:

1. converts a NeRF-synthetic / TensoIR style scene (``transforms_train.json``
   with ``camera_angle_x`` and OpenGL camera-to-world ``transform_matrix``;
   RGBA PNG frames) into a nerfstudio project that OpenSplat can read
   (``transforms.json`` with PINHOLE intrinsics + RGB PNGs composited over a
   solid background + an init point PLY referenced by ``ply_file_path``);
2. writes ``--points`` seeded random points inside the object box (+-1) with
   random colours as that init PLY;
3. runs OpenSplat with densification / pruning / opacity reset disabled, at
   full resolution (no coarse-to-fine schedule), and measures wall time per
   training iteration from the timestamps of its per-step log lines (so the
   image loading and the final PLY write are excluded);
4. optionally (``--os-eval``) renders the test split with OpenSplat's own CPU
   forward pass through a tiny out-of-tree tool built next to the peer, and
   reports its test PSNR; the trained 3DGS PLY can also be read back with
   ``load_3dgs_ply`` (e.g. to render it with invrender's rasteriser).

``run_invrender`` runs the same experiment with invrender's trainer (same init,
densification off, same steps, same background, native backend) in the same
process run, so both figures come from the same machine state.

Background colour: OpenSplat renders empty pixels with a *fixed* colour (the
nerfstudio default ``OPENSPLAT_BG``; it is not optimised).  With random points
inside the box and densification off it cannot paint a white background where
no Gaussians are, so compositing the RGBA frames over white would make its PSNR
artificially bad.  ``--bg opensplat`` (default) composites train and test
frames over that very colour, which is what OpenSplat itself assumes; evaluate
renders of *both* methods over the same background.  ``--bg white`` is
available too.

Usage::

    python scripts/bench_opensplat.py --opensplat /work/peer/OpenSplat/build/opensplat \
        --os-eval /work/peer/os_eval/build/os_eval \
        --data data/toybox --points 20000 --steps 300 --out /tmp/bench_os

Outputs in ``--out``: ``ns_project/`` (train split + init PLY), ``ns_project_test/``,
``opensplat.ply`` (+ ``.log`` with per-line timestamps), ``opensplat_test_renders/``
and ``bench_opensplat.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

# OpenSplat's model.cpp: backgroundColor = {0.6130, 0.0101, 0.3984} (fixed).
OPENSPLAT_BG = (0.6130, 0.0101, 0.3984)
WHITE_BG = (1.0, 1.0, 1.0)


def background_rgb(name: str) -> tuple[float, float, float]:
    if name == "opensplat":
        return OPENSPLAT_BG
    if name == "white":
        return WHITE_BG
    if name == "black":
        return (0.0, 0.0, 0.0)
    parts = [float(v) for v in name.split(",")]
    if len(parts) != 3:
        raise ValueError(f"--bg must be opensplat|white|black|r,g,b, got {name!r}")
    return (parts[0], parts[1], parts[2])


# --------------------------------------------------------------------------- scene

def _frame_image_path(scene: Path, file_path: str) -> Path:
    p = scene / file_path
    if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".exr"):
        return p
    for ext in (".png", ".PNG", ".jpg"):
        cand = p.with_name(p.name + ext)
        if cand.exists():
            return cand
    return p.with_name(p.name + ".png")


def composite(rgba: np.ndarray, bg: tuple[float, float, float]) -> np.ndarray:
    """uint8 RGBA / RGB (H,W,C) -> float32 RGB in [0,1] over a solid colour."""
    img = rgba.astype(np.float32) / 255.0
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    if img.shape[-1] == 4:
        a = img[..., 3:4]
        img = img[..., :3] * a + np.asarray(bg, np.float32) * (1.0 - a)
    return img[..., :3]


def load_split(scene: str | Path, split: str = "test", bg=WHITE_BG) -> dict:
    """Load one split of a NeRF-synthetic scene.

    Returns dict(images=(N,H,W,3) float32 composited over ``bg``,
    c2w=(N,4,4) float32 OpenGL camera-to-world, fx, fy, cx, cy, width, height,
    names=list of frame file_path strings).
    """
    scene = Path(scene)
    meta = json.loads((scene / f"transforms_{split}.json").read_text())
    imgs, c2ws, names = [], [], []
    for fr in meta["frames"]:
        arr = np.asarray(Image.open(_frame_image_path(scene, fr["file_path"])))
        imgs.append(composite(arr, bg))
        c2ws.append(np.asarray(fr["transform_matrix"], np.float32))
        names.append(fr["file_path"])
    images = np.stack(imgs)
    h, w = images.shape[1:3]
    fx = 0.5 * w / math.tan(0.5 * float(meta["camera_angle_x"]))
    if "camera_angle_y" in meta:
        fy = 0.5 * h / math.tan(0.5 * float(meta["camera_angle_y"]))
    else:
        fy = fx
    return dict(images=images, c2w=np.stack(c2ws), fx=fx, fy=fy, cx=0.5 * w, cy=0.5 * h,
                width=w, height=h, names=names)


def write_points_ply(path: str | Path, xyz: np.ndarray, rgb: np.ndarray) -> None:
    """Binary PLY with float x,y,z and uchar red,green,blue (what OpenSplat reads)."""
    n = xyz.shape[0]
    rec = np.empty(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                             ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    rec["x"], rec["y"], rec["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    rec["red"], rec["green"], rec["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    header = ("ply\nformat binary_little_endian 1.0\n"
              f"element vertex {n}\n"
              "property float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\n"
              "end_header\n")
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(rec.tobytes())


def random_init_points(n: int, seed: int = 0, extent: float = 1.0):
    """Seeded uniform points in [-extent, extent]^3 with random uint8 colours."""
    rng = np.random.default_rng(seed)
    xyz = rng.uniform(-extent, extent, size=(n, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, size=(n, 3), dtype=np.uint8)
    return xyz, rgb


def write_nerfstudio_split(scene: str | Path, out_dir: str | Path, split: str, bg) -> Path:
    """Write one split as nerfstudio ``transforms.json`` + RGB PNGs (no points)."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    d = load_split(scene, split, bg)
    frames = []
    for i, (img, c2w, name) in enumerate(zip(d["images"], d["c2w"], d["names"])):
        rel = f"images/{split}_{i:04d}.png"
        Image.fromarray(np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)).save(out_dir / rel)
        frames.append({"file_path": rel, "transform_matrix": c2w.tolist(), "source": name})
    meta = {"camera_model": "PINHOLE", "w": int(d["width"]), "h": int(d["height"]),
            "fl_x": float(d["fx"]), "fl_y": float(d["fy"]), "cx": float(d["cx"]),
            "cy": float(d["cy"]), "frames": frames}
    (out_dir / "transforms.json").write_text(json.dumps(meta, indent=1))
    return out_dir / "transforms.json"


def convert_scene(scene: str | Path, out_dir: str | Path, n_points: int = 20000, seed: int = 0,
                  bg=OPENSPLAT_BG, extent: float = 1.0) -> dict:
    """NeRF-synthetic train split -> nerfstudio project for OpenSplat.

    Writes ``out_dir/transforms.json``, ``out_dir/images/*.png`` (RGB, composited
    over ``bg``) and ``out_dir/init_points.ply``.  Returns a dict with the paths
    and the init points (so the other trainer can start from the same ones).
    """
    scene, out_dir = Path(scene), Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    train = load_split(scene, "train", bg)
    frames = []
    for i, (img, c2w, name) in enumerate(zip(train["images"], train["c2w"], train["names"])):
        rel = f"images/train_{i:04d}.png"
        Image.fromarray(np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)).save(out_dir / rel)
        frames.append({"file_path": rel, "transform_matrix": c2w.tolist(), "source": name})
    write_nerfstudio_split(scene, out_dir.parent / (out_dir.name + "_test"), "test", bg)
    xyz, rgb = random_init_points(n_points, seed, extent)
    write_points_ply(out_dir / "init_points.ply", xyz, rgb)
    transforms = {
        "camera_model": "PINHOLE",
        "w": int(train["width"]), "h": int(train["height"]),
        "fl_x": float(train["fx"]), "fl_y": float(train["fy"]),
        "cx": float(train["cx"]), "cy": float(train["cy"]),
        "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0,
        "ply_file_path": "init_points.ply",
        "frames": frames,
    }
    (out_dir / "transforms.json").write_text(json.dumps(transforms, indent=1))
    return dict(project=str(out_dir), transforms=str(out_dir / "transforms.json"),
                test_transforms=str(out_dir.parent / (out_dir.name + "_test") / "transforms.json"),
                init_ply=str(out_dir / "init_points.ply"), init_xyz=xyz, init_rgb=rgb,
                n_train=len(frames), width=int(train["width"]), height=int(train["height"]),
                bg=tuple(bg))


# --------------------------------------------------------------------------- OpenSplat

_STEP_RE = re.compile(r"^Step (\d+): ([-+0-9.eEnaif]+)")


def run_opensplat(binary: str | Path, project: str | Path, steps: int, out_ply: str | Path,
                  sh_degree: int = 3, sh_degree_interval: int = 1000, ssim_weight: float = 0.2,
                  threads: int | None = None, skip: int = 5, extra_args=(), log_path=None,
                  echo: bool = False) -> dict:
    """Train OpenSplat on CPU for ``steps`` iterations, densification disabled.

    Flags used (OpenSplat 1.1.x):
      --cpu                         force the CPU path
      -n STEPS                      iterations
      --num-downscales 0            train at full resolution from step 1
      --warmup-length STEPS --refine-every STEPS
                                    refinement (split/dup/cull/alpha reset) only
                                    runs when step % refine_every == 0 and
                                    step > warmup_length -> never
      --keep-crs                    write the PLY in the input world frame
                                    (OpenSplat recentres/rescales cameras internally)
      -o OUT.ply                    output 3DGS PLY
    The init points come from ``ply_file_path`` in transforms.json.

    Seconds per iteration = (t[last step line] - t[step ``skip``]) / (last - skip),
    from wall-clock timestamps of the "Step k: loss" lines OpenSplat prints
    (flushed every step on CPU), so loading and saving are excluded.
    """
    binary, project, out_ply = str(binary), str(project), str(out_ply)
    steps = int(steps)
    skip = max(1, min(int(skip), steps - 1))
    cmd = [binary, project, "--cpu", "-n", str(steps), "-o", out_ply,
           "--num-downscales", "0",
           "--warmup-length", str(steps), "--refine-every", str(steps),
           "--sh-degree", str(sh_degree), "--sh-degree-interval", str(sh_degree_interval),
           "--ssim-weight", str(ssim_weight), "--keep-crs", *map(str, extra_args)]
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
        env["MKL_NUM_THREADS"] = str(threads)
    log_path = Path(log_path) if log_path else Path(out_ply).with_suffix(".log")
    step_t: dict[int, float] = {}
    losses: dict[int, float] = {}
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        log.write("# " + " ".join(cmd) + "\n")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=env, text=True, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.perf_counter()
            log.write(f"{now - t0:10.4f} {line}")
            if echo:
                sys.stdout.write(line)
            m = _STEP_RE.match(line)
            if m:
                k = int(m.group(1))
                step_t[k] = now
                try:
                    losses[k] = float(m.group(2))
                except ValueError:
                    pass
        rc = proc.wait()
    t_end = time.perf_counter()
    if rc != 0:
        raise RuntimeError(f"opensplat exited with {rc}; see {log_path}")
    if not step_t:
        raise RuntimeError(f"no 'Step k:' lines in the OpenSplat output; see {log_path}")
    last = max(step_t)
    first = skip if skip in step_t else min(step_t)
    if last <= first:
        raise RuntimeError("too few steps to time; raise --steps")
    sec_per_iter = (step_t[last] - step_t[first]) / (last - first)
    n_out = _ply_vertex_count(out_ply)
    return dict(sec_per_iter=sec_per_iter, out_ply=out_ply, steps=steps, timed_steps=last - first,
                n_gaussians=n_out, startup_sec=step_t[min(step_t)] - t0,
                total_sec=t_end - t0, final_loss=losses.get(last), log=str(log_path),
                threads=threads or os.cpu_count(), cmd=cmd)


def eval_opensplat(os_eval: str | Path, project: str | Path, ply: str | Path,
                   test_transforms: str | Path, out_dir: str | Path, step: int,
                   sh_degree: int = 3, sh_degree_interval: int = 1000) -> dict:
    """Test PSNR of an OpenSplat PLY rendered by OpenSplat's own CPU forward pass.

    ``os_eval`` is the small out-of-tree tool built next to the peer
    (/work/peer/os_eval, see BUILD.md): it re-creates OpenSplat's pose
    normalisation from the training project, loads the ``--keep-crs`` PLY,
    renders every frame of ``test_transforms`` (over OpenSplat's background)
    and prints per-view PSNR.  Renders go to ``out_dir``.
    """
    cmd = [str(os_eval), str(project), str(ply), str(test_transforms), str(out_dir),
           str(step), str(sh_degree), str(sh_degree_interval)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"os_eval failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    views = [float(l.split()[-1]) for l in res.stdout.splitlines() if l.startswith("view ")]
    mean = [float(l.split()[1]) for l in res.stdout.splitlines() if l.startswith("mean_psnr ")]
    return dict(test_psnr=mean[0] if mean else float("nan"), test_psnr_views=views,
                renders=str(out_dir))


# --------------------------------------------------------------------------- PLY I/O

_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
              "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
              "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}


def _read_ply_vertices(path: str | Path) -> np.ndarray:
    """Structured array of the 'vertex' element (binary LE/BE or ascii, no list props)."""
    with open(path, "rb") as f:
        if f.readline().strip() != b"ply":
            raise ValueError(f"{path}: not a PLY file")
        fmt, count, props, in_vertex = None, 0, [], False
        while True:
            line = f.readline()
            if not line:
                raise ValueError(f"{path}: truncated header")
            tok = line.decode("ascii", "replace").split()
            if not tok or tok[0] in ("comment", "obj_info"):
                continue
            if tok[0] == "format":
                fmt = tok[1]
            elif tok[0] == "element":
                in_vertex = tok[1] == "vertex"
                if in_vertex:
                    count = int(tok[2])
                elif not props:
                    raise ValueError(f"{path}: elements before 'vertex' are not supported")
            elif tok[0] == "property" and in_vertex:
                if tok[1] == "list":
                    raise ValueError(f"{path}: list properties in vertex are not supported")
                props.append((tok[2], _PLY_TYPES[tok[1]]))
            elif tok[0] == "end_header":
                break
        if fmt == "ascii":
            names = [p[0] for p in props]
            data = np.loadtxt(f, max_rows=count, ndmin=2)
            out = np.empty(count, dtype=[(n, t) for n, t in props])
            for i, n in enumerate(names):
                out[n] = data[:, i]
            return out
        order = "<" if fmt == "binary_little_endian" else ">"
        dt = np.dtype([(n, order + t) for n, t in props])
        buf = f.read(dt.itemsize * count)
        return np.frombuffer(buf, dtype=dt, count=count)


def _ply_vertex_count(path: str | Path) -> int:
    with open(path, "rb") as f:
        for raw in f:
            line = raw.decode("ascii", "replace").strip()
            if line.startswith("element vertex"):
                return int(line.split()[2])
            if line == "end_header":
                break
    return -1


def load_3dgs_ply(path: str | Path) -> dict:
    """Read a standard (Inria-layout) 3DGS PLY into numpy arrays.

    Returns dict with
      means   (N,3) float32
      normals (N,3) float32 (zeros in OpenSplat output)
      f_dc    (N,3) float32                SH degree-0 coefficient per RGB channel
      f_rest  (N,K,3) float32              K = (deg+1)^2 - 1; the file stores it
                                           channel-major (all R coefs, then G, then B)
      sh      (N,K+1,3) float32            f_dc and f_rest stacked
      opacity (N,) float32  pre-sigmoid logit
      scales  (N,3) float32 log scales
      quats   (N,4) float32 (w,x,y,z) as stored (OpenSplat does not normalise)
      sh_degree int
    """
    v = _read_ply_vertices(path)
    names = v.dtype.names or ()

    def cols(keys):
        return np.stack([np.asarray(v[k], np.float32) for k in keys], axis=-1)

    n = v.shape[0]
    rest_keys = sorted((k for k in names if k.startswith("f_rest_")), key=lambda k: int(k[7:]))
    if len(rest_keys) % 3:
        raise ValueError(f"{path}: f_rest count {len(rest_keys)} is not a multiple of 3")
    k = len(rest_keys) // 3
    if rest_keys:
        f_rest = cols(rest_keys).reshape(n, 3, k).transpose(0, 2, 1).copy()
    else:
        f_rest = np.zeros((n, 0, 3), np.float32)
    f_dc = cols(["f_dc_0", "f_dc_1", "f_dc_2"])
    deg = int(round(math.sqrt(k + 1))) - 1
    normals = cols(["nx", "ny", "nz"]) if "nx" in names else np.zeros((n, 3), np.float32)
    return dict(means=cols(["x", "y", "z"]), normals=normals, f_dc=f_dc, f_rest=f_rest,
                sh=np.concatenate([f_dc[:, None, :], f_rest], axis=1),
                opacity=np.asarray(v["opacity"], np.float32),
                scales=cols(["scale_0", "scale_1", "scale_2"]),
                quats=cols(["rot_0", "rot_1", "rot_2", "rot_3"]), sh_degree=deg)


def psnr(pred: np.ndarray, gt: np.ndarray) -> float:
    mse = float(np.mean((np.clip(pred, 0.0, 1.0) - gt) ** 2))
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)


# --------------------------------------------------------------------------- invrender

def run_invrender(scene: dict, init_xyz: np.ndarray, init_rgb: np.ndarray, steps: int,
                  args: argparse.Namespace) -> dict:
    """The same experiment with invrender's trainer: same init points and colours, same SH
    schedule and SSIM weight, densification off, frames composited over the same background,
    native backend. Returns sec/iter (warm-up steps excluded, as for OpenSplat) and test PSNR."""
    import torch

    from invrender.color import linear_to_srgb
    from invrender.metrics import psnr as psnr_t
    from invrender.splat.gaussians import init_gaussians, render_view
    from invrender.splat.strategy import DensifyStrategy
    from invrender.train import TrainConfig, Trainer

    cfg = TrainConfig(
        data=Path(args.data), out=Path(args.out) / "invrender_run", steps=steps, backend="native",
        sh_degree=args.sh_degree, sh_degree_interval=args.sh_degree_interval,
        ssim_lambda=args.ssim_weight, init="random", progress=False, eval_at_end=False,
        strategy=DensifyStrategy(refine_every=0, reset_every=0), checkpoint_every=10**9,
    )
    trainer = Trainer(cfg)
    if init_rgb.dtype == np.uint8:  # the PLY stores 8-bit colours
        init_rgb = init_rgb.astype(np.float32) / 255.0
    trainer.params = {
        k: torch.nn.Parameter(v.data)
        for k, v in init_gaussians(torch.from_numpy(init_xyz).float(), torch.from_numpy(init_rgb).float(),
                                   args.sh_degree).items()
    }
    trainer._make_optimizers()
    trainer.strategy_state = trainer.strategy.initial_state(init_xyz.shape[0])
    bg = torch.tensor(scene["bg"], dtype=torch.float32)
    trainer._background = lambda: bg  # the same fixed colour OpenSplat composites on
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - t0)
    timed = times[args.skip:]
    test = trainer.scene.test
    vals = []
    with torch.no_grad():
        for i in range(len(test.names)):
            out = render_view(trainer.params, test.viewmats[i], test.Ks[i], test.width, test.height,
                              min(steps // args.sh_degree_interval, args.sh_degree), bg, "native")
            a = test.alphas[i]
            gt = linear_to_srgb(test.images[i]) * a + bg * (1 - a)
            vals.append(psnr_t(out.rgb.clamp(0, 1), gt))
    return {"sec_per_iter": sum(timed) / len(timed), "timed_steps": len(timed),
            "n_gaussians": int(trainer.params["means"].shape[0]),
            "test_psnr": float(np.mean(vals)), "test_psnr_views": vals,
            "threads": torch.get_num_threads()}


# --------------------------------------------------------------------------- CLI

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--opensplat", required=True, help="path to the opensplat binary (CPU build)")
    ap.add_argument("--data", default="data/toybox", help="NeRF-synthetic layout scene")
    ap.add_argument("--points", type=int, default=20000, help="init Gaussians (random in the box)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", required=True, help="work/output directory (outside the repo is best)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--extent", type=float, default=1.0, help="half size of the init box")
    ap.add_argument("--bg", default="opensplat", help="opensplat | white | black | r,g,b")
    ap.add_argument("--sh-degree", type=int, default=3)
    ap.add_argument("--sh-degree-interval", type=int, default=1000)
    ap.add_argument("--ssim-weight", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for OpenSplat")
    ap.add_argument("--skip", type=int, default=5, help="warm-up steps left out of the timing")
    ap.add_argument("--echo", action="store_true", help="echo OpenSplat's output")
    ap.add_argument("--os-eval", default=None,
                    help="out-of-tree os_eval binary: test PSNR with OpenSplat's own renderer")
    args = ap.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bg = background_rgb(args.bg)
    scene = convert_scene(args.data, out / "ns_project", args.points, args.seed, bg, args.extent)
    print(f"converted {args.data}: {scene['n_train']} train views "
          f"{scene['width']}x{scene['height']}, {args.points} init points, bg={bg}")

    os_res = run_opensplat(args.opensplat, scene["project"], args.steps, out / "opensplat.ply",
                           sh_degree=args.sh_degree, sh_degree_interval=args.sh_degree_interval,
                           ssim_weight=args.ssim_weight, threads=args.threads, skip=args.skip,
                           echo=args.echo)
    g = load_3dgs_ply(os_res["out_ply"])
    os_res["n_gaussians_loaded"] = int(g["means"].shape[0])
    os_res["sh_degree_out"] = g["sh_degree"]
    print(f"OpenSplat: {os_res['sec_per_iter'] * 1e3:.1f} ms/iter over {os_res['timed_steps']} "
          f"steps, {os_res['n_gaussians']} Gaussians (init {args.points}), "
          f"start-up+step1 {os_res['startup_sec']:.1f}s, final loss {os_res['final_loss']}")

    if args.os_eval:
        ev = eval_opensplat(args.os_eval, scene["project"], os_res["out_ply"],
                            scene["test_transforms"], out / "opensplat_test_renders", args.steps,
                            args.sh_degree, args.sh_degree_interval)
        os_res.update(ev)
        print(f"OpenSplat test PSNR {ev['test_psnr']:.2f} dB over "
              f"{len(ev['test_psnr_views'])} test views (bg={bg})")

    ours = run_invrender(scene, scene["init_xyz"], scene["init_rgb"], args.steps, args)
    result = {"opensplat": {k: v for k, v in os_res.items()}, "invrender": ours,
              "points": args.points, "steps": args.steps, "bg": list(bg),
              "resolution": [scene["width"], scene["height"]]}
    print(f"invrender: {ours['sec_per_iter'] * 1e3:.1f} ms/iter over {ours['timed_steps']} steps, "
          f"{ours['n_gaussians']} Gaussians, test PSNR {ours['test_psnr']:.2f} dB")
    print(f"speed-up per iteration: {os_res['sec_per_iter'] / ours['sec_per_iter']:.2f}x")
    (out / "bench_opensplat.json").write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {out / 'bench_opensplat.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
