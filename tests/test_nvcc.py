"""Every CUDA source in cuda/ compiles standalone with nvcc (no torch headers in .cu files)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CUDA_DIR = Path(__file__).resolve().parents[1] / "cuda"
SOURCES = sorted(CUDA_DIR.glob("*.cu"))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("source", SOURCES, ids=[s.name for s in SOURCES])
def test_nvcc_compiles(source, tmp_path):
    res = subprocess.run(
        ["nvcc", "-c", str(source), "-I", str(CUDA_DIR), "-o", str(tmp_path / (source.stem + ".o"))],
        capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stderr[-4000:]


def test_there_is_a_cuda_source():
    assert SOURCES, "cuda/ holds no .cu file"
