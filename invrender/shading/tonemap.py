"""Tone mapping: linear HDR radiance in, display-referred [0, 1] out (DESIGN.md, Colour)."""

from __future__ import annotations

from torch import Tensor

from invrender.color import linear_to_srgb

TONEMAPS = ("srgb", "aces")


def aces_filmic(x: Tensor) -> Tensor:
    """Narkowicz's fit of the ACES filmic curve, linear -> linear [0, 1]:
    x (2.51 x + 0.03) / (x (2.43 x + 0.59) + 0.14). PRD applies it before the sRGB OETF."""
    x = x.clamp(min=0.0)
    return ((x * (2.51 * x + 0.03)) / (x * (2.43 * x + 0.59) + 0.14)).clamp(0.0, 1.0)


def tonemap(x: Tensor, kind: str = "srgb") -> Tensor:
    """``srgb``: clip to [0, 1] + sRGB OETF (the default); ``aces``: ACES filmic, then sRGB."""
    if kind == "srgb":
        return linear_to_srgb(x)
    if kind == "aces":
        return linear_to_srgb(aces_filmic(x))
    raise ValueError(f"tone mapping must be one of {TONEMAPS}, got {kind!r}")
