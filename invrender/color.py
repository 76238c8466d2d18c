"""Colour-space conversions. Used only at file boundaries and at the tone-mapping step.

All functions work on any shape and on torch tensors or numpy arrays (values in [0, 1] for the
display-referred side; linear values may exceed 1 and are clipped by :func:`linear_to_srgb`).
"""

from __future__ import annotations

import numpy as np
import torch


def srgb_to_linear(x):
    """sRGB EOTF (IEC 61966-2-1): display-referred [0, 1] -> linear."""
    if isinstance(x, torch.Tensor):
        return torch.where(x <= 0.04045, x / 12.92, ((x.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4)
    x = np.asarray(x)
    return np.where(x <= 0.04045, x / 12.92, ((np.maximum(x, 0.04045) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x):
    """Inverse of :func:`srgb_to_linear`, after clipping to [0, 1]."""
    if isinstance(x, torch.Tensor):
        x = x.clamp(0.0, 1.0)
        # clamp inside the power keeps the gradient finite at 0
        return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x.clamp(min=0.0031308) ** (1 / 2.4) - 0.055)
    x = np.clip(np.asarray(x), 0.0, 1.0)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.maximum(x, 0.0031308) ** (1 / 2.4) - 0.055)
