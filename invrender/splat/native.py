"""Lazy JIT build of the project's native kernels (``cuda/``) and the native autograd ops
(compositing, projection, SH colour), plus the (non-differentiable) mesh visibility op.

Nothing is compiled at import time: :func:`load_extension` builds on first call with
``torch.utils.cpp_extension.load`` and caches the result under
``$INVRENDER_CACHE/torch_extensions/<variant>/<hash of the source folder>`` (default ``~/.cache/invrender``). Two variants
exist, built from the same portable kernel sources ``cuda/raster.h``, ``cuda/project.h`` and
``cuda/mesh_raster.h``:

- ``cpu``: ``raster_cpu.cpp`` + ``project_cpu.cpp`` + ``mesh_raster_cpu.cpp`` +
  ``bindings_cpu.cpp`` with OpenMP, ``-O3 -march=native -ffast-math`` (the inner loops rely on
  auto-vectorization and libmvec's vector ``exp``; ``mesh_raster_cpu.cpp`` opts out of fast-math,
  see there);
- ``cuda``: ``raster_cuda.cu`` + ``project_cuda.cu`` + ``mesh_raster_cuda.cu`` +
  ``bindings_cuda.cpp``, when CUDA and ``nvcc`` are available.

Because of ``-march=native`` the cache key includes the machine name.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

__all__ = [
    "load_extension", "cache_dir", "source_dir", "bin_tiles_torch",
    "NativeComposite", "NativeProject", "NativeSHColors", "mesh_visibility_native",
]


def source_dir() -> Path:
    """Directory holding the kernel sources (``$INVRENDER_CUDA_SRC`` or the repo's ``cuda/``)."""
    env = os.environ.get("INVRENDER_CUDA_SRC")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "cuda"
    if not (path / "raster.h").is_file():
        raise RuntimeError(
            f"native kernel sources not found in {path}; run from a source checkout of invrender "
            "or point INVRENDER_CUDA_SRC at its cuda/ directory"
        )
    return path


def cache_dir(variant: str) -> Path:
    root = Path(os.environ.get("INVRENDER_CACHE", Path.home() / ".cache" / "invrender"))
    return root / "torch_extensions" / variant


def _require_tool(name: str, what: str) -> None:
    if shutil.which(name) is None:
        raise RuntimeError(
            f"building the native {what} kernels needs `{name}` on PATH, which was not found. "
            f"Install a C++ compiler (e.g. `apt install g++`) "
            f"{'and the CUDA toolkit ' if what == 'CUDA' else ''}"
            "or use backend='torch'."
        )


@functools.lru_cache(maxsize=None)
def load_extension(variant: str = "cpu") -> ModuleType:
    """Build (first call only) and import the native extension ``variant`` in {"cpu", "cuda"}."""
    from torch.utils import cpp_extension  # heavy-ish import kept out of module import time

    src = source_dir()
    host = platform.node().replace("-", "_").replace(".", "_") or "host"
    if variant == "cpu":
        _require_tool(os.environ.get("CXX", "c++"), "CPU")
        sources = [src / "bindings_cpu.cpp", src / "raster_cpu.cpp", src / "project_cpu.cpp",
                   src / "mesh_raster_cpu.cpp"]
        kwargs = dict(
            extra_cflags=["-O3", "-march=native", "-ffast-math", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
        )
        name = f"invrender_raster_cpu_{host}"
    elif variant == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("the native CUDA backend needs a CUDA device; use backend='native' on CPU")
        _require_tool(os.environ.get("CXX", "c++"), "CUDA")
        nvcc = Path(cpp_extension.CUDA_HOME or "/usr/local/cuda") / "bin" / "nvcc"
        if not nvcc.exists() and shutil.which("nvcc") is None:
            _require_tool("nvcc", "CUDA")
        sources = [src / "bindings_cuda.cpp", src / "raster_cuda.cu", src / "project_cuda.cu",
                   src / "mesh_raster_cuda.cu"]
        kwargs = dict(extra_cflags=["-O3"], extra_cuda_cflags=["-O3", "--use_fast_math"])
        name = "invrender_raster_cuda"
    else:
        raise ValueError(f"variant must be 'cpu' or 'cuda', got {variant!r}")
    # one build folder per source checkout: two checkouts sharing the cache (a CI clone beside a
    # working tree) would otherwise differ only in their -I path and rebuild each other's module
    tag = hashlib.sha1(str(src.resolve()).encode()).hexdigest()[:8]
    name = f"{name}_{tag}"
    build = cache_dir(variant) / tag
    build.mkdir(parents=True, exist_ok=True)
    try:
        return cpp_extension.load(
            name=name,
            sources=[str(s) for s in sources],
            extra_include_paths=[str(src)],
            build_directory=str(build),
            verbose=os.environ.get("INVRENDER_VERBOSE_BUILD", "0") == "1",
            **kwargs,
        )
    except Exception as exc:  # compiler errors surface as RuntimeError / CalledProcessError
        raise RuntimeError(
            f"building the native {variant} kernels failed ({exc}); "
            f"build directory: {build}. Set INVRENDER_VERBOSE_BUILD=1 to see the compiler output, "
            "or use backend='torch'."
        ) from exc


@torch.no_grad()
def bin_tiles_torch(
    means2d: Tensor,  # [N, 2]
    radii: Tensor,  # [N] int32
    depths: Tensor,  # [N]
    width: int,
    height: int,
    tile_size: int,
) -> tuple[Tensor, Tensor]:
    """Vectorized binning, same result as the C++ ``bin_tiles`` (used for the CUDA variant).

    Returns ``tile_offsets`` int32 [tiles_y * tiles_x + 1] and ``flat_ids`` int32 [P]: for each
    tile (row-major) the ids of Gaussians whose radius bbox touches it, front to back (stable).
    """
    dev = means2d.device
    tiles_x, tiles_y = -(-width // tile_size), -(-height // tile_size)
    n_tiles = tiles_x * tiles_y
    x0, x1, y0, y1 = tile_bounds(means2d, radii, tiles_x, tiles_y, tile_size)
    keep = radii > 0
    order = torch.argsort(depths, stable=True)  # [N] front to back
    order = order[keep[order]]
    nx, ny = (x1 - x0)[order], (y1 - y0)[order]
    counts = nx * ny  # [M] tiles per Gaussian
    total = int(counts.sum())
    if total == 0:
        return torch.zeros(n_tiles + 1, dtype=torch.int32, device=dev), torch.zeros(
            0, dtype=torch.int32, device=dev
        )
    rank = torch.repeat_interleave(torch.arange(order.numel(), device=dev), counts)  # [P]
    first = torch.cumsum(counts, 0) - counts
    local = torch.arange(total, device=dev) - first[rank]
    tx = x0[order][rank] + local % nx[rank]
    ty = y0[order][rank] + local // nx[rank]
    tile = ty * tiles_x + tx  # [P]
    # rank is already front-to-back; a stable sort by tile keeps that order inside each tile
    tile_sorted, perm = torch.sort(tile, stable=True)
    flat_ids = order[rank[perm]].to(torch.int32)
    counts_per_tile = torch.bincount(tile_sorted, minlength=n_tiles)
    offsets = torch.zeros(n_tiles + 1, dtype=torch.int64, device=dev)
    offsets[1:] = torch.cumsum(counts_per_tile, 0)
    return offsets.to(torch.int32), flat_ids


def tile_bounds(
    means2d: Tensor, radii: Tensor, tiles_x: int, tiles_y: int, tile_size: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Tile range [x0, x1) x [y0, y1) of each Gaussian's radius bbox (int64 [N] each).

    Computed in float64 exactly as ``tile_range`` in ``cuda/raster.h`` so every backend sees the
    same Gaussian-tile pairs.
    """
    m = means2d.detach().double()
    r = radii.double()
    x0 = torch.floor((m[:, 0] - r) / tile_size).clamp(0, tiles_x).long()
    x1 = torch.ceil((m[:, 0] + r) / tile_size).clamp(0, tiles_x).long()
    y0 = torch.floor((m[:, 1] - r) / tile_size).clamp(0, tiles_y).long()
    y1 = torch.ceil((m[:, 1] + r) / tile_size).clamp(0, tiles_y).long()
    return x0, x1, y0, y1


class NativeComposite(torch.autograd.Function):
    """Private autograd wrapper of the native op (CPU or CUDA variant, by the inputs' device)."""

    @staticmethod
    def forward(ctx, means2d, conics, opacities, features, depths, radii, width, height, tile_size):
        variant = "cuda" if means2d.is_cuda else "cpu"
        ext = load_extension(variant)
        threads = torch.get_num_threads()
        if variant == "cpu":
            tile_offsets, flat_ids = ext.bin_tiles(means2d, radii, depths, width, height, tile_size)
        else:
            tile_offsets, flat_ids = bin_tiles_torch(means2d, radii, depths, width, height, tile_size)
        out_feat, out_depth, out_alpha, last = ext.op_fwd(
            means2d, conics, opacities, features, depths, tile_offsets, flat_ids,
            width, height, tile_size, threads,
        )
        ctx.save_for_backward(means2d, conics, opacities, features, depths, tile_offsets, flat_ids,
                              out_alpha, last)
        ctx.cfg = (variant, width, height, tile_size)
        ctx.mark_non_differentiable(last)
        return out_feat, out_depth, out_alpha, last

    @staticmethod
    def backward(ctx, v_out_feat, v_out_depth, v_out_alpha, _v_last):
        variant, width, height, tile_size = ctx.cfg
        means2d, conics, opacities, features, depths, tile_offsets, flat_ids, out_alpha, last = (
            ctx.saved_tensors
        )
        ext = load_extension(variant)
        v_means2d, v_conics, v_opacities, v_features, v_depths = ext.op_bwd(
            means2d, conics, opacities, features, depths, tile_offsets, flat_ids, out_alpha, last,
            v_out_feat.contiguous(), v_out_depth.contiguous(), v_out_alpha.contiguous(),
            width, height, tile_size, torch.get_num_threads(),
        )
        return v_means2d, v_conics, v_opacities, v_features, v_depths, None, None, None, None


class NativeProject(torch.autograd.Function):
    """Private autograd wrapper of the native projection (``cuda/project.h``), CPU or CUDA by
    the inputs' device. Twin of :func:`invrender.splat.project.project_gaussians` (torch)."""

    @staticmethod
    def forward(ctx, means, quats, scales, viewmat, K, width, height, near_plane, far_plane, eps2d):
        variant = "cuda" if means.is_cuda else "cpu"
        ext = load_extension(variant)
        cfg = (width, height, float(near_plane), float(far_plane), float(eps2d))
        means2d, conics, depths, radii = ext.project_fwd(
            means, quats, scales, viewmat, K, *cfg, torch.get_num_threads()
        )
        ctx.save_for_backward(means, quats, scales, viewmat, K, radii)
        ctx.cfg = (variant, cfg)
        ctx.mark_non_differentiable(radii)
        return means2d, conics, depths, radii

    @staticmethod
    def backward(ctx, v_means2d, v_conics, v_depths, _v_radii):
        variant, cfg = ctx.cfg
        means, quats, scales, viewmat, K, radii = ctx.saved_tensors
        v_means, v_quats, v_scales = load_extension(variant).project_bwd(
            means, quats, scales, viewmat, K, radii,
            v_means2d.contiguous(), v_conics.contiguous(), v_depths.contiguous(),
            *cfg, torch.get_num_threads(),
        )
        need = ctx.needs_input_grad
        return (v_means if need[0] else None, v_quats if need[1] else None,
                v_scales if need[2] else None, None, None, None, None, None, None, None)


class NativeSHColors(torch.autograd.Function):
    """Private autograd wrapper of the native SH colour ``max(SH(dirs) . coeffs + 0.5, 0)``
    (``cuda/project.h``). Directions are constants: no gradient flows to ``dirs``."""

    @staticmethod
    def forward(ctx, degree, coeffs, dirs):
        variant = "cuda" if coeffs.is_cuda else "cpu"
        colors = load_extension(variant).sh_fwd(degree, coeffs, dirs, torch.get_num_threads())
        ctx.save_for_backward(coeffs, dirs)
        ctx.cfg = (variant, degree)
        return colors

    @staticmethod
    def backward(ctx, v_colors):
        variant, degree = ctx.cfg
        coeffs, dirs = ctx.saved_tensors
        v_coeffs = load_extension(variant).sh_bwd(
            degree, coeffs, dirs, v_colors.contiguous(), torch.get_num_threads()
        )
        return None, v_coeffs, None


# CPU tile side of the mesh z-buffer: small enough that a tile's keys stay in L1 (2 KiB), large
# enough that most of a ~100k-triangle mesh's triangles fall into one tile
MESH_TILE_SIZE = 16


@torch.no_grad()
def mesh_visibility_native(
    verts: Tensor,  # [V, 3] camera space (OpenCV), float32 or float64
    faces: Tensor,  # [F, 3] int32
    ray_x: Tensor,  # [W] float64
    ray_y: Tensor,  # [H] float64
    fx: float, fy: float, cx: float, cy: float,
    near_plane: float,
) -> tuple[Tensor, Tensor]:
    """Native mesh visibility (``cuda/mesh_raster.h``), CPU or CUDA by the inputs' device; twin of
    :func:`invrender.mesh.raster.mesh_visibility_torch` (same arguments and results).

    Returns ``tri_id`` int32 [H, W] (-1 = empty) and ``depth`` float32 [H, W] (0 = empty). The
    op has no gradient (triangle ids are piecewise constant), so no autograd wrapper: the
    differentiable barycentrics and depth are recomputed in torch from ``tri_id``.
    """
    variant = "cuda" if verts.is_cuda else "cpu"
    tri_id, depth = load_extension(variant).mesh_visibility(
        verts.contiguous(), faces.to(torch.int32).contiguous(), ray_x.contiguous(),
        ray_y.contiguous(), float(fx), float(fy), float(cx), float(cy), float(near_plane),
        MESH_TILE_SIZE, torch.get_num_threads(),
    )
    return tri_id, depth
