"""The two-tap specular table: it is what the fitter produces, continuous, better than one lookup,
and joins the single dominant-direction lookup without a seam below roughness 0.25."""

import pytest
import torch
import torch.nn.functional as F

from invrender.shading import specular_taps as S
from invrender.shading.light import EnvironmentLight
from invrender.shading.prefilter import SpecularMips
from invrender.shading.shade import GBuffer, shade


@pytest.fixture(scope="module")
def table():
    return S.load_table().double()


def _single(r):
    s = float(S.dominant_blend(torch.tensor(r)))
    return [s, r, s, r, 0.5]


@pytest.mark.parametrize("k", [0, 40, 100])  # the first cell (fixed start) and two continued from a neighbour
def test_refit_reproduces_the_shipped_cells(table, k):
    i, j, nb = S.fit_order()[k]
    rs, nvs = S.roughness_nodes().tolist(), S.nv_nodes().tolist()
    init = S.initial_guess(rs[i]) if nb is None else table[nb].tolist()
    p, err = S.fit_cell(nvs[j], rs[i], init)
    torch.testing.assert_close(torch.tensor(p, dtype=torch.float64), table[i, j], atol=1e-4, rtol=0)
    assert err < S.lobe_error(S.Quadrature(nvs[j]), rs[i], _single(rs[i]))  # and it beats one lookup


def test_table_is_continuous_and_beats_one_lookup(table):
    # between any two neighbouring cells the bilinearly interpolated taps still fit the lobe about as
    # well as the cells do (neighbours jumping between solutions would not)
    nvs, rs = S.nv_nodes().tolist(), S.roughness_nodes().tolist()
    errs = {}

    def err_at(nv, r):
        if (nv, r) not in errs:
            p = S.tap_params(torch.tensor([nv]), torch.tensor([r]), table)[0].tolist()
            q = S.Quadrature(nv)
            errs[(nv, r)] = (S.lobe_error(q, r, p), S.lobe_error(q, r, _single(r)))
        return errs[(nv, r)]

    for i in range(S.N_ROUGH):
        for j in range(S.N_NV):
            e, single = err_at(nvs[j], rs[i])
            assert e < single, (i, j)
            for i2, j2 in ((i + 1, j), (i, j + 1)):
                if i2 < S.N_ROUGH and j2 < S.N_NV:
                    e_mid, single_mid = err_at((nvs[j] + nvs[j2]) / 2, (rs[i] + rs[i2]) / 2)
                    assert e_mid < max(e, err_at(nvs[j2], rs[i2])[0]) + 0.03, (i, j, i2, j2, e_mid)
                    assert e_mid < single_mid, (i, j, i2, j2)


def test_fallback_blend_is_seamless():
    nv = torch.linspace(0.05, 1.0, 40)
    lo, hi, eps = S.FALLBACK_START, S.FIT_MIN_ROUGHNESS, 1e-4
    # below the band: exactly the single dominant-direction lookup
    for r in (0.0, 0.1, lo):
        p = S.tap_params(nv, torch.full_like(nv, r))
        torch.testing.assert_close(p, torch.tensor(_single(r)).expand_as(p))
    # across both ends of the band: no jump (the parameters move by O(eps))
    for r in (lo, hi):
        a = S.tap_params(nv, torch.full_like(nv, r - eps))
        b = S.tap_params(nv, torch.full_like(nv, r + eps))
        assert float((a - b).abs().max()) < 100 * eps, r
    # and the band itself moves smoothly: no step between consecutive roughness samples
    rs = torch.linspace(lo - 0.01, hi + 0.01, 141)
    p = torch.stack([S.tap_params(nv, torch.full_like(nv, float(r))) for r in rs])  # [R, N, 5]
    assert float((p[1:] - p[:-1]).abs().max()) < 0.03


def test_shade_is_continuous_in_roughness_and_gradients_flow():
    torch.manual_seed(0)
    light = EnvironmentLight(resolution=16)
    with torch.no_grad():
        light.log_radiance.normal_(0.0, 1.0)
    mips = SpecularMips(16, (0.0, 0.4, 1.0), divisors=(1, 2, 4))
    n = F.normalize(torch.randn(64, 3), dim=-1)
    view = -F.normalize(n + 0.6 * torch.randn(64, 3), dim=-1)

    def spec(r, **kw):
        g = GBuffer(albedo=torch.full((64, 3), 0.8), roughness=torch.full((64, 1), r), metallic=torch.ones(64, 1),
                    normal=n, alpha=torch.ones(64, 1))
        for k, v in kw.items():
            setattr(g, k, v)
        return shade(g, light, view, mips=mips).specular, g

    with torch.no_grad():
        # a seam would be a jump that stays as the step shrinks; here the change shrinks with it
        for r in (S.FALLBACK_START, S.FIT_MIN_ROUGHNESS):
            jump = [float((spec(r + eps)[0] - spec(r - eps)[0]).abs().max()) for eps in (1e-3, 1e-4)]
            assert jump[1] < 0.2 * jump[0] + 1e-5, (r, jump)
    rough = torch.full((64, 1), 0.6, requires_grad=True)
    normal = n.clone().requires_grad_(True)
    out, _ = spec(0.6, roughness=rough, normal=normal)
    out.sum().backward()
    for t in (rough.grad, normal.grad, light.log_radiance.grad):
        assert t is not None and torch.isfinite(t).all() and t.abs().sum() > 0


def test_gradients_stay_finite_at_the_ends_of_the_roughness_range():
    # a G-buffer clamps roughness to [0, 1]; at exactly 1 the dominant-direction blend once gave
    # 0 * inf = NaN in its backward, which trained into the Gaussians (found at step 6278 of a run)
    light = EnvironmentLight(resolution=16)
    mips = SpecularMips(16, (0.0, 0.4, 1.0), divisors=(1, 2, 4))
    n = F.normalize(torch.randn(6, 3, generator=torch.Generator().manual_seed(1)), dim=-1)
    raw = torch.tensor([[-0.2], [0.0], [0.5], [0.99], [1.0], [1.3]], requires_grad=True)
    g = GBuffer(albedo=torch.full((6, 3), 0.8), roughness=raw.clamp(0, 1), metallic=torch.ones(6, 1),
                normal=n, alpha=torch.ones(6, 1))
    shade(g, light, -n, mips=mips).pbr.sum().backward()
    assert torch.isfinite(raw.grad).all()
    r = torch.tensor([0.0, 1.0], requires_grad=True)
    S.dominant_blend(r).sum().backward()
    assert torch.isfinite(r.grad).all()
    torch.testing.assert_close(S.dominant_blend(torch.tensor([0.0, 1.0])), torch.tensor([1.0, 0.0]))
