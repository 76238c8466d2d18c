"""The Gaussian scene: parameters, initialization and rendering of one view.

Parameters live in a plain ``dict[str, nn.Parameter]`` with one Adam optimizer each (the layout of
gsplat's strategies), stored *unactivated*: ``means`` [N, 3], ``scales`` [N, 3] (log),
``quats`` [N, 4] (wxyz, unnormalized), ``opacities`` [N] (logit), ``sh0`` [N, 1, 3] and
``shN`` [N, K-1, 3] (display-space SH, colour = SH + 0.5, exactly as 3DGS).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from invrender.splat.composite import composite
from invrender.splat.project import Projected, project_gaussians
from invrender.splat.sh import num_sh_bases, rgb_to_sh0, sh_colors

PARAM_NAMES = ("means", "scales", "quats", "opacities", "sh0", "shN")


def knn_mean_distance(points: Tensor, k: int = 3, chunk: int = 4096) -> Tensor:
    """Mean distance [P] from each point to its k nearest neighbours (chunked brute force)."""
    out = []
    for i in range(0, points.shape[0], chunk):
        d = torch.cdist(points[i : i + chunk], points)  # [c, P]
        kk = min(k + 1, points.shape[0])
        vals = d.topk(kk, dim=1, largest=False).values[:, 1:]  # drop the point itself
        out.append(vals.mean(dim=1) if vals.numel() else torch.ones(d.shape[0]))
    return torch.cat(out)


def init_gaussians(
    points: Tensor,  # [P, 3]
    colors: Tensor,  # [P, 3] display space in [0, 1]
    sh_degree: int = 3,
    init_opacity: float = 0.1,
    init_scale: float = 1.0,
) -> dict[str, nn.Parameter]:
    """Isotropic Gaussians at ``points``, sized by the distance to their 3 nearest neighbours."""
    n = points.shape[0]
    if n == 0:
        raise ValueError("cannot initialize a Gaussian scene from zero points")
    dist = knn_mean_distance(points).clamp(min=1e-7)  # [P]
    scales = torch.log(dist * init_scale)[:, None].repeat(1, 3)  # [P, 3]
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0
    opacities = torch.logit(torch.full((n,), init_opacity))
    sh0 = rgb_to_sh0(colors)[:, None, :]  # [P, 1, 3]
    shN = torch.zeros(n, num_sh_bases(sh_degree) - 1, 3)
    params = {
        "means": points.clone(),
        "scales": scales,
        "quats": quats,
        "opacities": opacities,
        "sh0": sh0,
        "shN": shN,
    }
    return {k: nn.Parameter(v.float().contiguous()) for k, v in params.items()}


def random_points(n: int, extent: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n`` points uniform in the cube [-extent, extent]^3 with random colours."""
    pts = (torch.rand(n, 3, generator=generator) * 2 - 1) * extent
    cols = torch.rand(n, 3, generator=generator)
    return pts, cols


@dataclass
class RenderOutput:
    rgb: Tensor  # [H, W, 3] display space, background composited
    alpha: Tensor  # [H, W, 1]
    depth: Tensor  # [H, W, 1] expected depth divided by alpha (0 where empty)
    projected: Projected  # its means2d keeps .grad for the densification strategy


def project_with_colors(
    params: dict[str, Tensor],
    viewmat: Tensor,  # [4, 4]
    K: Tensor,  # [3, 3]
    width: int,
    height: int,
    sh_degree: int,
    backend: str = "auto",
) -> tuple[Projected, Tensor, Tensor]:
    """Project the Gaussians and evaluate their SH colour towards the camera: ``(projected,
    colors [N, 3] display space, camera centre [3])``. The projected ``means2d`` keeps its ``.grad``
    for the densification strategy. Shared by every renderer of Gaussians."""
    # projection and SH use the fused native kernels with every compositing backend but the
    # torch reference (gsplat included: it only replaces the compositing); "auto" stays "auto"
    # so that it can fall back to torch where native does not apply (e.g. a camera with grad)
    per_gaussian = {"torch": "torch", "auto": "auto"}.get(backend, "native")
    means = params["means"]
    proj = project_gaussians(
        means, params["quats"], torch.exp(params["scales"]), viewmat, K, width, height,
        backend=per_gaussian,
    )
    cam_center = -viewmat[:3, :3].T @ viewmat[:3, 3]  # [3]
    dirs = means.detach() - cam_center
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp(min=1e-12)  # [N, 3]
    coeffs = torch.cat([params["sh0"], params["shN"]], dim=1)  # [N, K, 3]
    colors = sh_colors(sh_degree, coeffs, dirs, backend=per_gaussian)  # [N, 3]
    if proj.means2d.requires_grad:
        proj.means2d.retain_grad()
    return proj, colors, cam_center


def render_view(
    params: dict[str, Tensor],
    viewmat: Tensor,  # [4, 4]
    K: Tensor,  # [3, 3]
    width: int,
    height: int,
    sh_degree: int,
    background: Tensor | None = None,  # [3] or [H, W, 3]
    backend: str = "auto",
) -> RenderOutput:
    """Render the radiance (SH colour) of the Gaussians from one camera."""
    proj, colors, _ = project_with_colors(params, viewmat, K, width, height, sh_degree, backend)
    img, depth, alpha = composite(
        proj.means2d,
        proj.conics,
        torch.sigmoid(params["opacities"]),
        colors,
        proj.depths,
        proj.radii,
        width,
        height,
        backend=backend,
    )
    if background is not None:
        img = img + (1.0 - alpha) * background
    depth = torch.where(alpha > 1e-4, depth / alpha.clamp(min=1e-4), torch.zeros_like(depth))
    return RenderOutput(img, alpha, depth, proj)


def num_gaussians(params: dict[str, Tensor]) -> int:
    return int(params["means"].shape[0])
