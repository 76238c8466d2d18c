"""Native projection and SH colour kernels (cuda/project.h) against their torch twins.

Every comparison feeds one random upstream gradient per differentiable output to both
implementations and compares the outputs and the input gradients, in float64.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from invrender.splat.project import project_gaussians
from invrender.splat.sh import sh_colors

pytestmark = pytest.mark.skipif(shutil.which("c++") is None, reason="needs a C++ compiler")


def make_camera(width, height, f=(90.0, 70.0), c=None, seed=0, dtype=torch.float64):
    """A world-to-camera rotation + translation looking at the origin from ~4 units away, and
    intrinsics with a principal point that may be off-centre."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(4, generator=g, dtype=torch.float64)
    q = q / q.norm()
    w, x, y, z = q.tolist()
    R = torch.tensor([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ], dtype=torch.float64)
    viewmat = torch.eye(4, dtype=torch.float64)
    viewmat[:3, :3] = R
    viewmat[:3, 3] = torch.tensor([0.1, -0.2, 4.0], dtype=torch.float64)  # origin 4 units ahead
    cx, cy = c if c is not None else (width / 2, height / 2)
    K = torch.tensor([[f[0], 0, cx], [0, f[1], cy], [0, 0, 1.0]], dtype=torch.float64)
    return viewmat.to(dtype), K.to(dtype)


def make_gaussians(n, seed=0, dtype=torch.float64, spread=2.5):
    """Random Gaussians around the origin: many in view, some behind the camera (world points
    beyond the camera centre), some far off-screen (clamped Jacobian), unnormalized quats, a
    few needles (tiny scales) and giants (huge scales)."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g, dtype=torch.float64) * 2 - 1) * spread
    far = torch.rand(n, generator=g, dtype=torch.float64) < 0.15
    means[far] *= 6.0  # well outside the frustum, and some behind the camera
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64) * (0.2 + 3 * torch.rand(n, 1, generator=g, dtype=torch.float64))
    scales = 0.01 + 0.2 * torch.rand(n, 3, generator=g, dtype=torch.float64)
    kind = torch.rand(n, generator=g, dtype=torch.float64)
    scales[kind < 0.05] = 1e-6  # needles: the 2D footprint is the eps2d dilation alone
    scales[(kind >= 0.05) & (kind < 0.1)] *= 1e3  # giants: radii of thousands of pixels
    flat = (kind >= 0.1) & (kind < 0.15)
    scales[flat, 2] = 1e-7  # flat discs
    return [t.to(dtype) for t in (means, quats, scales)]


def run_project(backend, means, quats, scales, viewmat, K, width, height, upstream=None, **kw):
    inputs = [t.detach().clone().requires_grad_(True) for t in (means, quats, scales)]
    p = project_gaussians(*inputs, viewmat, K, width, height, backend=backend, **kw)
    outs = (p.means2d, p.conics, p.depths)
    if upstream is None:
        upstream = [torch.randn_like(o) for o in outs]
    grads = torch.autograd.grad(outs, inputs, upstream)
    return p, grads, upstream


def assert_project_parity(ref, nat, rtol, atol):
    (p_ref, g_ref, _), (p_nat, g_nat, _) = ref, nat
    assert torch.equal(p_ref.radii, p_nat.radii)
    assert p_nat.radii.dtype == torch.int32
    for name in ("means2d", "conics", "depths"):
        torch.testing.assert_close(getattr(p_nat, name), getattr(p_ref, name), rtol=rtol, atol=atol, msg=name)
    for name, a, b in zip(("means", "quats", "scales"), g_ref, g_nat):
        torch.testing.assert_close(b, a, rtol=rtol, atol=atol, msg=f"d/d{name}")


CASES = [
    # n, width, height, principal point (None = centre), eps2d
    (400, 64, 48, None, 0.3),
    (400, 40, 90, (7.0, 70.5), 0.3),  # tall image, principal point far off-centre
    (300, 128, 128, (80.0, 20.0), 0.0),  # no dilation: needles fail the det test and are culled
    (1, 16, 16, None, 0.3),
]


@pytest.mark.parametrize("n,width,height,c,eps2d", CASES)
def test_projection_native_matches_torch(n, width, height, c, eps2d):
    viewmat, K = make_camera(width, height, c=c, seed=n)
    means, quats, scales = make_gaussians(n, seed=n + width)
    if n == 1:  # a lone Gaussian in view
        means, scales = torch.zeros_like(means), torch.full_like(scales, 0.1)
    ref = run_project("torch", means, quats, scales, viewmat, K, width, height, eps2d=eps2d)
    nat = run_project("native", means, quats, scales, viewmat, K, width, height, upstream=ref[2], eps2d=eps2d)
    # float64 on both sides, same formulas; they differ only in rounding order (and in d tx/dz,
    # which the twin gets as x/z - z x/z^2 and the kernel as an exact 0), ~1e-13 relative
    assert_project_parity(ref, nat, rtol=1e-9, atol=1e-9)
    assert (ref[0].radii > 0).any() and all(g.abs().max() > 0 for g in ref[1])
    if n > 1:  # the scene exercises what it claims to
        radii, depths = ref[0].radii, (means @ viewmat[:3, :3].T + viewmat[:3, 3])[:, 2]
        assert (radii > 0).sum() > n // 4
        assert ((depths < 0.01) & (radii == 0)).any()  # behind the camera
        assert ((depths > 0.01) & (radii == 0)).any()  # off-screen or degenerate
        assert (radii > 1000).any()  # giants


def test_projection_culled_get_constants_and_zero_gradient():
    viewmat, K = make_camera(32, 24, seed=3)
    means, quats, scales = make_gaussians(200, seed=5)
    p, grads, _ = run_project("native", means, quats, scales, viewmat, K, 32, 24)
    culled = p.radii == 0
    z = (means @ viewmat[:3, :3].T + viewmat[:3, 3])[:, 2]
    behind = z <= 0.01
    assert culled.any() and behind.any()
    assert (p.means2d[culled] == 0).all() and (p.depths[culled] == 0).all()
    assert (p.conics[behind] == 1).all()
    for g in grads:
        assert torch.isfinite(g).all()
        assert (g[behind] == 0).all()


def test_projection_near_far_and_empty():
    viewmat, K = make_camera(32, 24, seed=1)
    means, quats, scales = make_gaussians(100, seed=2)
    for kw in (dict(near_plane=3.5), dict(far_plane=4.2)):
        ref = run_project("torch", means, quats, scales, viewmat, K, 32, 24, **kw)
        nat = run_project("native", means, quats, scales, viewmat, K, 32, 24, upstream=ref[2], **kw)
        assert_project_parity(ref, nat, rtol=1e-9, atol=1e-9)  # float64, rounding order only
    empty = [t[:0] for t in (means, quats, scales)]
    p = project_gaussians(*empty, viewmat, K, 32, 24, backend="native")
    assert p.means2d.shape == (0, 2) and p.radii.shape == (0,)


def test_projection_float32_close_to_float64_reference():
    viewmat, K = make_camera(64, 48, seed=4)
    means, quats, scales = make_gaussians(300, seed=4)
    scales = scales.clamp(max=1.0)  # keep float32 away from cancellation in the huge-det giants
    ref = run_project("torch", means, quats, scales, viewmat, K, 64, 48)
    up32 = [u.float() for u in ref[2]]
    nat = run_project("native", *(t.float() for t in (means, quats, scales)), viewmat.float(), K.float(), 64, 48, upstream=up32)
    assert nat[0].means2d.dtype == torch.float32
    same = ref[0].radii == nat[0].radii
    # a radius may round to the neighbouring integer (ceil) in float32; everything else agrees
    assert same.float().mean() > 0.97
    keep = same & (ref[0].radii > 0)
    for name in ("means2d", "conics", "depths"):
        # float32 rounding (fast-math) of O(1..100) values: relative ~1e-5
        torch.testing.assert_close(getattr(nat[0], name)[keep].double(), getattr(ref[0], name)[keep], rtol=1e-3, atol=1e-3)


def test_projection_validation():
    viewmat, K = make_camera(16, 16)
    means, quats, scales = make_gaussians(4)
    with pytest.raises(ValueError, match="backend"):
        project_gaussians(means, quats, scales, viewmat, K, 16, 16, backend="vulkan")
    with pytest.raises(ValueError, match="viewmat"):
        project_gaussians(means, quats, scales, viewmat.clone().requires_grad_(), K, 16, 16, backend="native")
    # auto falls back to the twin when the camera needs gradients
    vm = viewmat.clone().requires_grad_()
    p = project_gaussians(means, quats, scales, vm, K, 16, 16, backend="auto")
    assert p.means2d.grad_fn is not None
    with pytest.raises(ValueError, match="quats must be"):
        project_gaussians(means, quats[:, :3], scales, viewmat, K, 16, 16, backend="native")


def test_projection_native_is_deterministic():
    viewmat, K = make_camera(64, 48, seed=6)
    means, quats, scales = (t.float() for t in make_gaussians(5000, seed=6))
    a = run_project("native", means, quats, scales, viewmat.float(), K.float(), 64, 48)
    b = run_project("native", means, quats, scales, viewmat.float(), K.float(), 64, 48, upstream=a[2])
    for x, y in zip(list(a[0]) + list(a[1]), list(b[0]) + list(b[1])):
        assert torch.equal(x, y)


# ---- SH colour ----


def make_sh(n, k, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    coeffs = torch.randn(n, k, 3, generator=g, dtype=torch.float64) * 0.6
    dirs = torch.randn(n, 3, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    return coeffs.to(dtype), dirs.to(dtype)


def run_sh(backend, degree, coeffs, dirs, upstream=None):
    c = coeffs.detach().clone().requires_grad_(True)
    out = sh_colors(degree, c, dirs, backend=backend)
    if upstream is None:
        upstream = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, c, upstream)
    return out, grad, upstream


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
@pytest.mark.parametrize("k", [None, 16])  # exactly (degree+1)^2 bases, or extra ones ignored
def test_sh_native_matches_torch(degree, k):
    coeffs, dirs = make_sh(500, k or (degree + 1) ** 2, seed=degree)
    ref = run_sh("torch", degree, coeffs, dirs)
    nat = run_sh("native", degree, coeffs, dirs, upstream=ref[2])
    assert (ref[0] == 0).any() and (ref[0] > 0).any()  # some channels are clamped
    # float64, a sum of at most 16 products: agreement to rounding
    torch.testing.assert_close(nat[0], ref[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(nat[1], ref[1], rtol=1e-12, atol=1e-12)
    if k == 16 and degree < 3:
        assert (nat[1][:, (degree + 1) ** 2 :] == 0).all()


def test_non_finite_inputs_behave_like_torch():
    # the kernels are built with -ffast-math; NaN must still propagate (SH, like torch.clamp)
    # or cull (projection), because training detects corrupted parameters that way
    coeffs, dirs = make_sh(20, 16, seed=2)
    coeffs[3, 0, 1] = float("nan")
    coeffs[5, 2, 0] = float("inf")
    for dtype in (torch.float64, torch.float32):
        ref = sh_colors(3, coeffs.to(dtype), dirs.to(dtype), backend="torch")
        nat = sh_colors(3, coeffs.to(dtype), dirs.to(dtype), backend="native")
        torch.testing.assert_close(nat, ref, equal_nan=True)  # same values, same NaN / inf positions
        assert nat[3, 1].isnan()
    viewmat, K = make_camera(32, 24, seed=2)
    means, quats, scales = make_gaussians(50, seed=2)
    means[0, 1] = float("nan")
    quats[1, 2] = float("nan")
    scales[2, 0] = float("nan")
    scales[3, 1] = float("inf")
    ref = run_project("torch", means, quats, scales, viewmat, K, 32, 24)
    nat = run_project("native", means, quats, scales, viewmat, K, 32, 24, upstream=ref[2])
    assert (ref[0].radii[:4] == 0).all()  # non-finite Gaussians are culled by both
    for x, y in zip(ref[0], nat[0]):
        torch.testing.assert_close(y, x, rtol=1e-9, atol=1e-9)  # float64, rounding order only
    # gradients: the twin's autograd multiplies the masked-out upstream (0) by NaN partials and
    # returns NaN for these rows; the kernel selects instead and returns 0 (parameters are
    # checked for finiteness by training anyway). Elsewhere the two agree.
    for x, y in zip(ref[1], nat[1]):
        assert (y[:4] == 0).all() and torch.isfinite(y).all()
        torch.testing.assert_close(y[4:], x[4:], rtol=1e-9, atol=1e-9)


def test_sh_float32_and_validation():
    coeffs, dirs = make_sh(200, 16, seed=9)
    ref = run_sh("torch", 3, coeffs, dirs)
    nat = run_sh("native", 3, coeffs.float(), dirs.float(), upstream=ref[2].float())
    torch.testing.assert_close(nat[0].double(), ref[0], rtol=1e-5, atol=1e-5)  # float32 rounding
    with pytest.raises(ValueError, match="needs 16"):
        sh_colors(3, coeffs[:, :9], dirs, backend="native")
    with pytest.raises(ValueError, match="dirs"):
        sh_colors(3, coeffs, dirs.clone().requires_grad_(), backend="native")
    out = sh_colors(3, coeffs, dirs.clone().requires_grad_(), backend="auto")  # falls back to torch
    assert out.grad_fn is not None


# ---- in the renderer ----


def test_render_view_native_matches_torch_and_keeps_means2d_grad():
    from invrender.splat.gaussians import render_view

    width, height = 40, 30
    viewmat, K = make_camera(width, height, seed=12)
    means, quats, scales = make_gaussians(300, seed=12, spread=1.0)
    g = torch.Generator().manual_seed(12)
    params = {
        "means": means, "quats": quats, "scales": torch.log(scales.clamp(max=0.3)),
        "opacities": torch.randn(300, generator=g, dtype=torch.float64),
        "sh0": torch.randn(300, 1, 3, generator=g, dtype=torch.float64),
        "shN": 0.3 * torch.randn(300, 15, 3, generator=g, dtype=torch.float64),
    }
    upstream = torch.randn(height, width, 3, generator=g, dtype=torch.float64)
    results = {}
    for backend in ("torch", "native"):
        leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        out = render_view(leaves, viewmat, K, width, height, 3, torch.ones(3, dtype=torch.float64), backend)
        (out.rgb * upstream).sum().backward()
        assert out.projected.means2d.grad is not None  # read by the densification strategy
        results[backend] = (out.rgb, out.projected.means2d.grad, {k: v.grad for k, v in leaves.items()})
    (rgb_t, m2_t, g_t), (rgb_n, m2_n, g_n) = results["torch"], results["native"]
    # float64 end to end: projection, SH and compositing each agree to ~1e-12
    torch.testing.assert_close(rgb_n, rgb_t, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(m2_n, m2_t, rtol=1e-9, atol=1e-9)
    for k in params:
        torch.testing.assert_close(g_n[k], g_t[k], rtol=1e-8, atol=1e-9, msg=k)


# ---- CUDA ----


@pytest.mark.gpu
def test_projection_and_sh_native_cuda_match_torch():
    viewmat, K = make_camera(64, 48, c=(20.0, 30.0), seed=8)
    means, quats, scales = make_gaussians(2000, seed=8)
    ref = run_project("torch", means, quats, scales, viewmat, K, 64, 48)
    cuda = [t.cuda() for t in (means, quats, scales, viewmat, K)]
    nat = run_project("native", *cuda, 64, 48, upstream=[u.cuda() for u in ref[2]])
    nat = (type(nat[0])(*(t.cpu() for t in nat[0])), [g.cpu() for g in nat[1]], None)
    # float64 on the GPU; same formulas as the CPU twin up to rounding order and FMA contraction
    assert_project_parity(ref, nat, rtol=1e-9, atol=1e-9)

    coeffs, dirs = make_sh(2000, 16, seed=8)
    ref = run_sh("torch", 3, coeffs, dirs)
    out, grad, _ = run_sh("native", 3, coeffs.cuda(), dirs.cuda(), upstream=ref[2].cuda())
    torch.testing.assert_close(out.cpu(), ref[0], rtol=1e-12, atol=1e-12)  # float64, <= 16 terms
    torch.testing.assert_close(grad.cpu(), ref[1], rtol=1e-12, atol=1e-12)
