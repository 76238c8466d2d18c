"""Projection and SH: closed-form checks."""

import math

import pytest
import torch

from invrender.splat.project import covariance_3d, project_gaussians, quat_to_rotmat
from invrender.splat.sh import eval_sh, rgb_to_sh0, sh_basis


def _camera(z=4.0, f=100.0, w=64, h=48):
    viewmat = torch.eye(4)
    viewmat[2, 3] = z  # camera at (0, 0, -z) looking down +z (OpenCV)
    K = torch.tensor([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]])
    return viewmat, K, w, h


def test_quat_to_rotmat_is_rotation():
    q = torch.randn(50, 4, dtype=torch.float64)
    R = quat_to_rotmat(q)
    eye = torch.eye(3, dtype=torch.float64).expand(50, 3, 3)
    torch.testing.assert_close(R @ R.transpose(1, 2), eye)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(50, dtype=torch.float64))
    # 90 degrees about z maps x to y
    s = math.sqrt(0.5)
    Rz = quat_to_rotmat(torch.tensor([[s, 0, 0, s]], dtype=torch.float64))[0]
    torch.testing.assert_close(Rz @ torch.tensor([1.0, 0, 0], dtype=torch.float64), torch.tensor([0.0, 1, 0], dtype=torch.float64))


def test_projection_of_isotropic_gaussian_matches_pinhole():
    viewmat, K, w, h = _camera()
    means = torch.tensor([[0.0, 0.0, 0.0], [0.4, -0.2, 1.0]])
    quats = torch.tensor([[1.0, 0, 0, 0], [0.3, 0.2, -0.5, 0.1]])
    scales = torch.full((2, 3), 0.05)
    p = project_gaussians(means, quats, scales, viewmat, K, w, h, eps2d=0.0)
    # centre of the image for the origin; pinhole for the second point
    torch.testing.assert_close(p.means2d[0], torch.tensor([w / 2, h / 2]))
    torch.testing.assert_close(p.means2d[1], torch.tensor([100 * 0.4 / 5 + w / 2, 100 * -0.2 / 5 + h / 2]))
    torch.testing.assert_close(p.depths, torch.tensor([4.0, 5.0]))
    # an isotropic 3D Gaussian of std s at depth z on the axis has a 2D std of f s / z
    sigma = 100 * 0.05 / 4
    torch.testing.assert_close(p.conics[0], torch.tensor([1 / sigma**2, 0.0, 1 / sigma**2]), rtol=1e-4, atol=1e-6)
    assert p.radii[0] == math.ceil(3 * sigma)


def test_projection_culls_behind_camera_and_offscreen():
    viewmat, K, w, h = _camera()
    means = torch.tensor([[0.0, 0.0, -5.0], [100.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    quats = torch.tensor([[1.0, 0, 0, 0]]).repeat(3, 1)
    scales = torch.full((3, 3), 0.05)
    p = project_gaussians(means.requires_grad_(), quats, scales, viewmat, K, w, h)
    assert p.radii.tolist()[:2] == [0, 0] and p.radii[2] > 0
    (p.means2d.sum() + p.conics.sum() + p.depths.sum()).backward()
    assert torch.isfinite(means.grad).all()


def test_projection_gradients_match_finite_differences():
    viewmat, K, w, h = _camera()
    viewmat = viewmat.double()
    K = K.double()
    torch.manual_seed(0)
    means = (torch.randn(5, 3, dtype=torch.float64) * 0.3).requires_grad_()
    quats = torch.randn(5, 4, dtype=torch.float64).requires_grad_()
    scales = (torch.rand(5, 3, dtype=torch.float64) * 0.1 + 0.02).requires_grad_()

    def f(m, q, s):
        p = project_gaussians(m, q, s, viewmat, K, w, h)
        return p.means2d, p.conics, p.depths

    torch.autograd.gradcheck(f, (means, quats, scales))


def test_covariance_is_symmetric_positive():
    q = torch.randn(20, 4)
    s = torch.rand(20, 3) + 0.01
    cov = covariance_3d(q, s)
    torch.testing.assert_close(cov, cov.transpose(1, 2))
    assert (torch.linalg.eigvalsh(cov) > 0).all()


def test_sh_basis_orthonormal():
    # Monte-Carlo integral of Y_i Y_j over the sphere ~ identity
    g = torch.Generator().manual_seed(0)
    d = torch.randn(400_000, 3, generator=g, dtype=torch.float64)
    d = d / d.norm(dim=-1, keepdim=True)
    Y = sh_basis(3, d)  # [M, 16]
    gram = (Y.T @ Y) * (4 * math.pi / d.shape[0])
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=0.02, rtol=0)  # MC error ~ 1/sqrt(M)


def test_sh_dc_colour_round_trip():
    rgb = torch.rand(10, 3)
    coeffs = torch.zeros(10, 16, 3)
    coeffs[:, 0] = rgb_to_sh0(rgb)
    d = torch.nn.functional.normalize(torch.randn(10, 3), dim=-1)
    torch.testing.assert_close(eval_sh(3, coeffs, d) + 0.5, rgb)
    with pytest.raises(ValueError, match="degree"):
        sh_basis(4, d)
