"""The BRDF half of the split-sum approximation (Karis 2013): for a view at cos theta_v = n.v and
perceptual roughness r, the directional albedo of the specular lobe splits into a scale and a bias
of F0,

    integral f_spec(l, v) (n.l) dl = F0 * A(n.v, r) + B(n.v, r),

with A = integral D V (n.l) (1 - (1 - v.h)^5) dl and B = integral D V (n.l) (1 - v.h)^5 dl for the
project's GGX / Smith height-correlated / Schlick BRDF (:mod:`invrender.shading.brdf`). The table is
computed here by GGX importance sampling with a Hammersley set (no downloaded file), once per
resolution, and cached atomically under ``$INVRENDER_CACHE`` (default ``~/.cache/invrender``).
"""

from __future__ import annotations

import functools
import io
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from invrender.shading.brdf import ggx_alpha, smith_visibility

LUT_VERSION = 1  # bump when the BRDF or the integrator changes, so stale caches are not reused


def hammersley(n: int, dtype=torch.float64) -> Tensor:
    """The 2D Hammersley point set ``[n, 2]`` in [0, 1)^2 (i / n, radical inverse of i in base 2)."""
    i = torch.arange(n, dtype=torch.int64)
    bits = torch.zeros(n, dtype=dtype)
    scale = 0.5
    k = i.clone()
    while bool((k > 0).any()):
        bits += (k & 1).to(dtype) * scale
        k = k >> 1
        scale *= 0.5
    return torch.stack([(i.to(dtype) + 0.5) / n, bits], -1)


def compute_brdf_lut(resolution: int = 128, samples: int = 512) -> Tensor:
    """``[R, R, 2]`` table of (A, B): rows index roughness, columns n.v, both at texel centres
    ((i + 0.5) / R). Each texel is a GGX-importance-sampled estimate with ``samples`` samples."""
    dt = torch.float64
    c = (torch.arange(resolution, dtype=dt) + 0.5) / resolution
    rough, nv = torch.meshgrid(c, c, indexing="ij")  # [R, R]
    alpha = ggx_alpha(rough)[..., None]  # [R, R, 1]
    nv = nv[..., None]
    v = torch.stack([torch.sqrt(1 - nv * nv), torch.zeros_like(nv), nv], -1)  # [R, R, 1, 3]
    xi = hammersley(samples, dt)  # [S, 2]
    # half vectors distributed as D(h) (n.h): cos^2 theta_h = (1 - xi) / (1 + (a^2 - 1) xi)
    a2 = alpha * alpha
    cos_h = torch.sqrt((1 - xi[:, 0]) / (1 + (a2 - 1) * xi[:, 0]))  # [R, R, S]
    sin_h = torch.sqrt((1 - cos_h * cos_h).clamp(min=0))
    phi = 2 * math.pi * xi[:, 1]
    h = torch.stack([sin_h * torch.cos(phi), sin_h * torch.sin(phi), cos_h], -1)  # [R, R, S, 3]
    v_dot_h = (v * h).sum(-1)  # [R, R, S]
    l_z = 2 * v_dot_h * cos_h - nv  # n.l of l = reflect(-v, h)
    ok = (l_z > 0) & (v_dot_h > 0)
    # estimator of integral D V (n.l) g dl with pdf(l) = D (n.h) / (4 v.h):  V (n.l) 4 (v.h) / (n.h) g
    w = smith_visibility(nv, l_z, alpha) * l_z * 4 * v_dot_h / cos_h.clamp(min=1e-12)
    w = torch.where(ok, w, torch.zeros_like(w))
    fc = (1 - v_dot_h.clamp(0, 1)) ** 5
    A = (w * (1 - fc)).mean(-1)
    B = (w * fc).mean(-1)
    return torch.stack([A, B], -1).float()


def cache_dir() -> Path:
    """Where precomputed shading tables are kept: ``$INVRENDER_CACHE``, else ``~/.cache/invrender``."""
    return Path(os.environ.get("INVRENDER_CACHE", Path.home() / ".cache" / "invrender"))


def _cache_path(resolution: int, samples: int) -> Path:
    return cache_dir() / f"brdf_lut_v{LUT_VERSION}_{resolution}_{samples}.pt"


@functools.lru_cache(maxsize=4)
def brdf_lut(resolution: int = 128, samples: int = 512) -> Tensor:
    """The cached table of :func:`compute_brdf_lut` (computed on first use, a few seconds on 2 cores)."""
    from invrender.checkpoint import atomic_write_bytes  # noqa: PLC0415

    path = _cache_path(resolution, samples)
    if path.is_file():
        try:
            lut = torch.load(path, map_location="cpu", weights_only=True)
            if lut.shape == (resolution, resolution, 2):
                return lut
        except Exception:  # a truncated or foreign file: recompute below
            pass
    lut = compute_brdf_lut(resolution, samples)
    buf = io.BytesIO()
    torch.save(lut, buf)
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError:  # a read-only cache is not an error: the table is just recomputed next time
        pass
    return lut


def specular_albedo(n_dot_v: Tensor, roughness: Tensor, f0: Tensor, lut: Tensor | None = None) -> Tensor:
    """F0 A + B looked up bilinearly at (n.v, roughness) ``[...]`` -> ``[..., C]`` for F0 ``[..., C]``."""
    lut = brdf_lut() if lut is None else lut
    shape = n_dot_v.shape
    x = n_dot_v.reshape(-1).clamp(0, 1) * 2 - 1
    y = roughness.reshape(-1).clamp(0, 1) * 2 - 1
    grid = torch.stack([x, y], -1)[None, None].to(lut.dtype)
    ab = F.grid_sample(lut.permute(2, 0, 1)[None].to(grid.device), grid, mode="bilinear", padding_mode="border",
                       align_corners=False)[0, :, 0].T.reshape(shape + (2,)).to(f0.dtype)
    return f0 * ab[..., :1] + ab[..., 1:]
