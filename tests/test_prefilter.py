"""Prefiltered specular mips: normalization, blur, the shape of a linear map's prefilter, roughness interpolation."""

import pytest
import torch

from invrender.shading.light import cube_directions
from invrender.shading.prefilter import SpecularMips, downsample_cube, prefilter_matrix


def test_rows_are_normalized_and_constant_maps_stay_constant():
    M = prefilter_matrix(8, 0.5)
    ones = torch.ones(M.shape[1], 1)
    torch.testing.assert_close(M @ ones, ones)
    mips = SpecularMips(16, (0.0, 0.3, 1.0), divisors=(1, 2, 2))
    levels = mips.levels(torch.full((6, 16, 16, 3), 0.7))
    assert [lv.shape[1] for lv in levels] == [16, 8, 8]
    for lv in levels:
        torch.testing.assert_close(lv, torch.full_like(lv, 0.7))


def test_linear_map_prefilters_to_a_scaled_copy():
    # L(l) = b + a.l: by the lobe's symmetry about r, L_r(r) = b + k a.r with 0 < k < 1 shrinking
    # as roughness grows (the lobe's mean direction shortens)
    res = 16
    d = cube_directions(res).reshape(-1, 3)
    a = torch.tensor([0.3, -0.2, 0.5])
    L = (1.0 + d @ a)[:, None]
    ks = []
    for r in (0.3, 0.6, 1.0):
        out = (prefilter_matrix(res, r) @ L)[:, 0]
        k = (out - 1.0) / (d @ a)
        sel = (d @ a).abs() > 0.2  # away from a.r = 0 where the ratio is ill-conditioned
        spread = float(k[sel].std() / k[sel].mean())
        assert spread < 0.03, (r, spread)  # same k in every direction: texel discretization only
        ks.append(float(k[sel].mean()))
    assert 1.0 > ks[0] > ks[1] > ks[2] > 0.0, ks


def test_blur_grows_with_roughness_and_stays_centred():
    base = torch.full((6, 16, 16, 1), 0.01)
    base[4, 7:9, 7:9] = 100.0  # a small bright light around +Z
    mips = SpecularMips(16, (0.0, 0.2, 0.5, 1.0), divisors=(1, 2, 2, 4))
    levels = mips.levels(base)
    peaks = [float(lv.max()) for lv in levels]
    assert peaks[0] > peaks[1] > peaks[2] > peaks[3], peaks
    for lv in levels[1:]:
        assert int(lv[..., 0].argmax()) // lv.shape[1] ** 2 == 4  # the brightest prefiltered texel still looks at +Z
    z = torch.tensor([[0.0, 0.0, 1.0]])
    # interpolation in roughness: exact at the levels, between them in between
    vals = [float(mips.sample(levels, z, torch.tensor([r]))[0, 0]) for r in (0.2, 0.35, 0.5)]
    assert vals[0] > vals[1] > vals[2]


def test_gradients_reach_the_base_cube_and_downsample():
    cube = torch.rand(6, 16, 16, 3, requires_grad=True)
    mips = SpecularMips(16, (0.0, 0.4, 1.0), divisors=(1, 2, 4))
    dirs = torch.nn.functional.normalize(torch.randn(64, 3), dim=-1)
    mips.sample(mips.levels(cube), dirs, torch.rand(64)).sum().backward()
    assert cube.grad is not None and torch.isfinite(cube.grad).all() and cube.grad.abs().sum() > 0
    torch.testing.assert_close(downsample_cube(torch.ones(6, 16, 16, 2), 4), torch.ones(6, 4, 4, 2))


def test_custom_backward_matches_dense_autograd():
    from invrender.shading.prefilter import _ApplyPrefilter, _csr_pair

    M, Mt = _csr_pair(8, 0.5)
    x = torch.rand(M.shape[1], 3, dtype=torch.float64, requires_grad=True)
    up = torch.randn(M.shape[0], 3, dtype=torch.float64)  # one random upstream gradient
    (gx,) = torch.autograd.grad(_ApplyPrefilter.apply(x, M.double(), Mt.double()), x, up)
    dense = M.to_dense().double()
    (gref,) = torch.autograd.grad(dense @ x, x, up)
    torch.testing.assert_close(gx, gref)  # float64 sums of the same terms, different order


def test_matrices_are_cached_on_disk(tmp_path, monkeypatch):
    from invrender.shading import prefilter

    monkeypatch.setenv("INVRENDER_CACHE", str(tmp_path))
    prefilter.prefilter_matrix.cache_clear()
    try:
        first = prefilter.prefilter_matrix(8, 0.5)
        path = prefilter._matrix_cache_path(8, 0.5, 1e-2)
        assert path.is_file()
        # a second build (new process: no in-memory cache) loads from disk without recomputing
        prefilter.prefilter_matrix.cache_clear()
        with monkeypatch.context() as m:
            m.setattr(prefilter, "compute_prefilter_matrix", lambda *a, **k: pytest.fail("rebuilt despite the cache"))
            second = prefilter.prefilter_matrix(8, 0.5)
        assert torch.equal(first.indices(), second.indices()) and torch.equal(first.values(), second.values())
        # a corrupt file is rebuilt (and rewritten), not fatal
        for junk in (b"not a torch file", path.read_bytes()[:100]):
            path.write_bytes(junk)
            prefilter.prefilter_matrix.cache_clear()
            third = prefilter.prefilter_matrix(8, 0.5)
            assert torch.equal(first.indices(), third.indices()) and torch.equal(first.values(), third.values())
        prefilter.prefilter_matrix.cache_clear()
        assert prefilter._load_matrix(path, 6 * 8 * 8) is not None
        assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temporaries behind
    finally:
        prefilter.prefilter_matrix.cache_clear()  # later tests rebuild in memory from the real cache
