"""The diffuse visibility channel of the G-buffer, and how a light reads it.

A G-buffer's ``visibility`` (per Gaussian, per vertex or per pixel) is one of:

* ``[..., 1]`` an **ambient** visibility: the diffuse term is multiplied by it whatever the light
  (baked ambient occlusion plus its bounce fill, :func:`invrender.distill.visibility.diffuse_visibility`);
* ``[..., 3]`` the same per colour channel (accepted as is; nothing here makes one);
* ``[..., 2 K + 1]`` (K = 4, 9 or 16: SH degree 1 to 3) a **transfer record**: the SH projections
  ``T`` and ``U`` of the cosine-weighted visibility and of the open hemisphere
  (:func:`invrender.distill.visibility.bake_visibility_transfer`), then a light-independent
  bounce fill ``F``. Under a light with SH coefficients ``L`` (their luminance, Rec. 709 weights)
  the diffuse term is multiplied by

      clamp(T.L / U.L, 0, 1) + F      (at most 1)

  the share of that light's irradiance that is not blocked by the scene, which darkens a point
  when the light's bright part (a sun, a window) is hidden from it: cast shadows, low-frequency
  ones (SH degree 3 blurs a sun's shadow over tens of degrees).

Records can be rasterized like any other channel (the blend of records is the record of the blend:
both ``T.L`` and ``U.L`` are linear in them), so a renderer may either turn per-Gaussian records
into ``[..., 1]`` visibilities for one light before rasterizing, or rasterize the records and
let :func:`invrender.shading.shade.shade` read them per pixel for whatever light it shades with.

:class:`DirectionalShadows` sharpens the share: each Gaussian's transmittance towards fixed world
directions (a few degrees apart), read per light cell by cell, takes the place of ``T.L / U.L``
where a renderer has it per Gaussian; the record keeps its fill and the per-pixel path.
One share for all three colour channels: per channel (the shadow of a blue sky differing from an
orange sun's) relit the true materials of the embedded scene equally well (24.62 dB both), and a
single channel keeps the rasterizer's work per Gaussian what it was with ambient occlusion (three
made each distillation step ~20 % slower on 2 CPU cores).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

RECORD_SH_SIZES = (4, 9, 16)  # SH coefficients of the degrees 1..3 a transfer record may hold
LUMINANCE = (0.2126, 0.7152, 0.0722)  # Rec. 709: how the light's colour channels weigh in its shadows


def is_transfer_record(visibility: Tensor) -> bool:
    """Whether a visibility tensor ``[..., C]`` is a transfer record (``C = 2 K + 1``, K in 4, 9, 16)."""
    c = visibility.shape[-1]
    return c % 2 == 1 and (c - 1) // 2 in RECORD_SH_SIZES


def record_degree(visibility: Tensor) -> int | None:
    """The SH degree of a transfer record ``[..., 2 K + 1]``, or None for an ambient visibility
    (``[..., 1]`` or ``[..., 3]``); any other width is refused."""
    c = visibility.shape[-1]
    if c in (1, 3):
        return None
    if not is_transfer_record(visibility):
        sizes = ", ".join(str(2 * k + 1) for k in RECORD_SH_SIZES)
        raise ValueError(f"visibility must have 1, 3 or a transfer record's {sizes} channels, got {c}")
    return RECORD_SH_SIZES.index((c - 1) // 2) + 1


def light_visibility(visibility: Tensor, light, shadows: DirectionalShadows | None = None) -> Tensor:
    """What the diffuse term is multiplied by under ``light`` (an
    :class:`~invrender.shading.light.EnvironmentLight`), ``[..., 1]`` or ``[..., 3]``.

    Ambient visibilities (``[..., 1]`` or ``[..., 3]``) come back unchanged; a transfer record
    ``[..., 2 K + 1]`` becomes ``[..., 1]`` (module docstring). Differentiable in the record and in
    the light (through its SH projection), so a learned light is fitted with its shadows."""
    degree = record_degree(visibility)
    if degree is None:
        return visibility
    return (_share(visibility, light, shadows) + visibility[..., -1:]).clamp(max=1.0)


def _share(visibility: Tensor, light, shadows: DirectionalShadows | None) -> Tensor:
    """``[..., 1]``: the share of ``light``'s irradiance that a transfer record lets through, or,
    with ``shadows`` (per Gaussian, as the record), the directional one."""
    if shadows is not None:
        if shadows.transmittance.shape[0] != visibility.shape[0]:
            raise ValueError(f"directional shadows for {shadows.transmittance.shape[0]} Gaussians, "
                             f"visibility for {visibility.shape[0]}")
        return shadows.share(light).to(visibility.dtype)
    k = RECORD_SH_SIZES[record_degree(visibility) - 1]
    coeffs = light.sh_coefficients(record_degree(visibility)).to(visibility.dtype)  # [K, 3]
    coeffs = coeffs @ torch.tensor(LUMINANCE, dtype=coeffs.dtype, device=coeffs.device)  # [K]
    through = visibility[..., :k] @ coeffs  # [...]
    open_sky = visibility[..., k:2 * k] @ coeffs
    return (through / open_sky.clamp(min=1e-8)).clamp(0.0, 1.0)[..., None]


def ambient_visibility(visibility: Tensor) -> Tensor:
    """The light-independent part ``[..., 1]``: an ambient visibility as it is (colour channels
    averaged), or a transfer record's ambient occlusion ``T_0 / U_0`` plus its bounce fill (at most
    1), which is what the record gives under a uniform sky. For what cannot follow the light, such
    as a glTF occlusion texture."""
    degree = record_degree(visibility)
    if degree is None:
        return visibility if visibility.shape[-1] == 1 else visibility.mean(dim=-1, keepdim=True)
    k = RECORD_SH_SIZES[degree - 1]
    ao = (visibility[..., :1] / visibility[..., k:k + 1].clamp(min=1e-12)).clamp(0.0, 1.0)
    return (ao + visibility[..., 2 * k:]).clamp(max=1.0)


def bounce_visibility(visibility: Tensor, light, bounce: Tensor, normals: Tensor,
                      shadows: DirectionalShadows | None = None) -> Tensor:
    """``[N, 3]``: what the diffuse term is multiplied by under ``light`` when the light the object
    sends onto itself is traced (:func:`invrender.distill.reflection.gather_bounce`): the share of
    the light that a transfer record ``visibility`` [N, 2K+1] lets through, plus the traced
    irradiance ``bounce`` [N, 3] as a fraction of the light's irradiance along ``normals`` [N, 3],
    so that ``albedo (1 - m) / pi E(n) vis`` adds ``albedo (1 - m) / pi bounce``. The record's grey
    fill is left out: the bounce takes its place. Differentiable in the record and the light."""
    if not is_transfer_record(visibility):
        raise ValueError(f"a traced bounce needs a transfer record, got visibility with {visibility.shape[-1]} channels")
    share = _share(visibility, light, shadows)  # [N, 1]
    e = light.irradiance(torch.nn.functional.normalize(normals, dim=-1)).clamp(min=1e-4)  # [N, 3]
    return (share + bounce.to(e.dtype) / e).clamp(0.0, 1.0)


def sphere_directions(num: int, device: torch.device | None = None) -> Tensor:
    """``[num, 3]`` unit directions spread evenly over the whole sphere (Fibonacci spiral, equal
    area per direction): the fixed world-space basis of :func:`bake_directional_shadows`."""
    i = torch.arange(num, dtype=torch.float64, device=device)
    z = 1.0 - 2.0 * (i + 0.5) / num
    phi = 2.0 * math.pi * torch.remainder(i * (math.sqrt(5.0) - 1.0) / 2.0, 1.0)
    r = (1.0 - z * z).clamp(min=0.0).sqrt()
    return torch.stack([r * phi.cos(), r * phi.sin(), z], dim=-1).float()


@functools.lru_cache(maxsize=4)
def _cells(resolution: int, num_directions: int, device: str) -> tuple[Tensor, Tensor]:
    """For a cube map of ``resolution`` and :func:`sphere_directions` of ``num_directions``: the
    direction nearest to each texel ``[6 R^2]`` and each direction's cell solid angle ``[D]``."""
    from invrender.shading.light import cube_directions, cube_texel_solid_angles  # noqa: PLC0415

    d = cube_directions(resolution, device=device).reshape(-1, 3)  # [6 R^2, 3]
    dirs = sphere_directions(num_directions, device)
    nearest = torch.cat([(chunk @ dirs.T).argmax(dim=-1) for chunk in d.split(1 << 14)])
    w = cube_texel_solid_angles(resolution, dtype=torch.float32, device=device)[None].expand(6, resolution, resolution)
    area = torch.zeros(num_directions, device=device).index_add(0, nearest, w.reshape(-1))
    return nearest, area


def cell_radiance(light, num_directions: int) -> Tensor:
    """``[D]``: the mean luminance of ``light`` over the cell of each of ``num_directions``
    :func:`sphere_directions` (texels go to their nearest direction, weighted by solid angle), so
    that a sun's energy lands in one cell, whatever its size. Differentiable in the light."""
    cube = light.cube()  # [6, R, R, 3]
    nearest, area = _cells(light.resolution, num_directions, str(cube.device))
    from invrender.shading.light import cube_texel_solid_angles  # noqa: PLC0415

    w = cube_texel_solid_angles(light.resolution, dtype=cube.dtype, device=cube.device)
    lum = cube @ torch.tensor(LUMINANCE, dtype=cube.dtype, device=cube.device)  # [6, R, R]
    total = torch.zeros(num_directions, dtype=cube.dtype, device=cube.device).index_add(0, nearest, (lum * w).reshape(-1))
    return total / area.to(cube.dtype).clamp(min=1e-12)


@dataclass
class DirectionalShadows:
    """Sharp, light-dependent shadows: each Gaussian's transmittance towards ``D`` fixed world
    directions (:func:`invrender.distill.visibility.bake_directional_shadows`), read for a light
    as the share of its irradiance that gets through,

        share = sum_d T_d max(n.w_d, 0) L_d / sum_d max(n.w_d, 0) L_d,

    with ``L_d`` the light's mean luminance over direction ``d``'s cell (:func:`cell_radiance`;
    equal-area cells, so the solid angles cancel). Where a transfer record's SH of degree 3 spreads
    a sun over tens of degrees, a cell is a few degrees wide: a point behind the sphere loses the
    sun instead of most of the sky around it. It takes the place of the record's share
    (:func:`light_visibility`); the record keeps the bounce fill, the ambient occlusion of the
    glTF export and the per-pixel path of the viewer."""

    transmittance: Tensor  # [N, D] uint8, 255 = open
    normals: Tensor  # [N, 3] the outward normals the bake marched around
    _weights: tuple[Tensor, Tensor] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.transmittance.ndim != 2 or self.normals.shape != (self.transmittance.shape[0], 3):
            raise ValueError(f"directional shadows need transmittance [N, D] and normals [N, 3], got "
                             f"{tuple(self.transmittance.shape)} and {tuple(self.normals.shape)}")

    @property
    def num_directions(self) -> int:
        return self.transmittance.shape[1]

    def weights(self) -> tuple[Tensor, Tensor]:
        """``(T_d max(n.w_d, 0), max(n.w_d, 0))``, both ``[N, D]`` float32, computed once."""
        if self._weights is None:
            dirs = sphere_directions(self.num_directions, self.normals.device)
            cos = (self.normals.float() @ dirs.T).clamp(min=0.0)
            self._weights = (self.transmittance.float() / 255.0 * cos, cos)
        return self._weights

    def share(self, light) -> Tensor:
        """``[N, 1]`` in [0, 1]: the share of ``light``'s irradiance that reaches each Gaussian."""
        through, open_sky = self.weights()
        ld = cell_radiance(light, self.num_directions).to(through.dtype)  # [D]
        return ((through @ ld) / (open_sky @ ld).clamp(min=1e-8)).clamp(0.0, 1.0)[:, None]

    def to(self, device) -> DirectionalShadows:
        return DirectionalShadows(self.transmittance.to(device), self.normals.to(device))
