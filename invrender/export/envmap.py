"""The run's learned environment light as an equirectangular HDR image (.hdr or .exr).

The map follows the project's convention (DESIGN.md, :mod:`invrender.shading.envmap`): Z up,
row 0 looking up, the centre column looking along +X, linear radiance. Like every export it is in
the capture's frame: when the reader's normalization rotates (nerfstudio's ``applied_transform``),
the capture-frame direction ``d`` shows the learned radiance along ``R d``; a uniform scale or a
translation does not change a distant light. For NeRF-synthetic / TensoIR runs the frames
coincide and the file equals ``light.to_equirect`` — the map ``invrender relight`` takes back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from invrender.export.common import Similarity

ENVMAP_SUFFIXES = (".hdr", ".exr")


def envmap_image(light, normalization, height: int = 256) -> torch.Tensor:
    """Linear equirectangular radiance ``[height, 2 height, 3]`` float32 in the capture frame."""
    from invrender.shading.envmap import direction_grid  # noqa: PLC0415

    if int(height) < 2:
        raise ValueError(f"envmap height must be at least 2, got {height}")
    height = int(height)
    sim = Similarity.from_matrix(normalization)
    with torch.no_grad():
        if not sim.has_rotation:
            return light.to_equirect(height, 2 * height).float()
        d = torch.from_numpy(direction_grid(height, 2 * height).astype(np.float64))  # [H, W, 3] capture frame
        d = d @ torch.from_numpy(sim.rotation).T  # R d: the same direction in the training frame
        return light.radiance(d.to(light.log_radiance.dtype)).float()


def write_envmap(path: Path, light, normalization, height: int = 256) -> Path:
    """Write the light as ``path`` (.hdr or .exr by its suffix), atomically."""
    from invrender.shading.envmap import write_hdr  # noqa: PLC0415

    path = Path(path)
    if path.suffix.lower() not in ENVMAP_SUFFIXES:
        raise ValueError(f"environment map must be written to a .hdr or .exr file, got {path}")
    return write_hdr(path, envmap_image(light, normalization, height))
