"""End to end on CUDA: a short `invrender train` (all PRD stages, native CUDA kernels) and the mesh
stage on the embedded scene. Marked `gpu`: skipped where there is no CUDA device."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from test_train import TINY_DISTILL


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["native", "auto"])
def test_short_train_on_cuda(embedded_scene, tmp_path, backend):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "invrender.cli"]
    r = subprocess.run(
        cmd + ["train", "--data", str(embedded_scene), "--out", str(run), "--device", "cuda", "--backend", backend,
               "--steps", "300", "--no-progress", *TINY_DISTILL, "--mesh.enable", "--mesh.steps", "20",
               "--mesh.texture-size", "128", "--mesh.no-progress"],
        capture_output=True, text=True, timeout=900,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    m = json.loads((run / "metrics.json").read_text())
    assert m["nvs_psnr"] > 20  # 300 steps on the GPU already beat the blank image by far
    mesh = json.loads((run / "metrics_mesh.json").read_text())
    assert mesh["geometry"] == "mesh" and mesh["n_faces"] > 0
    if backend != "native":
        return
    # the training's own evaluation ran on the GPU; the same run measured on the CPU must agree
    # (no relighting here: the relit images are compared below, one map, which is cheaper)
    cpu_json = tmp_path / "metrics_cpu.json"
    r = subprocess.run(cmd + ["eval", "--run", str(run), "--out", str(cpu_json), "--device", "cpu", "--backend", "native",
                              "--no-relight", "--figures", str(tmp_path / "eval_cpu")],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    c = json.loads(cpu_json.read_text())
    for key in ("nvs_psnr", "nvs_psnr_obj", "albedo_psnr_obj"):
        assert abs(m[key] - c[key]) < 0.05, (key, m[key], c[key])
    assert abs(m["normal_mae_deg"] - c["normal_mae_deg"]) < 0.1
    # relighting from the command line on the GPU and on the CPU: the same PNGs up to rounding
    env = sorted((embedded_scene / "envmaps").glob("*.hdr"))[0]
    relit = {}
    for device in ("cuda", "cpu"):
        r = subprocess.run(cmd + ["relight", "--run", str(run), "--envmap", str(env), "--out", str(tmp_path / device),
                                  "--device", device, "--backend", "native"], capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-4000:]
        relit[device] = sorted((tmp_path / device).glob("*.png"))
    assert len(relit["cuda"]) == m["n_views"] == len(relit["cpu"])
    for a, b in zip(relit["cuda"], relit["cpu"]):
        diff = np.abs(np.asarray(Image.open(a), dtype=np.float64) - np.asarray(Image.open(b), dtype=np.float64))
        assert diff.mean() < 1.0, (a.name, diff.mean())  # in 8-bit steps
