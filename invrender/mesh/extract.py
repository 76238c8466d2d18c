"""A watertight triangle mesh from trained Gaussians: depth fusion into a TSDF, marching cubes,
cleaning, and UV unwrapping.

Method (:func:`extract_mesh`), and why:

1. **Render depth and coverage** of every training view from the Gaussians (expected depth over
   alpha, the same compositing as training). These are the model's own statements about where
   surfaces are, already averaged over many Gaussians, so they are smoother than any single splat.
2. **Fuse into a truncated signed distance field** on a voxel grid over the Gaussians' robust
   bounding box (projective TSDF, as KinectFusion and 2DGS / GOF do). A voxel that projects onto a
   pixel the model calls empty (alpha below ``alpha_threshold``) is observed as free space
   (+1); otherwise it gets ``clamp((D - z) / trunc, -1, 1)`` unless it lies more than ``trunc``
   behind the surface (occluded: no observation). Observations are averaged. Voxels that no view
   observed are deep inside the object and are set to -1, and the grid's border to +1, so the
   zero level set is closed: the mesh is **watertight by construction**.
3. **Marching cubes** (scikit-image, Lewiner) at the level ``surface_offset`` voxels outside zero
   (the blended depth lies behind the surface, see :class:`ExtractConfig`) gives a welded, consistently oriented
   mesh (outward normals: a test checks a sphere).
4. **Cleaning**: only connected components with at least ``min_component_fraction`` of the largest
   one's faces are kept (floaters go), degenerate faces (repeated indices or zero area) and unused
   vertices are removed. Then quadric edge-collapse decimation to ``max_faces`` (and cleaning again).
5. **UV unwrapping** with xatlas (charts packed into a ``texture_size`` atlas with a few texels of
   padding); vertices on chart seams are split, as every real-time format needs.

Everything is in the normalized training frame; exporters return to the capture frame through the
scene's normalization.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


@dataclass
class ExtractConfig:
    """Mesh extraction from the Gaussians (TSDF fusion of rendered depth + marching cubes)."""

    resolution: int = 160
    """Voxels along the longest side of the fusion grid."""
    truncation: float = 3.0
    """TSDF truncation distance in voxels: the band around the surface that observations shape."""
    alpha_threshold: float = 0.5
    """A pixel whose rendered alpha is below this is empty space (carves the voxels it sees)."""
    surface_offset: float = 2.0
    """Move the extracted surface outwards by this many voxels (must stay below ``truncation``).
    The rendered depth of alpha-blended Gaussians is their weighted mean depth, which lies behind
    the visible surface by about the Gaussians' thickness, so the fused zero level set sits inside
    the object: on the embedded scene the mesh covered 94 % of the photos' object pixels at 0 and
    100 % at 2 voxels (Chamfer to the true surface 0.0227 -> 0.0191)."""
    min_component_fraction: float = 0.05
    """Keep connected components with at least this fraction of the largest one's faces."""
    padding: float = 0.05
    """Pad the grid's box by this fraction of its largest side on every face."""
    max_faces: int = 40_000
    """Decimate (quadric edge collapse) to at most this many faces; 0 keeps marching cubes' output."""


@dataclass
class RawMesh:
    vertices: Tensor  # [V, 3] float32
    faces: Tensor  # [F, 3] int64


def _robust_box(means: Tensor, padding: float) -> tuple[Tensor, Tensor]:
    """Box [lo, hi] holding the Gaussians' centres except the outer 0.1 % per side, padded."""
    pts = means.detach().float()
    if pts.shape[0] > (1 << 20):
        pts = pts[:: math.ceil(pts.shape[0] / (1 << 20))]
    lo = torch.quantile(pts, 1e-3, dim=0)
    hi = torch.quantile(pts, 1.0 - 1e-3, dim=0)
    pad = padding * float((hi - lo).max())
    return lo - pad, hi + pad


@torch.no_grad()
def fuse_tsdf(
    depths: Tensor,  # [V, H, W] camera z, 0 where empty
    alphas: Tensor,  # [V, H, W]
    viewmats: Tensor,  # [V, 4, 4] world-to-camera, OpenCV axes
    Ks: Tensor,  # [V, 3, 3]
    lo: Tensor,  # [3] box corner
    hi: Tensor,  # [3]
    resolution: int,
    truncation: float = 3.0,
    alpha_threshold: float = 0.5,
) -> tuple[Tensor, Tensor, float]:
    """Projective TSDF of the views over the box: ``(tsdf [nx, ny, nz] in [-1, 1], origin [3], voxel)``.

    ``tsdf[i, j, k]`` is the value at ``origin + voxel * (i, j, k)``; positive outside. Unobserved
    voxels are -1 (inside) and the outermost layer is forced to +1, so the zero level set is closed.
    """
    if depths.ndim != 3 or alphas.shape != depths.shape:
        raise ValueError(f"depths and alphas must be [V, H, W] alike, got {tuple(depths.shape)} and {tuple(alphas.shape)}")
    size = hi - lo
    voxel = float(size.max()) / (resolution - 1)
    dims = [max(int(math.ceil(float(s) / voxel)) + 1, 2) for s in size]
    axes = [lo[d] + voxel * torch.arange(dims[d], dtype=torch.float32) for d in range(3)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)  # [M, 3]
    trunc = truncation * voxel
    acc = torch.zeros(grid.shape[0])
    weight = torch.zeros(grid.shape[0])
    n_views, height, width = depths.shape
    for v in range(n_views):
        cam = grid @ viewmats[v, :3, :3].T + viewmats[v, :3, 3]  # [M, 3]
        z = cam[:, 2]
        front = z > 1e-6
        zs = z.clamp(min=1e-6)
        K = Ks[v]
        u = K[0, 0] * cam[:, 0] / zs + K[0, 2]
        w = K[1, 1] * cam[:, 1] / zs + K[1, 2]
        px, py = u.floor().long(), w.floor().long()  # the pixel whose square holds the projection
        inside = front & (px >= 0) & (px < width) & (py >= 0) & (py < height)
        idx = inside.nonzero().squeeze(1)
        flat = py[idx] * width + px[idx]
        # coverage read bilinearly at the exact projection (pixel centres at +0.5): a nearest read
        # would call a voxel just inside a silhouette empty up to half a pixel early and, with a
        # silhouette in every direction over many views, erode the whole surface by that much
        gx = (u[idx] / width) * 2.0 - 1.0
        gy = (w[idx] / height) * 2.0 - 1.0
        grid_xy = torch.stack([gx, gy], dim=-1)[None, None]  # [1, 1, P, 2]
        a = torch.nn.functional.grid_sample(alphas[v][None, None], grid_xy, mode="bilinear",
                                            padding_mode="border", align_corners=False).reshape(-1)
        d = depths[v].reshape(-1)[flat]
        sdf = ((d - z[idx]) / trunc).clamp(-1.0, 1.0)
        empty = a < alpha_threshold
        obs = torch.where(empty, torch.ones_like(sdf), sdf)
        valid = empty | ((d - z[idx]) > -trunc)  # more than trunc behind the surface: occluded
        acc.index_add_(0, idx[valid], obs[valid])
        weight.index_add_(0, idx[valid], torch.ones_like(obs[valid]))
    tsdf = torch.where(weight > 0, acc / weight.clamp(min=1.0), -torch.ones_like(acc))
    tsdf = tsdf.view(*dims)
    tsdf[0], tsdf[-1] = 1.0, 1.0
    tsdf[:, 0], tsdf[:, -1] = 1.0, 1.0
    tsdf[:, :, 0], tsdf[:, :, -1] = 1.0, 1.0
    return tsdf, lo.float(), voxel


def marching_cubes(tsdf: Tensor, origin: Tensor, voxel: float, level: float = 0.0) -> RawMesh:
    """The ``level`` set of ``tsdf`` [nx, ny, nz] (positive outside) as a welded mesh with outward,
    counter-clockwise faces."""
    from skimage.measure import marching_cubes as _mc  # noqa: PLC0415 - heavy import, used here only

    vol = tsdf.numpy().astype(np.float32)
    if not (vol.min() < level < vol.max()):
        raise ValueError("the fused volume has no surface (everything inside or everything outside); "
                         "check the run's renders and the fusion box")
    # negated so the object is the high side: skimage's default orientation then points normals
    # out of it and winds faces counter-clockwise seen from outside
    verts, faces, _, _ = _mc(-vol, level=-level, spacing=(voxel, voxel, voxel), allow_degenerate=False)
    verts = torch.from_numpy(verts.copy()).float() + origin
    # skimage winds faces clockwise for its outward normals: flip to counter-clockwise
    faces = torch.from_numpy(faces.astype(np.int64)[:, [0, 2, 1]].copy())
    return RawMesh(verts, faces)


def face_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """Unnormalized face normals [F, 3] (length = twice the area), counter-clockwise = outward."""
    v0, v1, v2 = (vertices[faces[:, i]] for i in range(3))
    return torch.cross(v1 - v0, v2 - v0, dim=-1)


def vertex_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted unit vertex normals [V, 3]. Where the incident faces cancel (a fin left by
    decimation) one incident face's normal is used, and a vertex without faces gets +z: every
    normal is unit length, as glTF requires."""
    fn = face_normals(vertices, faces)  # [F, 3]
    vn = torch.zeros_like(vertices)
    for i in range(3):
        vn.index_add_(0, faces[:, i], fn)
    length = vn.norm(dim=-1, keepdim=True)
    total = float(length.sum())
    bad = length <= 1e-9 * (total / max(vertices.shape[0], 1) + 1e-30)  # [V, 1]
    if bool(bad.any()):
        one_face = torch.zeros_like(vertices)
        for i in range(3):
            one_face[faces[:, i]] = fn  # any incident face will do (the last write wins)
        vn = torch.where(bad, one_face, vn)
        length = vn.norm(dim=-1, keepdim=True)
        vn = torch.where(length > 0, vn, torch.tensor([0.0, 0.0, 1.0], dtype=vn.dtype).expand_as(vn))
    return torch.nn.functional.normalize(vn, dim=-1, eps=1e-30)


def smooth_vertex_normals(normals: Tensor, faces: Tensor, iterations: int) -> Tensor:
    """Unit vertex normals [V, 3] averaged ``iterations`` times over each vertex's neighbourhood:
    every face takes the sum of its three vertices' normals, every vertex the normalized sum of its
    faces'. Marching cubes on a fused TSDF leaves a voxel-scale staircase in the normals (a few
    degrees on flat parts); a few passes remove it while the shape, a few voxels wide, stays."""
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    f = faces.long()
    for _ in range(iterations):
        per_face = normals[f].sum(dim=1)  # [F, 3]
        acc = torch.zeros_like(normals)
        for i in range(3):  # each face's sum to its three vertices, as vertex_normals scatters
            acc.index_add_(0, f[:, i], per_face)
        length = acc.norm(dim=-1, keepdim=True)
        normals = torch.where(length > 1e-12, acc / length.clamp(min=1e-30), normals)  # cancelling: keep
    return normals


def clean_mesh(mesh: RawMesh, min_component_fraction: float = 0.05) -> RawMesh:
    """Drop degenerate faces, small connected components and unused vertices."""
    from scipy.sparse import coo_matrix  # noqa: PLC0415
    from scipy.sparse.csgraph import connected_components  # noqa: PLC0415

    v, f = mesh.vertices, mesh.faces
    distinct = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
    area = face_normals(v, f).norm(dim=-1)
    f = f[distinct & (area > 0)]
    if f.shape[0] == 0:
        raise ValueError("the extracted mesh has no non-degenerate face")
    n = v.shape[0]
    rows = torch.cat([f[:, 0], f[:, 1], f[:, 2]]).numpy()
    cols = torch.cat([f[:, 1], f[:, 2], f[:, 0]]).numpy()
    graph = coo_matrix((np.ones(rows.shape[0], dtype=np.int8), (rows, cols)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    face_label = torch.from_numpy(labels)[f[:, 0]]
    counts = torch.bincount(face_label)
    keep_labels = counts >= max(1.0, min_component_fraction * float(counts.max()))
    f = f[keep_labels[face_label]]
    used = torch.zeros(n, dtype=torch.bool)
    used[f.reshape(-1)] = True
    remap = torch.full((n,), -1, dtype=torch.long)
    remap[used] = torch.arange(int(used.sum()))
    return RawMesh(v[used].contiguous(), remap[f].contiguous())


def boundary_edge_count(faces: Tensor) -> tuple[int, int]:
    """``(edges used by one face, edges used by more than two)``: both 0 for a closed 2-manifold."""
    e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).sort(dim=1).values
    _, counts = torch.unique(e, dim=0, return_counts=True)
    return int((counts == 1).sum()), int((counts > 2).sum())


def decimate(mesh: RawMesh, max_faces: int) -> RawMesh:
    """Quadric edge-collapse decimation (Garland-Heckbert, via ``fast_simplification``) down to
    ``max_faces`` (exceeded only where reaching it would open the surface): marching cubes spends faces evenly, decimation keeps them where the surface
    bends, so texturing, unwrapping and rasterizing all get cheaper at little loss of shape."""
    if max_faces <= 0 or mesh.faces.shape[0] <= max_faces:
        return mesh
    import fast_simplification  # noqa: PLC0415

    v = mesh.vertices.numpy().astype(np.float32)
    f = mesh.faces.numpy().astype(np.int64)
    # gentle aggressiveness first (3, against the library's default 7): it keeps the surface closed
    # but may stall short of the target on small meshes; the default then finishes the job, and is
    # kept only if the result is still a closed 2-manifold
    for agg in (3, 3, 3, 7, 7):
        if f.shape[0] <= max_faces:
            break
        v2, f2 = fast_simplification.simplify(v, f, target_reduction=1.0 - max_faces / f.shape[0], agg=agg)
        if agg > 3 and boundary_edge_count(torch.from_numpy(f2.astype(np.int64))) != (0, 0):
            break
        v, f = v2, f2
    return RawMesh(torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)),
                   torch.from_numpy(np.ascontiguousarray(f, dtype=np.int64)))


def unwrap_uv(mesh: RawMesh, texture_size: int = 512, padding: int = 4) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """xatlas charts packed for a ``texture_size`` atlas: ``(vertices [V', 3], faces [F, 3], uvs [V', 2],
    vmap [V'])`` with seam vertices split (``vmap`` gives each new vertex's index in ``mesh``, to carry
    welded per-vertex data over). UVs are in [0, 1], glTF orientation (v down, as xatlas packs rows)."""
    try:
        import xatlas  # noqa: PLC0415
    except ImportError as e:  # pragma: no cover - xatlas is a core dependency
        raise ImportError("UV unwrapping needs xatlas: pip install xatlas") from e
    atlas = xatlas.Atlas()
    atlas.add_mesh(mesh.vertices.numpy().astype(np.float32), mesh.faces.numpy().astype(np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = int(texture_size)
    pack.padding = int(padding)
    pack.bilinear = True
    atlas.generate(xatlas.ChartOptions(), pack)
    vmapping, indices, uvs = atlas[0]
    vmap = torch.from_numpy(vmapping.astype(np.int64))
    return (
        mesh.vertices[vmap].contiguous(),
        torch.from_numpy(indices.astype(np.int64)),
        torch.from_numpy(uvs.astype(np.float32)),
        vmap,
    )


@torch.no_grad()
def render_depths(params: dict[str, Tensor], views, sh_degree: int, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Rendered z-depth and alpha ([V, H, W] each) of the Gaussians from every view of ``views``."""
    from invrender.splat.gaussians import render_view  # noqa: PLC0415

    device = params["means"].device
    depths, alphas = [], []
    for i in range(len(views.names)):
        out = render_view(params, views.viewmats[i].to(device), views.Ks[i].to(device), views.width,
                          views.height, sh_degree, None, backend)
        depths.append(out.depth[..., 0].cpu())
        alphas.append(out.alpha[..., 0].cpu())
    return torch.stack(depths), torch.stack(alphas)


def extract_mesh(params: dict[str, Tensor], views, sh_degree: int, cfg: ExtractConfig | None = None,
                 backend: str = "auto") -> RawMesh:
    """Fuse the Gaussians' rendered depth of ``views`` (use the training views) into a TSDF and
    return the cleaned, watertight zero level set (normalized frame). See the module docstring."""
    cfg = cfg or ExtractConfig()
    depths, alphas = render_depths(params, views, sh_degree, backend)
    lo, hi = _robust_box(params["means"], cfg.padding)
    tsdf, origin, voxel = fuse_tsdf(depths, alphas, views.viewmats.float().cpu(), views.Ks.float().cpu(),
                                    lo.cpu(), hi.cpu(), cfg.resolution, cfg.truncation, cfg.alpha_threshold)
    if not 0.0 <= cfg.surface_offset < cfg.truncation:
        raise ValueError(f"surface_offset must be in [0, truncation={cfg.truncation}), got {cfg.surface_offset}")
    level = cfg.surface_offset / cfg.truncation  # TSDF values are distances over the truncation
    mesh = clean_mesh(marching_cubes(tsdf, origin, voxel, level), cfg.min_component_fraction)
    return clean_mesh(decimate(mesh, cfg.max_faces), cfg.min_component_fraction)


def sample_surface(vertices: Tensor, faces: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` points [n, 3] uniformly distributed over the surface (area-weighted faces, uniform barycentrics)."""
    area = face_normals(vertices.double(), faces).norm(dim=-1)
    idx = torch.multinomial(area / area.sum(), n, replacement=True, generator=generator)
    r1 = torch.rand(n, generator=generator, dtype=torch.float64).sqrt()
    r2 = torch.rand(n, generator=generator, dtype=torch.float64)
    b = torch.stack([1 - r1, r1 * (1 - r2), r1 * r2], dim=-1)  # [n, 3]
    tri = vertices.double()[faces[idx]]  # [n, 3, 3]
    return (b[:, :, None] * tri).sum(dim=1)


def chamfer_distance(a_vertices: Tensor, a_faces: Tensor, b_vertices: Tensor, b_faces: Tensor,
                     n: int = 100_000, seed: int = 0) -> dict[str, float]:
    """Symmetric Chamfer distance between two surfaces from ``n`` area-uniform samples on each:
    ``accuracy`` = mean distance from A's samples to B, ``completeness`` = from B's to A,
    ``chamfer`` = their mean; units of the inputs."""
    from scipy.spatial import cKDTree  # noqa: PLC0415

    g = torch.Generator().manual_seed(seed)
    pa = sample_surface(a_vertices, a_faces, n, g).numpy()
    pb = sample_surface(b_vertices, b_faces, n, g).numpy()
    acc = float(cKDTree(pb).query(pa)[0].mean())
    comp = float(cKDTree(pa).query(pb)[0].mean())
    return {"accuracy": acc, "completeness": comp, "chamfer": 0.5 * (acc + comp)}


def read_ply_mesh(path) -> RawMesh:
    """Vertices and triangles of a PLY file (e.g. a dataset's ``gt_mesh.ply``); clear errors."""
    from plyfile import PlyData  # noqa: PLC0415

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mesh file {path} does not exist")
    try:
        ply = PlyData.read(str(path))
        vx = ply["vertex"]
        v = np.stack([vx["x"], vx["y"], vx["z"]], axis=-1).astype(np.float32)
        faces = np.stack(list(ply["face"]["vertex_indices"])).astype(np.int64)
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: not a triangle-mesh PLY ({e})") from e
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"{path}: faces are not triangles")
    return RawMesh(torch.from_numpy(v), torch.from_numpy(faces))
