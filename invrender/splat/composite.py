"""Alpha compositing of projected 2D Gaussians into images (the Gaussian "rasterizer").

Implements the front-to-back blending of 3DGS (Kerbl et al. 2023, Eq. 3) with the classic
gsplat constants: per pixel, Gaussians sorted by depth,

    sigma = 0.5 (a dx^2 + c dy^2) + b dx dy,   alpha = min(0.99, o exp(-sigma)),
    C = sum_i f_i alpha_i T_i,   T_i = prod_{j<i} (1 - alpha_j),

skipping pairs with sigma < 0 or alpha < 1/255 and stopping a pixel before the Gaussian that
would bring T to <= 1e-4. A Gaussian is only considered in the tiles (``tile_size`` px) touched
by its radius bbox. Backends (DESIGN.md "Rasterizer backends"):

- ``torch``: pure-PyTorch reference (:mod:`invrender.splat._torch_impl`), any device;
- ``native``: the project's kernels in ``cuda/``, JIT-built on first use (CPU OpenMP or CUDA);
- ``gsplat``: gsplat 1.5's CUDA kernels (``pip install invrender[gpu]``), float32 only;
- ``auto``: gsplat if importable and the inputs are on CUDA, else native.

Importing this module compiles and imports nothing heavy.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

__all__ = ["composite", "BACKENDS"]

BACKENDS = ("auto", "torch", "native", "gsplat")


def _shape_error(name: str, expected: str, t: Tensor) -> ValueError:
    return ValueError(f"{name} must have shape {expected}, got {tuple(t.shape)}")


def _validate(means2d, conics, opacities, features, depths, radii, width, height, tile_size):
    tensors = dict(means2d=means2d, conics=conics, opacities=opacities, features=features,
                   depths=depths, radii=radii)
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if means2d.ndim != 2 or means2d.shape[1] != 2:
        raise _shape_error("means2d", "[N, 2]", means2d)
    N = means2d.shape[0]
    if conics.shape != (N, 3):
        raise _shape_error("conics", f"[N={N}, 3]", conics)
    if opacities.shape != (N,):
        raise _shape_error("opacities", f"[N={N}]", opacities)
    if features.ndim != 2 or features.shape[0] != N or features.shape[1] < 1:
        raise _shape_error("features", f"[N={N}, C>=1]", features)
    if depths.shape != (N,):
        raise _shape_error("depths", f"[N={N}]", depths)
    if radii.shape != (N,):
        raise _shape_error("radii", f"[N={N}]", radii)
    dtype = means2d.dtype
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"means2d must be float32 or float64, got {dtype}")
    for name in ("conics", "opacities", "features", "depths"):
        if tensors[name].dtype != dtype:
            raise ValueError(f"{name} must have dtype {dtype} like means2d, got {tensors[name].dtype}")
    if radii.dtype.is_floating_point or radii.dtype.is_complex or radii.dtype == torch.bool:
        raise ValueError(f"radii must be an integer tensor, got {radii.dtype}")
    for name, t in tensors.items():
        if t.device != means2d.device:
            raise ValueError(f"{name} is on {t.device} but means2d is on {means2d.device}")
    for name, v in (("width", width), ("height", height)):
        if not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be a non-negative int, got {v!r}")
    if not isinstance(tile_size, int) or not 1 <= tile_size <= 32:
        raise ValueError(f"tile_size must be an int in [1, 32], got {tile_size!r}")


def _gsplat_available() -> bool:
    return importlib.util.find_spec("gsplat") is not None


def composite(
    means2d: Tensor,  # [N, 2] pixel coordinates; pixel (i, j) has centre (j + 0.5, i + 0.5)
    conics: Tensor,  # [N, 3] (a, b, c): upper triangle of the inverse 2D covariance
    opacities: Tensor,  # [N] in (0, 1)
    features: Tensor,  # [N, C] any C >= 1 (colours, G-buffer channels)
    depths: Tensor,  # [N] camera z, sorts front to back
    radii: Tensor,  # [N] int pixel radius of the 3-sigma bbox; <= 0 means culled
    width: int,
    height: int,
    *,
    backend: str = "auto",
    tile_size: int = 16,
) -> tuple[Tensor, Tensor, Tensor]:
    """Alpha-composite projected Gaussians front to back.

    Returns ``(features_img [H, W, C], depth_img [H, W, 1], alpha_img [H, W, 1])`` in the
    inputs' dtype and device. ``depth_img`` is the expected depth ``sum_i w_i d_i``, not divided
    by alpha; no background is added (use ``img + (1 - alpha) * bg``). Differentiable w.r.t.
    means2d, conics, opacities, features and depths. float32 and float64 are supported by the
    ``torch`` and ``native`` backends; ``gsplat`` computes in float32.

    Raises:
        ValueError: a shape, dtype, device or argument is invalid (the message names it).
    """
    _validate(means2d, conics, opacities, features, depths, radii, width, height, tile_size)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = "gsplat" if means2d.is_cuda and _gsplat_available() else "native"
    radii = radii.to(torch.int32)
    if backend == "torch":
        from ._torch_impl import composite as torch_composite

        return torch_composite(means2d, conics, opacities, features, depths, radii, width, height,
                               tile_size)
    if backend == "gsplat":
        from ._gsplat_impl import composite_gsplat

        return composite_gsplat(means2d, conics, opacities, features, depths, radii, width, height,
                                tile_size)
    # native
    if means2d.device.type not in ("cpu", "cuda"):
        raise ValueError(f"backend='native' runs on CPU or CUDA tensors, got {means2d.device}")
    from .native import NativeComposite

    if width == 0 or height == 0:
        z = means2d.new_zeros(height, width, 1)
        return means2d.new_zeros(height, width, features.shape[1]), z, z.clone()
    args = [t.contiguous() for t in (means2d, conics, opacities, features, depths, radii)]
    feat, depth, alpha, _last = NativeComposite.apply(*args, width, height, tile_size)
    return feat, depth, alpha
