"""The ``gsplat`` compositing backend: gsplat 1.5's CUDA tile kernels on our projected inputs.

gsplat's ``rasterize_to_pixels`` is itself differentiable (its own autograd Function), so this
wrapper only adapts shapes: one image (leading batch dim 1), radii duplicated to gsplat 1.5's
per-axis ``[..., N, 2]``, depth appended as the last feature channel (composited with the same
weights, which is our expected depth), float32 compute. gsplat clamps alpha at 0.999 where our
kernels use 0.99, so results differ where ``opacity * exp(-sigma) > 0.99``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _import_gsplat():
    try:
        import gsplat  # noqa: F401
        from gsplat import isect_offset_encode, isect_tiles, rasterize_to_pixels
    except ImportError as exc:
        raise ImportError(
            "backend='gsplat' needs gsplat>=1.5 (CUDA): install it with `pip install invrender[gpu]`"
        ) from exc
    return isect_tiles, isect_offset_encode, rasterize_to_pixels


def composite_gsplat(
    means2d: Tensor,  # [N, 2]
    conics: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    features: Tensor,  # [N, C]
    depths: Tensor,  # [N]
    radii: Tensor,  # [N] int32
    width: int,
    height: int,
    tile_size: int = 16,
) -> tuple[Tensor, Tensor, Tensor]:
    """Same contract as :func:`invrender.splat.composite.composite` (CUDA tensors only)."""
    if not means2d.is_cuda:
        raise ValueError(f"backend='gsplat' needs CUDA tensors, got means2d on {means2d.device}")
    isect_tiles, isect_offset_encode, rasterize_to_pixels = _import_gsplat()
    dtype = means2d.dtype
    C = features.shape[1]
    tiles_x, tiles_y = -(-width // tile_size), -(-height // tile_size)
    m = means2d.float()[None]  # [1, N, 2]
    r = torch.stack([radii, radii], dim=-1).to(torch.int32)[None]  # [1, N, 2]
    d = depths.float()[None]  # [1, N]
    _, isect_ids, flatten_ids = isect_tiles(m, r, d.detach(), tile_size, tiles_x, tiles_y)
    isect_offsets = isect_offset_encode(isect_ids, 1, tiles_x, tiles_y)  # [1, tiles_y, tiles_x]
    colors = torch.cat([features.float(), depths.float()[:, None]], dim=-1)[None]  # [1, N, C+1]
    render, alpha = rasterize_to_pixels(
        m, conics.float()[None], colors, opacities.float()[None], width, height, tile_size,
        isect_offsets, flatten_ids,
    )  # [1, H, W, C+1], [1, H, W, 1]
    render = render[0].to(dtype)
    return render[..., :C], render[..., C:], alpha[0].to(dtype)
