"""Relighting a trained run: its views rendered under a new environment map.

The map (equirectangular ``.hdr`` / ``.exr``, DESIGN.md convention: Z up, row 0 looks up) becomes
an :class:`~invrender.shading.light.EnvironmentLight` at the run's light resolution, optionally
rotated counter-clockwise about +Z (seen from above) and scaled; the run's materials, baked
visibility and blend do the rest (:func:`invrender.eval.render_run_view`). With PRD's blend the
part of each pixel that the progress map leaves to the radiance field is relit through its ratio
to the physically based colour under the learned light (what physics did not explain there,
shadows and inter-reflections, is kept as a multiplicative residual; see
:func:`invrender.distill.model.render_prd`); a radiance-only run (blend ``radiance``) does not
relight at all.

A per-channel ``albedo_scale`` (``invrender eval`` writes the aligned one to ``metrics.json`` as
``albedo_scale``) multiplies the albedo before shading, as in TensoIR's relighting protocol.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch

from invrender.shading.light import EnvironmentLight


def load_envmap_light(
    path: Path, resolution: int, rotation_deg: float = 0.0, intensity: float = 1.0
) -> EnvironmentLight:
    """An environment light (cube faces ``resolution``²) from an equirectangular HDR file, rotated
    counter-clockwise about +Z by ``rotation_deg`` and scaled by ``intensity``.

    Raises ``FileNotFoundError`` / ``ValueError`` naming the file when it is missing, not an HDR
    image, unreadable or holds non-finite values."""
    from invrender.shading.envmap import read_hdr  # noqa: PLC0415

    path = Path(path)
    if not math.isfinite(rotation_deg):
        raise ValueError(f"rotation must be a finite angle in degrees, got {rotation_deg}")
    if not (math.isfinite(intensity) and intensity >= 0):
        raise ValueError(f"intensity must be a finite number >= 0, got {intensity}")
    if path.is_dir():
        raise ValueError(f"environment map {path} is a folder, not a .hdr / .exr file")
    try:
        img = read_hdr(path)  # [H, W, 3] linear
    except (OSError, ImportError) as e:
        # read_hdr's messages already name the file; the CLI reports ValueError in one line
        raise ValueError(str(e)) from e
    if img.ndim != 3 or img.shape[0] < 2 or img.shape[1] < 2:
        raise ValueError(f"environment map {path} has shape {img.shape}, expected [H, W, 3] with H, W >= 2")
    if not np.isfinite(img).all():
        raise ValueError(f"environment map {path} holds non-finite values")
    img = np.maximum(img, 0.0)
    return EnvironmentLight.from_equirect(torch.from_numpy(img), resolution, rotation_deg, intensity)


def _check_albedo_scale(albedo_scale) -> torch.Tensor | None:
    if albedo_scale is None:
        return None
    s = torch.as_tensor(albedo_scale, dtype=torch.float32).reshape(-1)
    if s.numel() != 3 or not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
        raise ValueError(f"albedo scale must be three finite numbers >= 0 (R G B), got {list(albedo_scale)}")
    return s


@torch.no_grad()
def relight_split(
    run_dir: Path,
    envmap: Path,
    out_dir: Path,
    *,
    rotation_deg: float = 0.0,
    intensity: float = 1.0,
    split: str = "test",
    albedo_scale=None,
    backend: str = "auto",
    geometry: str = "gaussian",
    device: str | torch.device = "cpu",
) -> list[Path]:
    """``invrender relight``: one RGBA PNG (straight alpha) per view of ``split``, named after the
    view as ``invrender render`` names them, rendered under ``envmap``. Returns the written paths."""
    from invrender.eval import _load_split, _Mips, load_run, on_cpu, render_run_view, straight_rgba  # noqa: PLC0415
    from invrender.image_io import write_png  # noqa: PLC0415

    scale = _check_albedo_scale(albedo_scale)
    run = load_run(run_dir, device, geometry=geometry)
    # the map is checked before the (slower) dataset is read, so a typo fails at once
    light = load_envmap_light(envmap, run.light_resolution, rotation_deg, intensity)
    if run.blend == "radiance":
        print(f"note: run {run_dir} renders with blend 'radiance' (no physically based part): "
              "its relit images equal its radiance", file=sys.stderr)
    _, views = _load_split(run, split, load_gt=False)
    mips = _Mips()(light.resolution)
    out_dir = Path(out_dir)
    paths = []
    for i, name in enumerate(views.names):
        out = on_cpu(render_run_view(run, views, i, light, albedo_scale=scale, mips=mips, backend=backend))
        path = out_dir / f"{name}.png"
        write_png(path, straight_rgba(out.final, out.alpha).numpy())
        paths.append(path)
    return paths
