"""The split-sum BRDF table against direct quadrature of the project's own specular lobe."""

import math

import pytest
import torch

from invrender.shading.brdf import base_reflectance, cook_torrance
from invrender.shading.splitsum import brdf_lut, compute_brdf_lut, hammersley, specular_albedo


def test_hammersley_is_a_low_discrepancy_set():
    p = hammersley(8)
    torch.testing.assert_close(p[:, 1].sort().values, torch.arange(8, dtype=torch.float64) / 8)
    assert ((p >= 0) & (p < 1)).all()


def _quadrature_specular(n_dot_v, roughness, f0):
    """integral of the specular lobe times n.l over l, by midpoint quadrature in (theta, phi)."""
    nt, npf = 1500, 256
    th = (torch.arange(nt, dtype=torch.float64) + 0.5) * (0.5 * math.pi / nt)
    ph = (torch.arange(npf, dtype=torch.float64) + 0.5) * (2 * math.pi / npf)
    T, P = torch.meshgrid(th, ph, indexing="ij")
    dw = torch.sin(T) * (0.5 * math.pi / nt) * (2 * math.pi / npf)
    l = torch.stack([torch.sin(T) * torch.cos(P), torch.sin(T) * torch.sin(P), torch.cos(T)], -1)
    v = torch.tensor([math.sqrt(1 - n_dot_v**2), 0.0, n_dot_v], dtype=torch.float64)
    h = torch.nn.functional.normalize(l + v, dim=-1)
    # metallic 1 with albedo = F0 isolates the specular lobe
    f = cook_torrance(l[..., 2:3], torch.full_like(T, n_dot_v)[..., None], h[..., 2:3], (h * v).sum(-1, keepdim=True),
                      torch.full((3,), f0, dtype=torch.float64), torch.tensor([roughness], dtype=torch.float64),
                      torch.tensor([1.0], dtype=torch.float64))
    return float((f[..., 0] * l[..., 2] * dw).sum())


@pytest.mark.parametrize("n_dot_v,roughness", [(0.9, 0.5), (0.5, 0.7), (0.3, 0.9), (0.8, 0.35)])
def test_lut_matches_quadrature(n_dot_v, roughness):
    lut = compute_brdf_lut(32, 1024)
    for f0 in (0.04, 1.0):
        got = float(specular_albedo(torch.tensor([n_dot_v]), torch.tensor([roughness]), torch.tensor([[f0]]), lut)[0, 0])
        want = _quadrature_specular(n_dot_v, roughness, f0)
        # bilinear lookup between texel centres of a 32^2 table + Monte-Carlo noise of 1024 samples
        assert abs(got - want) < 0.02 * max(want, 0.05), (f0, got, want)


def test_lut_shape_range_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INVRENDER_CACHE", str(tmp_path))
    brdf_lut.cache_clear()
    lut = brdf_lut(16, 64)
    # A + B is the lobe's albedo for F0 = 1, at most 1 up to the Monte-Carlo error of this small
    # 64-sample table (~0.3 % away from grazing; the first column, n.v = 1/32, is far noisier)
    assert lut.shape == (16, 16, 2) and (lut >= 0).all()
    assert (lut[:, 1:].sum(-1) <= 1.01).all() and (lut.sum(-1) <= 1.05).all()
    files = list(tmp_path.glob("brdf_lut_*.pt"))
    assert len(files) == 1
    brdf_lut.cache_clear()
    torch.testing.assert_close(brdf_lut(16, 64), lut)  # read back from the file
    files[0].write_bytes(b"garbage")  # a corrupt cache is recomputed, not fatal
    brdf_lut.cache_clear()
    torch.testing.assert_close(brdf_lut(16, 64), lut)
    brdf_lut.cache_clear()
    assert base_reflectance(torch.tensor(0.5), torch.tensor(0.0)) == pytest.approx(0.04)
