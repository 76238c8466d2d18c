"""Pure-PyTorch reference of the Gaussian compositing op (the ``torch`` backend).

Same arguments and result as :func:`invrender.splat.composite.composite`; gradients come from
autograd. It is the ground truth of the native kernels' tests, so it favours plain tensor
algebra over speed, but it is chunked by tiles so that it still fits in memory at 50k Gaussians
and 512x512 pixels:

- a Gaussian takes part in a tile iff its radius bbox touches the tile, the same rule as the
  native binning (``tile_bounds``); Gaussians are taken front to back (stable sort by depth);
- per tile, all pair alphas are evaluated as a [K, P] matrix and the front-to-back recursion
  ``T_k = prod_{j<k} (1 - alpha_j)`` becomes a cumulative product; the 1/255 skip and the
  ``T <= 1e-4`` termination are applied by masking;
- each tile runs under activation checkpointing, so only one tile's [K, P] intermediates are
  alive at a time, in the backward pass too.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .native import tile_bounds

# Classic 3DGS / gsplat constants; the same values are in cuda/raster.h.
ALPHA_MAX = 0.99
ALPHA_MIN = 1.0 / 255.0
T_MIN = 1e-4


def _composite_tile(
    px: Tensor,  # [P] pixel centres x
    py: Tensor,  # [P] pixel centres y
    means2d: Tensor,  # [K, 2] front to back
    conics: Tensor,  # [K, 3]
    opacities: Tensor,  # [K]
    features: Tensor,  # [K, C]
    depths: Tensor,  # [K]
) -> tuple[Tensor, Tensor, Tensor]:
    dx = px[None, :] - means2d[:, :1]  # [K, P]
    dy = py[None, :] - means2d[:, 1:]  # [K, P]
    a, b, c = conics[:, 0:1], conics[:, 1:2], conics[:, 2:3]
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy  # [K, P]
    # pairs with sigma < 0 are skipped; clamping keeps exp finite (no inf * 0 in the backward)
    alpha = torch.clamp(opacities[:, None] * torch.exp(-sigma.clamp_min(0.0)), max=ALPHA_MAX)
    with torch.no_grad():
        valid = (sigma >= 0) & (alpha >= ALPHA_MIN)  # [K, P]
        # transmittance after each pair if nothing stopped: monotone, so the first pair that
        # would bring it to <= T_MIN and every later one are exactly the excluded ones
        t_after = torch.cumprod(1.0 - torch.where(valid, alpha, torch.zeros_like(alpha)), dim=0)
        included = valid & (t_after > T_MIN)
    alpha = torch.where(included, alpha, torch.zeros_like(alpha))  # [K, P]
    trans = torch.cumprod(1.0 - alpha, dim=0)  # [K, P] transmittance after k
    trans_front = torch.cat([torch.ones_like(trans[:1]), trans[:-1]], dim=0)  # [K, P] before k
    weights = alpha * trans_front  # [K, P]
    feat = weights.T @ features  # [P, C]
    depth = weights.T @ depths[:, None]  # [P, 1]
    final_alpha = 1.0 - trans[-1][:, None]  # [P, 1]
    return feat, depth, final_alpha


def composite(
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
    """Reference compositing; returns (features [H, W, C], depth [H, W, 1], alpha [H, W, 1])."""
    dev, dt = means2d.device, means2d.dtype
    C = features.shape[1]
    tiles_x, tiles_y = -(-width // tile_size), -(-height // tile_size)
    x0, x1, y0, y1 = tile_bounds(means2d, radii, tiles_x, tiles_y, tile_size)  # [N] each
    order = torch.argsort(depths.detach(), stable=True)  # [N] front to back
    order = order[radii[order] > 0]
    x0, x1, y0, y1 = x0[order], x1[order], y0[order], y1[order]

    feats, deps, alphas, pixel_ids = [], [], [], []
    for ty in range(tiles_y):
        rows = torch.arange(ty * tile_size, min((ty + 1) * tile_size, height), device=dev)
        in_row = (y0 <= ty) & (ty < y1)
        for tx in range(tiles_x):
            cols = torch.arange(tx * tile_size, min((tx + 1) * tile_size, width), device=dev)
            rr, cc = torch.meshgrid(rows, cols, indexing="ij")
            pixel_ids.append((rr * width + cc).reshape(-1))
            sel = order[in_row & (x0 <= tx) & (tx < x1)]  # [K] front to back
            P = rr.numel()
            if sel.numel() == 0:
                feats.append(means2d.new_zeros(P, C))
                deps.append(means2d.new_zeros(P, 1))
                alphas.append(means2d.new_zeros(P, 1))
                continue
            px = cc.reshape(-1).to(dt) + 0.5
            py = rr.reshape(-1).to(dt) + 0.5
            args = (px, py, means2d[sel], conics[sel], opacities[sel], features[sel], depths[sel])
            if torch.is_grad_enabled() and any(t.requires_grad for t in args):
                f, d, a = checkpoint(_composite_tile, *args, use_reentrant=False)
            else:
                f, d, a = _composite_tile(*args)
            feats.append(f)
            deps.append(d)
            alphas.append(a)

    if not pixel_ids:  # zero-sized image
        z = means2d.new_zeros(height, width, 1)
        return means2d.new_zeros(height, width, C), z, z.clone()
    # tiles were emitted in tile order; put pixels back in row-major order
    inv = torch.empty(height * width, dtype=torch.long, device=dev)
    pid = torch.cat(pixel_ids)
    inv[pid] = torch.arange(pid.numel(), device=dev)
    feat_img = torch.cat(feats)[inv].reshape(height, width, C)
    depth_img = torch.cat(deps)[inv].reshape(height, width, 1)
    alpha_img = torch.cat(alphas)[inv].reshape(height, width, 1)
    if not feat_img.requires_grad and torch.is_grad_enabled():
        # nothing reached a pixel: still hand back outputs attached to the inputs, so that
        # autograd.grad yields zero gradients (as the native op does) instead of failing
        anchor = sum(t.sum() * 0 for t in (means2d, conics, opacities, features, depths)
                     if t.requires_grad)
        if isinstance(anchor, Tensor):
            feat_img, depth_img, alpha_img = (x + anchor for x in (feat_img, depth_img, alpha_img))
    return feat_img, depth_img, alpha_img
