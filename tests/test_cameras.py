"""Pins the camera conventions of invrender.cameras (DESIGN.md, "Conventions")."""

import math

import pytest
import torch

from invrender import cameras

W, H = 8, 6  # non-square on purpose: catches width/height swaps


def _K(fov_x=math.radians(60)):
    f = cameras.focal_from_fov(fov_x, W)
    return cameras.make_K(f, f, W / 2, H / 2)


def _project(point, viewmat, K):
    uv, depth = cameras.project_points(torch.tensor([point], dtype=torch.float32), viewmat[None], K[None])
    return uv[0, 0], float(depth[0, 0])


def _random_rigid(gen):
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    m = torch.eye(4, dtype=torch.float64)
    m[:3, :3], m[:3, 3] = q, torch.randn(3, generator=gen, dtype=torch.float64) * 3
    return m


def test_blender_camera_on_z_axis_sees_origin_at_centre():
    # Blender/OpenGL: identity rotation looks along -z, so a camera at (0, 0, 4) looks at the origin
    c2w = torch.eye(4)
    c2w[2, 3] = 4.0
    viewmat = cameras.opengl_c2w_to_viewmat(c2w)
    K = _K()
    uv, depth = _project([0.0, 0.0, 0.0], viewmat, K)
    torch.testing.assert_close(uv, torch.tensor([W / 2, H / 2]))
    assert depth == pytest.approx(4.0)
    uv_x, _ = _project([0.5, 0.0, 0.0], viewmat, K)  # +x world: right of centre
    assert uv_x[0] > W / 2 and uv_x[1] == pytest.approx(H / 2)
    uv_y, _ = _project([0.0, 0.5, 0.0], viewmat, K)  # +y world is the camera's up: above centre
    assert uv_y[1] < H / 2 and uv_y[0] == pytest.approx(W / 2)


def test_blender_camera_on_minus_y_with_z_up():
    # camera at (0, -4, 0) looking at the origin, world Z up (typical NeRF-synthetic frame)
    c2w = torch.tensor(
        [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, -4.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    )
    viewmat = cameras.opengl_c2w_to_viewmat(c2w)
    K = _K()
    uv, depth = _project([0.0, 0.0, 0.0], viewmat, K)
    torch.testing.assert_close(uv, torch.tensor([W / 2, H / 2]))
    assert depth == pytest.approx(4.0)
    assert _project([0.0, 0.0, 1.0], viewmat, K)[0][1] < H / 2  # world up -> image up
    assert _project([1.0, 0.0, 0.0], viewmat, K)[0][0] > W / 2  # world +x -> image right
    torch.testing.assert_close(viewmat, cameras.look_at_viewmat([0, -4, 0], [0, 0, 0], [0, 0, 1]))
    torch.testing.assert_close(cameras.camera_centers(viewmat), torch.tensor([0.0, -4.0, 0.0]))


def test_focal_length_matches_field_of_view():
    assert cameras.focal_from_fov(math.radians(90), 800) == pytest.approx(400.0)
    assert cameras.fov_from_focal(400.0, 800) == pytest.approx(math.radians(90))
    # a point on the edge of the horizontal FOV lands on the image border
    fov = math.radians(50)
    viewmat = cameras.look_at_viewmat([0, -4, 0], [0, 0, 0])
    x = 4 * math.tan(fov / 2)
    uv, _ = _project([x, 0.0, 0.0], viewmat, _K(fov))
    assert float(uv[0]) == pytest.approx(W, abs=1e-4)
    with pytest.raises(ValueError):
        cameras.focal_from_fov(0.0, 10)


def test_make_K_layout_and_batching():
    K = cameras.make_K(10.0, 11.0, 4.0, 3.0)
    assert K.shape == (3, 3) and K.dtype == torch.float32
    torch.testing.assert_close(K, torch.tensor([[10.0, 0, 4], [0, 11, 3], [0, 0, 1]]))
    Kb = cameras.make_K(torch.tensor([1.0, 2.0]), 3.0, 4.0, 5.0)
    assert Kb.shape == (2, 3, 3) and Kb[1, 0, 0] == 2 and Kb[0, 1, 1] == 3
    half = cameras.scale_Ks(K, 0.5)
    torch.testing.assert_close(half, torch.tensor([[5.0, 0, 2], [0, 5.5, 1.5], [0, 0, 1]]))


def test_round_trips_and_batches():
    gen = torch.Generator().manual_seed(0)
    c2w = torch.stack([_random_rigid(gen) for _ in range(5)])  # [5, 4, 4]
    viewmats = cameras.opengl_c2w_to_viewmat(c2w)
    assert viewmats.shape == (5, 4, 4) and viewmats.dtype == torch.float32
    torch.testing.assert_close(cameras.viewmat_to_opengl_c2w(viewmats).double(), c2w, atol=1e-5, rtol=1e-5)
    # OpenCV c2w = OpenGL c2w with the camera's y and z axes flipped
    cv_c2w = c2w @ torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(cameras.opencv_c2w_to_viewmat(cv_c2w), viewmats)
    torch.testing.assert_close(cameras.viewmat_to_opencv_c2w(viewmats).double(), cv_c2w, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cameras.camera_centers(viewmats).double(), c2w[:, :3, 3], atol=1e-5, rtol=1e-5)
    # 3x4 and numpy input are accepted
    torch.testing.assert_close(cameras.opengl_c2w_to_viewmat(c2w[0, :3].numpy()), viewmats[0])
    with pytest.raises(ValueError, match="c2w"):
        cameras.opengl_c2w_to_viewmat(torch.eye(3))


def test_transform_viewmats_keeps_the_image_of_transformed_points():
    gen = torch.Generator().manual_seed(1)
    viewmats = cameras.opengl_c2w_to_viewmat(torch.stack([_random_rigid(gen) for _ in range(3)]))
    T = _random_rigid(gen)
    T[:3, :3] *= 0.3  # similarity with scale 0.3
    pts = torch.randn(10, 3, generator=gen)
    Ks = _K().expand(3, 3, 3)
    uv0, d0 = cameras.project_points(pts, viewmats, Ks)
    new = cameras.transform_viewmats(viewmats, T)
    pts_new = (pts.double() @ T[:3, :3].T + T[:3, 3]).float()
    uv1, d1 = cameras.project_points(pts_new, new, Ks)
    torch.testing.assert_close(uv1, uv0, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(d1, 0.3 * d0, atol=1e-4, rtol=1e-4)
    # the result stays rigid
    R = new[:, :3, :3]
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3).expand(3, 3, 3), atol=1e-5, rtol=0)
    centers = cameras.camera_centers(viewmats).double()
    torch.testing.assert_close(
        cameras.camera_centers(new).double(), centers @ T[:3, :3].T + T[:3, 3], atol=1e-4, rtol=1e-4
    )

