"""Camera model, and the one place where camera conventions are converted.

Internally every camera is a world-to-camera matrix ``viewmats`` [..., 4, 4] in OpenCV axes
(x right, y down, z forward) plus pixel intrinsics ``Ks`` [..., 3, 3]. Pixel (i, j) covers
[i, i+1) x [j, j+1), so its centre is at (i + 0.5, j + 0.5) and a centred principal point is
``cx = W / 2``, ``cy = H / 2`` (the COLMAP convention; nerfstudio and the NeRF-synthetic loaders use
the same one).

Datasets give camera-to-world matrices in either OpenGL/Blender axes (x right, y up, z backward:
NeRF-synthetic, TensoIR, nerfstudio) or OpenCV axes; the functions below are the only code that
turns those into ``viewmats``. Every function accepts tensors or array-likes, works on a leading
batch of any shape, and returns float32 tensors (the arithmetic runs in float64 so that
inverting a pose does not lose precision).
"""

from __future__ import annotations

import math

import torch

# Flips the y and z axes: OpenGL camera axes <-> OpenCV camera axes (its own inverse).
_GL_TO_CV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))


def _as_pose(m, name: str) -> torch.Tensor:
    """[..., 4, 4] or [..., 3, 4] -> [..., 4, 4] float64 (a 3x4 gets the row 0 0 0 1)."""
    m = torch.as_tensor(m).to(torch.float64)
    if m.ndim < 2 or m.shape[-1] != 4 or m.shape[-2] not in (3, 4):
        raise ValueError(f"{name} must have shape [..., 4, 4] or [..., 3, 4], got {tuple(m.shape)}")
    if m.shape[-2] == 3:
        bottom = torch.zeros(*m.shape[:-2], 1, 4, dtype=m.dtype)
        bottom[..., 0, 3] = 1.0
        m = torch.cat([m, bottom], dim=-2)
    return m


def _invert(m: torch.Tensor) -> torch.Tensor:
    # General inverse, not R^T: some exported poses carry a slight scale, and the inverse must
    # stay exact for them too.
    return torch.linalg.inv(m)


def opengl_c2w_to_viewmat(c2w) -> torch.Tensor:
    """OpenGL/Blender camera-to-world [..., 4, 4] (or [..., 3, 4]) -> OpenCV world-to-camera [..., 4, 4].

    OpenGL camera axes: x right, y up, the camera looks along -z (NeRF-synthetic ``transform_matrix``,
    TensoIR ``cam_transform_mat``, nerfstudio ``transform_matrix``).
    """
    c2w = _as_pose(c2w, "c2w")
    return _invert(c2w @ _GL_TO_CV).to(torch.float32)


def viewmat_to_opengl_c2w(viewmats) -> torch.Tensor:
    """Inverse of :func:`opengl_c2w_to_viewmat`: OpenCV world-to-camera -> OpenGL camera-to-world."""
    viewmats = _as_pose(viewmats, "viewmats")
    return (_invert(viewmats) @ _GL_TO_CV).to(torch.float32)


def opencv_c2w_to_viewmat(c2w) -> torch.Tensor:
    """OpenCV camera-to-world [..., 4, 4] (or [..., 3, 4]) -> world-to-camera [..., 4, 4]."""
    return _invert(_as_pose(c2w, "c2w")).to(torch.float32)


def viewmat_to_opencv_c2w(viewmats) -> torch.Tensor:
    """World-to-camera -> OpenCV camera-to-world [..., 4, 4]."""
    return _invert(_as_pose(viewmats, "viewmats")).to(torch.float32)


def focal_from_fov(fov_rad: float, size: float) -> float:
    """Focal length in pixels for a full field of view ``fov_rad`` spanning ``size`` pixels.

    ``camera_angle_x`` of NeRF-synthetic is the horizontal FOV, so ``fx = focal_from_fov(angle, W)``.
    """
    if not 0.0 < fov_rad < math.pi:
        raise ValueError(f"fov_rad must be in (0, pi), got {fov_rad}")
    return 0.5 * size / math.tan(0.5 * fov_rad)


def fov_from_focal(focal: float, size: float) -> float:
    """Inverse of :func:`focal_from_fov`: full field of view in radians."""
    return 2.0 * math.atan(0.5 * size / focal)


def make_K(fx, fy, cx, cy) -> torch.Tensor:
    """Pixel intrinsics. Scalars give [3, 3]; tensors of a common shape [...] give [..., 3, 3]."""
    fx, fy, cx, cy = torch.broadcast_tensors(
        *(torch.as_tensor(v, dtype=torch.float32) for v in (fx, fy, cx, cy))
    )
    zero, one = torch.zeros_like(fx), torch.ones_like(fx)
    rows = [
        torch.stack([fx, zero, cx], dim=-1),
        torch.stack([zero, fy, cy], dim=-1),
        torch.stack([zero, zero, one], dim=-1),
    ]
    return torch.stack(rows, dim=-2)


def scale_Ks(Ks: torch.Tensor, factor: float) -> torch.Tensor:
    """Intrinsics of the image resized by ``factor`` (0.5 = half size): fx, fy, cx, cy all scale.

    Exact for pixel centres at +0.5 when the image is resized by area averaging of factor x factor
    blocks (cropping any remainder at the right / bottom).
    """
    Ks = torch.as_tensor(Ks, dtype=torch.float32).clone()
    Ks[..., :2, :] *= factor
    return Ks


def camera_centers(viewmats) -> torch.Tensor:
    """Camera centres in world coordinates [..., 3] from world-to-camera ``viewmats`` [..., 4, 4]."""
    viewmats = _as_pose(viewmats, "viewmats")
    R, t = viewmats[..., :3, :3], viewmats[..., :3, 3:]  # [..., 3, 3], [..., 3, 1]
    # C solves R C + t = 0; solve() instead of R^T keeps scaled poses right.
    return torch.linalg.solve(R, -t)[..., 0].to(torch.float32)


def pixel_rays(K: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Camera-space rays ``[H, W, 3]`` through the pixel centres (+0.5), OpenCV axes, with z = 1:
    a z-depth times the ray is the back-projected point. Dtype and device follow ``K`` [3, 3]."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=K.device, dtype=K.dtype) + 0.5,
        torch.arange(width, device=K.device, dtype=K.dtype) + 0.5,
        indexing="ij",
    )
    return torch.stack([(xs - K[0, 2]) / K[0, 0], (ys - K[1, 2]) / K[1, 1], torch.ones_like(xs)], -1)


def transform_viewmats(viewmats, transform) -> torch.Tensor:
    """World-to-camera matrices after the world is mapped by a similarity ``x' = transform @ x``.

    ``transform`` [4, 4] = [[s R0, t0], [0, 1]] (uniform scale s > 0, rotation R0). The camera keeps
    its orientation relative to the scene and its intrinsics; its centre moves to transform(C).
    The returned matrices are rigid (no scale): depths in the new frame are s times the old ones.
    """
    viewmats = _as_pose(viewmats, "viewmats")
    T = _as_pose(transform, "transform")
    A = T[:3, :3]
    s = torch.linalg.det(A).abs() ** (1.0 / 3.0)
    R0 = A / s
    c2w = _invert(viewmats)  # [..., 4, 4]
    new_c2w = c2w.clone()
    new_c2w[..., :3, :3] = R0 @ c2w[..., :3, :3]
    new_c2w[..., :3, 3] = (T[:3, :3] @ c2w[..., :3, 3:])[..., 0] + T[:3, 3]
    return _invert(new_c2w).to(torch.float32)


def look_at_viewmat(eye, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> torch.Tensor:
    """World-to-camera [4, 4] (OpenCV axes) of a camera at ``eye`` looking at ``target``.

    ``up`` is the world direction that appears upward in the image (Z up by default, as in
    NeRF-synthetic); it must not be parallel to the viewing direction.
    """
    eye = torch.as_tensor(eye, dtype=torch.float64)
    fwd = torch.as_tensor(target, dtype=torch.float64) - eye
    fwd = fwd / fwd.norm()
    right = torch.linalg.cross(fwd, torch.as_tensor(up, dtype=torch.float64))
    if right.norm() < 1e-9:
        raise ValueError("look_at_viewmat: up is parallel to the viewing direction")
    right = right / right.norm()
    down = torch.linalg.cross(fwd, right)
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, fwd, eye
    return _invert(c2w).to(torch.float32)


def project_points(points, viewmats, Ks) -> tuple[torch.Tensor, torch.Tensor]:
    """Project world points [P, 3] into cameras [V, 4, 4] / [V, 3, 3].

    Returns ``(uv, depth)``: pixel coordinates [V, P, 2] (pixel centres at +0.5) and camera-space
    z [V, P]. Points behind a camera get meaningless uv; check ``depth > 0``.
    """
    points = torch.as_tensor(points, dtype=torch.float32)
    viewmats = torch.as_tensor(viewmats, dtype=torch.float32)
    Ks = torch.as_tensor(Ks, dtype=torch.float32)
    cam = points @ viewmats[..., :3, :3].transpose(-1, -2) + viewmats[..., None, :3, 3]  # [V, P, 3]
    pix = cam @ Ks.transpose(-1, -2)  # [V, P, 3]
    depth = cam[..., 2]
    return pix[..., :2] / depth[..., None], depth
