"""Equirectangular environment maps: this project's direction <-> texture convention and HDR I/O.

Convention (DESIGN.md, shared with TensoIR / R3DG): world Z up, a direction d = (x, y, z) maps to

    u = 0.5 - atan2(y, x) / (2 pi)   (mod 1)      v = acos(z) / pi

so row 0 of the image looks straight up (+Z), the middle row is the horizon, and the centre
column (u = 0.5) looks along +X. ``u`` grows to the right, ``v`` downwards; the texel (i, j) of an
``H x W`` map is centred at ``u = (j + 0.5) / W``, ``v = (i + 0.5) / H``.

Mitsuba 3's ``envmap`` emitter uses another frame (Y up, ``u = atan2(x, -z) / 2pi``,
``v = acos(y) / pi``); :func:`mitsuba_envmap_to_world` is the one place that bridges the two, and
``tests/test_envmap_convention.py`` pins it by rendering.

Images handled here are float32 linear RGB ``[H, W, 3]`` (channels in RGB order, unlike OpenCV).
``.hdr`` goes through OpenCV; ``.exr`` too when the installed OpenCV has OpenEXR, otherwise through
Mitsuba's ``Bitmap`` (the ``[bench]`` extra) with a clear error if neither is available.
"""

from __future__ import annotations

import os

# OpenCV reads EXR only if this is set before the first `import cv2` anywhere in the process.
os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")

import math  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

__all__ = [
    "dir_to_uv",
    "uv_to_dir",
    "mitsuba_envmap_to_world",
    "read_hdr",
    "write_hdr",
    "sample_nearest",
    "direction_grid",
]

_HDR_SUFFIXES = (".hdr", ".exr")


# ------------------------------------------------------------------------------------------
# direction <-> (u, v)
# ------------------------------------------------------------------------------------------

def dir_to_uv(dirs):
    """Directions ``[..., 3]`` (need not be normalized) -> texture coordinates ``[..., 2]`` in [0, 1).

    Works on numpy arrays and torch tensors (differentiable away from the poles).
    """
    if isinstance(dirs, torch.Tensor):
        d = dirs / dirs.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        u = torch.remainder(0.5 - torch.atan2(d[..., 1], d[..., 0]) / (2 * math.pi), 1.0)
        v = torch.acos(d[..., 2].clamp(-1.0, 1.0)) / math.pi
        return torch.stack([u, v], dim=-1)
    d = np.asarray(dirs, dtype=np.float64)
    d = d / np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-12)
    u = np.mod(0.5 - np.arctan2(d[..., 1], d[..., 0]) / (2 * np.pi), 1.0)
    v = np.arccos(np.clip(d[..., 2], -1.0, 1.0)) / np.pi
    return np.stack([u, v], axis=-1)


def uv_to_dir(uv):
    """Texture coordinates ``[..., 2]`` -> unit directions ``[..., 3]`` (inverse of :func:`dir_to_uv`)."""
    if isinstance(uv, torch.Tensor):
        phi = (0.5 - uv[..., 0]) * (2 * math.pi)
        theta = uv[..., 1] * math.pi
        s = torch.sin(theta)
        return torch.stack([s * torch.cos(phi), s * torch.sin(phi), torch.cos(theta)], dim=-1)
    uv = np.asarray(uv, dtype=np.float64)
    phi = (0.5 - uv[..., 0]) * (2 * np.pi)
    theta = uv[..., 1] * np.pi
    s = np.sin(theta)
    return np.stack([s * np.cos(phi), s * np.sin(phi), np.cos(theta)], axis=-1)


def direction_grid(height: int, width: int) -> np.ndarray:
    """Unit direction of every texel centre of an ``height x width`` map: ``[H, W, 3]`` float64."""
    v = (np.arange(height) + 0.5) / height
    u = (np.arange(width) + 0.5) / width
    uu, vv = np.meshgrid(u, v)
    return uv_to_dir(np.stack([uu, vv], axis=-1))


def sample_nearest(img, dirs):
    """Nearest-texel lookup of a ``[H, W, C]`` map (numpy) in directions ``[..., 3]`` -> ``[..., C]``."""
    img = np.asarray(img)
    h, w = img.shape[:2]
    uv = dir_to_uv(np.asarray(dirs, dtype=np.float64))
    j = np.clip(np.floor(uv[..., 0] * w).astype(np.int64), 0, w - 1)
    i = np.clip(np.floor(uv[..., 1] * h).astype(np.int64), 0, h - 1)
    return img[i, j]


def mitsuba_envmap_to_world() -> list[list[float]]:
    """4x4 ``to_world`` for Mitsuba's ``envmap`` emitter so that it follows this project's convention.

    Mitsuba looks up a world direction d in its local frame l = to_world^-1 d with
    ``u = atan2(l.x, -l.z) / 2pi``, ``v = acos(l.y) / pi``. With the rows below, l = (d.y, d.z, d.x):
    then ``v = acos(d.z) / pi`` and ``u = atan2(d.y, -d.x) / 2pi = 0.5 - atan2(d.y, d.x) / 2pi`` (mod 1),
    i.e. exactly :func:`dir_to_uv`. Pass it as ``mi.ScalarTransform4f(mitsuba_envmap_to_world())``.
    """
    return [
        [0.0, 0.0, 1.0, 0.0],
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]


# ------------------------------------------------------------------------------------------
# HDR file I/O
# ------------------------------------------------------------------------------------------

def _cv2():
    import cv2  # imported lazily: the environment variable above is already set

    return cv2


def _cv2_has_exr() -> bool:
    """Some OpenCV wheels (e.g. opencv-python-headless 5.0) are built without OpenEXR."""
    cv2 = _cv2()
    try:
        return bool(cv2.haveImageWriter(".exr"))
    except (AttributeError, cv2.error):
        return False


def _mitsuba_bitmap(path, action):
    try:
        import mitsuba as mi  # Bitmap works without choosing a variant
    except ImportError as e:
        raise ImportError(
            f"{action} {path}: this OpenCV build has no OpenEXR support and the fallback, mitsuba "
            "(pip install 'invrender[bench]'), is not installed; use .hdr instead"
        ) from e
    return mi


def _read_exr_mitsuba(path: Path) -> np.ndarray:
    mi = _mitsuba_bitmap(path, "read_hdr: cannot read")
    try:
        bmp = mi.Bitmap(str(path))
    except Exception as e:  # mitsuba raises RuntimeError with its own message
        raise OSError(f"read_hdr: could not decode {path}: {e}") from e
    bmp = bmp.convert(mi.Bitmap.PixelFormat.RGB, mi.Struct.Type.Float32, srgb_gamma=False)
    return np.ascontiguousarray(np.array(bmp, dtype=np.float32).reshape(bmp.height(), bmp.width(), 3))


def _write_exr_mitsuba(tmp: str, img: np.ndarray, path: Path) -> None:
    mi = _mitsuba_bitmap(path, "write_hdr: cannot write")
    mi.Bitmap(np.ascontiguousarray(img, dtype=np.float32)).write(tmp)


def read_hdr(path) -> np.ndarray:
    """Read a ``.hdr`` (Radiance RGBE) or ``.exr`` file as float32 linear RGB ``[H, W, 3]``."""
    path = Path(path)
    if path.suffix.lower() not in _HDR_SUFFIXES:
        raise ValueError(f"read_hdr: {path} is not a .hdr or .exr file")
    if not path.is_file():
        raise FileNotFoundError(f"read_hdr: environment map {path} does not exist")
    if path.suffix.lower() == ".exr" and not _cv2_has_exr():
        return _read_exr_mitsuba(path)
    cv2 = _cv2()
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    if img is None:
        raise OSError(f"read_hdr: OpenCV could not decode {path} (corrupt or unsupported file)")
    img = np.asarray(img, dtype=np.float32)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    else:
        img = img[:, :, 2::-1] if img.shape[2] >= 3 else img  # BGR(A) -> RGB, alpha dropped
    return np.ascontiguousarray(img[:, :, :3], dtype=np.float32)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_hdr(path, img) -> Path:
    """Write float linear RGB ``[H, W, 3]`` (numpy or torch) to ``.hdr`` or ``.exr``, atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _HDR_SUFFIXES:
        raise ValueError(f"write_hdr: {path} must end in .hdr or .exr")
    if isinstance(img, torch.Tensor):
        img = img.detach().cpu().numpy()
    img = np.asarray(img, dtype=np.float32)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"write_hdr: expected an [H, W, 3] image for {path}, got shape {img.shape}")
    if not np.all(np.isfinite(img)):
        raise ValueError(f"write_hdr: image for {path} has non-finite values")
    img = np.maximum(img, 0.0)
    cv2 = _cv2()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        if suffix == ".exr" and not _cv2_has_exr():
            _write_exr_mitsuba(tmp, img, path)
        else:
            ok = cv2.imwrite(tmp, np.ascontiguousarray(img[:, :, ::-1]))
            if not ok:
                raise OSError(f"write_hdr: OpenCV failed to write {path}")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
