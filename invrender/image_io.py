"""LDR image files: read PNG/JPG into float arrays, write PNG atomically.

Values stay in the file's own encoding (usually sRGB): decoding to linear is the caller's job,
via :mod:`invrender.color`, because some PNGs hold raw data (normal maps, roughness). HDR files
(.hdr/.exr) are handled by ``invrender.shading.envmap``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from invrender.checkpoint import atomic_write_bytes


class ImageIOError(ValueError):
    """An image file is missing, unreadable or has the wrong layout; the message names the file."""


def read_image(path, channels: tuple[int, ...] | None = None) -> np.ndarray:
    """Read an 8- or 16-bit PNG, or a JPG, as float32 [H, W, C] in [0, 1].

    C is 1 (grey), 3 (RGB) or 4 (RGBA) as stored; grey + alpha files come back as RGBA. Channel
    order is RGB(A). ``channels``, when given, lists the channel counts the caller accepts;
    anything else raises :class:`ImageIOError`.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageIOError(f"{path}: image file not found")
    try:
        # imdecode(fromfile) instead of imread: works for any path encoding and never prints.
        buf = np.fromfile(str(path), dtype=np.uint8)
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    except (OSError, cv2.error) as e:
        raise ImageIOError(f"{path}: cannot read image ({e})") from e
    if img is None:
        raise ImageIOError(f"{path}: not a readable image (corrupt or unsupported format)")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] == 3:
        img = img[:, :, ::-1]  # BGR -> RGB
    elif img.shape[2] == 4:
        img = img[:, :, [2, 1, 0, 3]]  # BGRA -> RGBA
    if img.dtype == np.uint8:
        out = img.astype(np.float32) / 255.0
    elif img.dtype == np.uint16:
        out = img.astype(np.float32) / 65535.0
    elif img.dtype in (np.float32, np.float64):
        out = img.astype(np.float32)
    else:
        raise ImageIOError(f"{path}: unsupported pixel type {img.dtype}")
    if channels is not None and out.shape[2] not in channels:
        raise ImageIOError(f"{path}: has {out.shape[2]} channels, expected {' or '.join(map(str, channels))}")
    return np.ascontiguousarray(out)


def encode_png(array, bits: int = 8, name: str = "image") -> bytes:
    """PNG bytes of [H, W] or [H, W, C] (C in 1, 3, 4; RGB(A) order), numpy or torch.

    Float input is clipped to [0, 1] and rounded to ``bits`` (8 or 16) bits; uint8/uint16 input
    is encoded as is. ``name`` (e.g. the file it is for) goes into error messages."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ValueError(f"write_png: array must be [H, W] or [H, W, 1|3|4], got {a.shape} for {name}")
    if a.dtype not in (np.uint8, np.uint16):
        if bits not in (8, 16):
            raise ValueError(f"write_png: bits must be 8 or 16, got {bits}")
        a = a.astype(np.float64)
        if not np.isfinite(a).all():
            raise ValueError(f"write_png: array for {name} has non-finite values")
        maxv = 255 if bits == 8 else 65535
        a = np.rint(np.clip(a, 0.0, 1.0) * maxv).astype(np.uint8 if bits == 8 else np.uint16)
    if a.shape[2] == 3:
        a = a[:, :, ::-1]  # OpenCV encodes BGR(A)
    elif a.shape[2] == 4:
        a = a[:, :, [2, 1, 0, 3]]
    ok, enc = cv2.imencode(".png", np.ascontiguousarray(a))
    if not ok:
        raise ImageIOError(f"{name}: PNG encoding failed")
    return enc.tobytes()


def write_png(path, array, bits: int = 8) -> Path:
    """Write [H, W] or [H, W, C] (C in 1, 3, 4; RGB(A) order) as a PNG (:func:`encode_png`),
    atomically: a temporary file next to ``path`` is moved over it, so readers never see a
    half-written image; it gets the umask's usual permissions."""
    return atomic_write_bytes(Path(path), encode_png(array, bits, str(path)), shared=True)
