"""End to end on CUDA: a short `invrender train` (all PRD stages, native CUDA kernels) and the mesh
stage on the embedded scene. Marked `gpu`: skipped where there is no CUDA device."""

import json
import subprocess
import sys

import pytest

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
