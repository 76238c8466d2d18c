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

One share for all three colour channels: per channel (the shadow of a blue sky differing from an
orange sun's) relit the true materials of the embedded scene equally well (24.62 dB both), and a
single channel keeps the rasterizer's work per Gaussian what it was with ambient occlusion (three
made each distillation step ~20 % slower on 2 CPU cores).
"""

from __future__ import annotations

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


def light_visibility(visibility: Tensor, light) -> Tensor:
    """What the diffuse term is multiplied by under ``light`` (an
    :class:`~invrender.shading.light.EnvironmentLight`), ``[..., 1]`` or ``[..., 3]``.

    Ambient visibilities (``[..., 1]`` or ``[..., 3]``) come back unchanged; a transfer record
    ``[..., 2 K + 1]`` becomes ``[..., 1]`` (module docstring). Differentiable in the record and in
    the light (through its SH projection), so a learned light is fitted with its shadows."""
    degree = record_degree(visibility)
    if degree is None:
        return visibility
    k = RECORD_SH_SIZES[degree - 1]
    coeffs = light.sh_coefficients(degree).to(visibility.dtype)  # [K, 3]
    coeffs = coeffs @ torch.tensor(LUMINANCE, dtype=coeffs.dtype, device=coeffs.device)  # [K]
    through = visibility[..., :k] @ coeffs  # [...]
    open_sky = visibility[..., k:2 * k] @ coeffs
    share = (through / open_sky.clamp(min=1e-8)).clamp(0.0, 1.0)
    return (share[..., None] + visibility[..., 2 * k:]).clamp(max=1.0)


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
