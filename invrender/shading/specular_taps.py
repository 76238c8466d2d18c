"""Two prefiltered lookups per pixel for the split-sum specular of rough surfaces.

The split sum reads the prefiltered light once, along one direction, with a lobe that was built
for n = v = r: an isotropic GGX lobe. The true reflected lobe D V (n.l) of a rough surface seen
off-normal is neither isotropic nor centred on any one direction (it leans towards the normal
and is squashed by the horizon), and for a rough metal -- whose whole colour is that lobe -- the
best single lookup caps the error at ~34 dB against a path tracer. A weighted sum of two
lookups, a wider one nearer the normal and a narrower one nearer the mirror direction, fits the
lobe much better:

    L_spec ~ sum_k w_k L_pref(normalize(n + g_k (r - n)), r_k)       (w_1 + w_2 = 1)

with r the mirror direction and L_pref the prefiltered light (:class:`SpecularMips`); the two
lookups share the split-sum factor F0 A + B, so the DFG table keeps the energy. The per-tap blend
g_k, roughness r_k and weight w_k depend on (n.v, roughness) through a small table shipped with
the package (``specular_taps.json``, fitted offline by ``scripts/fit_specular_taps.py`` with the
functions below) and read bilinearly, so gradients reach the normal and the roughness as well.

The table covers roughness >= :data:`FIT_MIN_ROUGHNESS`; below it (glossy lobes, which one lookup
along Lagarde's dominant direction already serves well and where two-lobe fits become
ill-conditioned) both taps collapse onto that single lookup, with the parameters blended over
[:data:`FALLBACK_START`, :data:`FIT_MIN_ROUGHNESS`] so there is no seam.

Fitting: per table cell, the L2 distance between the normalized true lobe D V (n.l) and the
normalized two-tap mixture of prefilter lobes D(h about d_k) (d_k.l), on a polar quadrature
about the mirror direction (dense near it), minimized by L-BFGS over (g_k, r_k in (0, 1), w_1 in
(0, 1)); cells are visited in a fixed order -- the smoothest row first, then row by row towards
roughness 1 -- each started from its already-fitted neighbour with a weak pull towards it, which
keeps the table continuous where the lobe leaves a parameter undetermined (e.g. g at n.v -> 1).
The shipped 16 x 8 table fits in ~10 s on one core and halves the mean relative lobe error of the
single dominant-direction lookup (0.19 vs 0.37); on the Mitsuba sphere test
(tests/test_forward_model.py) the rough metal goes from 33.1 to 36.1 dB.

Cost: two lookups instead of one add ~14 ms to shade() forward + backward on a 128² buffer with
a 128² learnable light (1 thread: ~34 -> ~48 ms).
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from invrender.shading.brdf import ggx_alpha, ggx_ndf, smith_visibility

TAPS_VERSION = 1
TABLE_PATH = Path(__file__).with_name("specular_taps.json")
FIT_MIN_ROUGHNESS = 0.25  # the table's first roughness row
FALLBACK_START = 0.2  # below this, both taps are today's single dominant-direction lookup
N_NV, N_ROUGH = 16, 8  # table size (n.v at cell centres (i + 0.5) / N_NV; roughness 0.25 .. 1 inclusive)
PARAMS = ("g1", "r1", "g2", "r2", "w1")  # per cell; w2 = 1 - w1
FREE_WEIGHT = True  # fit w1 (else both taps keep weight 1/2: ~0.4 dB worse on the rough-metal test)
PROX = 1e-4  # weak pull of each cell's fit towards its neighbour's solution (relative-L2 units)


def nv_nodes() -> Tensor:
    return (torch.arange(N_NV, dtype=torch.float64) + 0.5) / N_NV


def roughness_nodes() -> Tensor:
    return torch.linspace(FIT_MIN_ROUGHNESS, 1.0, N_ROUGH, dtype=torch.float64)


def dominant_blend(roughness: Tensor) -> Tensor:
    """Lagarde & de Rousiers' (2014) dominant-direction blend s(alpha): lookup along normalize(n + s (r - n))."""
    alpha = roughness * roughness
    rest = (1.0 - alpha).clamp(min=0.0)
    # (1 - a)^1.5 rather than (1 - a) sqrt(1 - a): at roughness 1 (a clamped G-buffer value) the
    # latter's backward is 0 * inf = NaN, which reached the Gaussians in training
    return rest.pow(1.5) + alpha * rest


# ----------------------------------------------------------------------------------------- fitting


class Quadrature:
    """Directions ``l [Q, 3]`` and weights ``[Q]`` for lobes in the (x, z) plane with n = +z, v = (sin t, 0, cos t):
    a polar grid about the mirror direction m = (-sin t, 0, cos t), theta' = pi u^3 (dense near m),
    over the half sphere y >= 0 (every lobe here is symmetric about the plane y = 0)."""

    def __init__(self, nv: float, n_u: int = 64, n_phi: int = 24):
        dt = torch.float64
        self.nv = float(nv)
        sin_t, cos_t = math.sqrt(max(0.0, 1.0 - nv * nv)), float(nv)
        u = (torch.arange(n_u, dtype=dt) + 0.5) / n_u
        th = math.pi * u**3
        dth = 3 * math.pi * u**2 / n_u
        ph = (torch.arange(n_phi, dtype=dt) + 0.5) * (math.pi / n_phi)
        TH, PH = torch.meshgrid(th, ph, indexing="ij")
        self.w = (torch.sin(TH) * dth[:, None] * (math.pi / n_phi)).reshape(-1)
        a, b, c = torch.sin(TH) * torch.cos(PH), torch.sin(TH) * torch.sin(PH), torch.cos(TH)
        m = torch.tensor([-sin_t, 0.0, cos_t], dtype=dt)
        e1 = torch.tensor([cos_t, 0.0, sin_t], dtype=dt)
        e2 = torch.tensor([0.0, 1.0, 0.0], dtype=dt)
        self.l = (a.reshape(-1, 1) * e1 + b.reshape(-1, 1) * e2 + c.reshape(-1, 1) * m)  # [Q, 3]
        self.v = torch.tensor([sin_t, 0.0, cos_t], dtype=dt)
        self.sin_t, self.cos_t = sin_t, cos_t


def _normalized(p: Tensor, w: Tensor) -> Tensor:
    return p / (p * w).sum(-1, keepdim=True).clamp(min=1e-30)


def target_lobe(q: Quadrature, roughness: float) -> Tensor:
    """The true specular lobe D V (n.l) over ``q.l`` (no Fresnel), normalized to unit integral."""
    alpha = ggx_alpha(torch.tensor(float(roughness), dtype=torch.float64))
    nl = q.l[:, 2]
    h = F.normalize(q.l + q.v, dim=-1)
    t = ggx_ndf(h[:, 2], alpha) * smith_visibility(torch.tensor(q.nv, dtype=torch.float64), nl, alpha) * nl.clamp(min=0)
    return _normalized(torch.where(nl > 0, t, torch.zeros_like(t)), q.w)


def tap_direction(g: Tensor, sin_t: float, cos_t: float) -> Tensor:
    """normalize(n + g (m - n)) for n = +z and m = (-sin t, 0, cos t)."""
    x = -g * sin_t
    z = 1 + g * (cos_t - 1)
    nrm = torch.sqrt(x * x + z * z).clamp(min=1e-12)
    return torch.stack([x / nrm, torch.zeros_like(x), z / nrm], -1)


def tap_lobe(q: Quadrature, g: Tensor, roughness: Tensor) -> Tensor:
    """The lobe a prefiltered lookup reads (:func:`~invrender.shading.prefilter.prefilter_matrix`:
    D(h) (d.l) about d with n = v = d), along the tap direction of blend ``g``, normalized."""
    d = tap_direction(g, q.sin_t, q.cos_t)
    dl = q.l @ d
    h = F.normalize(q.l + d, dim=-1)
    p = ggx_ndf(h @ d, ggx_alpha(roughness)) * dl.clamp(min=0)
    return _normalized(p, q.w)


def _unpack(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    # x = (g1, logit r1, g2, logit r2, logit w1): tap roughness in (0, 1) as the mips clamp at 1
    return x[0], torch.sigmoid(x[1]), x[2], torch.sigmoid(x[3]), torch.sigmoid(x[4])


def _pack(p) -> Tensor:
    g1, r1, g2, r2, w1 = (float(v) for v in p)
    lg = lambda v: math.log(v / (1 - v))  # noqa: E731
    c = lambda v: min(max(v, 1e-4), 1 - 1e-4)  # noqa: E731
    return torch.tensor([g1, lg(c(r1)), g2, lg(c(r2)), lg(c(w1))], dtype=torch.float64)


def lobe_error(q: Quadrature, roughness: float, params, target: Tensor | None = None) -> float:
    """Relative L2 distance between the true lobe and the two-tap mixture of ``params`` (g1, r1, g2, r2, w1)."""
    t = target_lobe(q, roughness) if target is None else target
    g1, r1, g2, r2, w1 = (torch.as_tensor(float(v), dtype=torch.float64) for v in params)
    mix = w1 * tap_lobe(q, g1, r1) + (1 - w1) * tap_lobe(q, g2, r2)
    return math.sqrt(float(((mix - t) ** 2 * q.w).sum() / (t * t * q.w).sum()))


def fit_cell(nv: float, roughness: float, init, prox: float = PROX, iters: int = 200,
             free_weight: bool = FREE_WEIGHT) -> tuple[list[float], float]:
    """Fit (g1, r1, g2, r2, w1) for one cell from ``init`` (the neighbour's solution); returns them and the relative error."""
    q = Quadrature(nv)
    t = target_lobe(q, roughness)
    tn = (t * t * q.w).sum()
    x0 = _pack(init)
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1, max_iter=iters, line_search_fn="strong_wolfe", tolerance_grad=1e-11,
                            tolerance_change=1e-15, history_size=20)

    def closure():
        opt.zero_grad()
        g1, r1, g2, r2, w1 = _unpack(x)
        if not free_weight:
            w1 = 0.5
        mix = w1 * tap_lobe(q, g1, r1) + (1 - w1) * tap_lobe(q, g2, r2)
        loss = ((mix - t) ** 2 * q.w).sum() / tn + prox * ((x - x0) ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        p = [float(v) for v in _unpack(x)]
        if not free_weight:
            p[4] = 0.5
    if p[0] > p[2]:  # label the tap nearer the normal 1
        p = [p[2], p[3], p[0], p[1], 1 - p[4]]
    return p, lobe_error(q, roughness, p, t)


def initial_guess(roughness: float) -> list[float]:
    """A start for the first cell: a wider tap nearer the normal than the dominant direction, a narrower one nearer the mirror."""
    s = float(dominant_blend(torch.tensor(roughness)))
    return [0.9 * s, min(0.95, 1.1 * roughness), min(1.0, 1.1 * s), 0.9 * roughness, 0.5]


def fit_order() -> list[tuple[int, int, tuple[int, int] | None]]:
    """(roughness row, n.v column, neighbour to start from) in fitting order: the smoothest row first,
    from n.v = 1 down to grazing, then each rougher row cell by cell from the cell below it."""
    order = []
    for j in range(N_NV - 1, -1, -1):
        order.append((0, j, None if j == N_NV - 1 else (0, j + 1)))
    for i in range(1, N_ROUGH):
        for j in range(N_NV - 1, -1, -1):
            order.append((i, j, (i - 1, j)))
    return order


def fit_table(log=None) -> tuple[Tensor, Tensor]:
    """The whole table ``[N_ROUGH, N_NV, 5]`` and its per-cell relative lobe errors ``[N_ROUGH, N_NV]`` (deterministic)."""
    nvs, rs = nv_nodes().tolist(), roughness_nodes().tolist()
    table = torch.zeros(N_ROUGH, N_NV, len(PARAMS), dtype=torch.float64)
    err = torch.zeros(N_ROUGH, N_NV, dtype=torch.float64)
    for i, j, nb in fit_order():
        init = initial_guess(rs[i]) if nb is None else table[nb].tolist()
        p, e = fit_cell(nvs[j], rs[i], init)
        table[i, j] = torch.tensor(p, dtype=torch.float64)
        err[i, j] = e
        if log is not None:
            log(f"r={rs[i]:.3f} nv={nvs[j]:.3f} err={e:.4f} " + " ".join(f"{k}={v:.4f}" for k, v in zip(PARAMS, p)))
    return table, err


def save_table(table: Tensor, err: Tensor, path: Path = TABLE_PATH) -> None:
    data = {
        "version": TAPS_VERSION,
        "params": list(PARAMS),
        "nv_nodes": [round(v, 6) for v in nv_nodes().tolist()],
        "roughness_nodes": [round(v, 6) for v in roughness_nodes().tolist()],
        "table": [[[round(v, 6) for v in cell] for cell in row] for row in table.tolist()],
        "lobe_error": [[round(v, 5) for v in row] for row in err.tolist()],
    }
    Path(path).write_text(json.dumps(data, indent=1) + "\n")


# ------------------------------------------------------------------------------------------ lookup


@functools.lru_cache(maxsize=2)
def load_table(path: str = str(TABLE_PATH)) -> Tensor:
    """The shipped table ``[N_ROUGH, N_NV, 5]`` (float32)."""
    data = json.loads(Path(path).read_text())
    if data["version"] != TAPS_VERSION or data["params"] != list(PARAMS):
        raise ValueError(f"{path}: table version {data['version']} / {data['params']}, expected {TAPS_VERSION} / {PARAMS}")
    t = torch.tensor(data["table"], dtype=torch.float32)
    if t.shape != (N_ROUGH, N_NV, len(PARAMS)):
        raise ValueError(f"{path}: table of shape {tuple(t.shape)}")
    return t


def tap_params(n_dot_v: Tensor, roughness: Tensor, table: Tensor | None = None) -> Tensor:
    """Per-sample (g1, r1, g2, r2, w1) ``[..., 5]`` at (n.v, roughness) ``[...]``: the table read bilinearly
    (clamped at its borders), blended towards the single dominant-direction lookup below
    :data:`FIT_MIN_ROUGHNESS`. Differentiable in both inputs."""
    table = load_table() if table is None else table
    shape = n_dot_v.shape
    nv = n_dot_v.reshape(-1)
    r = roughness.reshape(-1)
    lo_nv, hi_nv = 0.5 / N_NV, 1 - 0.5 / N_NV
    x = ((nv - lo_nv) / (hi_nv - lo_nv)).clamp(0, 1) * 2 - 1
    y = ((r - FIT_MIN_ROUGHNESS) / (1 - FIT_MIN_ROUGHNESS)).clamp(0, 1) * 2 - 1
    grid = torch.stack([x, y], -1)[None, None].to(table.dtype)
    p = F.grid_sample(table.permute(2, 0, 1)[None].to(grid.device), grid, mode="bilinear", padding_mode="border",
                      align_corners=True)[0, :, 0].T.to(n_dot_v.dtype)  # [N, 5]
    s = dominant_blend(r)
    single = torch.stack([s, r, s, r, torch.full_like(r, 0.5)], -1)
    u = ((r - FALLBACK_START) / (FIT_MIN_ROUGHNESS - FALLBACK_START)).clamp(0, 1)
    t = (u * u * (3 - 2 * u))[:, None]  # smoothstep: the blend's slope is zero at both ends of the band
    return (single + t * (p - single)).reshape(shape + (len(PARAMS),))


def tap_directions(n: Tensor, mirror: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
    """The two lookup directions ``[..., 3]`` normalize(n + g_k (mirror - n))."""
    d1 = F.normalize(n + params[..., 0:1] * (mirror - n), dim=-1)
    d2 = F.normalize(n + params[..., 2:3] * (mirror - n), dim=-1)
    return d1, d2
