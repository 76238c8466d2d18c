"""What the viewer shows, as plain functions: a run, a :class:`ViewerState` and a camera in, an
``uint8`` image out. No GUI here, so the tests drive every control without a browser.

A frame is made in three cached steps, because an interaction usually changes only one input:

1. **Rasterize** the G-buffer for the camera (the expensive, light-independent part): the run's
   Gaussians through :func:`invrender.distill.model.render_prd` with blend ``radiance`` (which
   skips shading), or the mesh backend's ``render_mesh_view``. Only covered pixels are kept, so
   shading costs what the object covers, not the whole frame.
2. **Shade** those pixels under the light of the chosen (map, rotation) with the shared
   :func:`invrender.shading.shade.shade`. The intensity is left out of the cache key: shading is
   linear in the light, so a new intensity only rescales the cached linear colour.
3. **Display**: tone mapping, PRD's blend, the chosen buffer (colour-mapped when scalar), the
   split view and the background. Cheap, so it is never cached.

A light change therefore reshades without rasterizing, an intensity / tone-mapping / buffer
change does neither, and a camera move rasterizes once per camera (coarse frames at
``coarse_scale`` of the resolution while it moves).

The blend is :func:`~invrender.shading.shade.progress_blend`, as in :func:`~invrender.distill.model.render_prd`
(the tests compare the two):
the run's learned light, unrotated at intensity 1, renders the run as trained; any other light
relights it, the radiance part carried as its ratio to the physically based colour under the
learned light (``final = p tonemap(pbr') + (1 - p) tonemap(pbr' lin(radiance) / pbr)``).
"""

from __future__ import annotations

import dataclasses
import math
import re
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from invrender.cameras import pixel_rays
from invrender.color import linear_to_srgb
from invrender.shading.light import EnvironmentLight, cube_directions, rotate_z, sample_cube
from invrender.shading.shade import GBuffer, Shaded, progress_blend, shade
from invrender.shading.shadowing import light_visibility
from invrender.shading.tonemap import tonemap

BUFFERS = ("final", "pbr", "radiance", "albedo", "roughness", "metallic", "normal", "depth", "progress", "visibility")
SCALAR_BUFFERS = ("roughness", "metallic", "depth", "progress", "visibility")
COLORMAPS = ("turbo", "viridis", "magma", "gray")
BACKENDS = ("Gaussian", "mesh")
LEARNED = "learned"
"""Name of the run's own (learned) environment in the map list."""
UPLOAD_PREFIX = "upload: "
HDR_SUFFIXES = (".hdr", ".exr")
MAX_UPLOAD_BYTES = 64 << 20
MAX_ENVMAP_PIXELS = 8192 * 4096  # an 8k equirect; larger maps would take seconds and GBs to decode
STORED_UPLOAD_WIDTH = 2048  # uploads are kept at most this wide
MAX_UPLOADS = 8  # uploaded maps kept in memory (the oldest is dropped first)
MIN_RESOLUTION, MAX_RESOLUTION = 16, 4096
ALPHA_EPS = 1e-4  # render_prd's coverage floor: emptier pixels contribute < 1e-4 to any colour
# LRU sizes: G-buffers are the big entries (a full and a coarse frame of the last poses); shaded
# colours ([M, 3] tensors) and lights (~1-2 MB each at 128²) are small, and keeping a few maps
# makes flipping between them instant
_RASTERS, _LIGHTS, _SHADED = 4, 8, 16


class ViewerError(ValueError):
    """A request the viewer cannot honour (unknown map, backend unavailable); the message is for the panel."""


class UploadError(ViewerError):
    """An uploaded file was rejected; the message says why and is shown in the panel."""


@dataclass
class ViewerState:
    """Everything the panel controls, except the camera (each browser tab has its own)."""

    envmap: str = LEARNED
    """Environment: ``learned`` (the run's own), a map of the dataset's ``envmaps/`` folder by
    name, or an uploaded one (``upload: <name>``)."""
    rotation_deg: float = 0.0
    """Rotate the environment counter-clockwise about +Z (seen from above), degrees."""
    intensity: float = 1.0
    """Multiply the environment's radiance (the panel sets it as exposure, 2^EV)."""
    tonemapping: Literal["srgb", "aces"] | None = None
    """Tone mapping of the physically based colour; None: the run's own."""
    buffer: str = "final"
    """What to show: one of :data:`BUFFERS`."""
    colormap: str = "turbo"
    """Colour map of the scalar buffers (:data:`SCALAR_BUFFERS`): one of :data:`COLORMAPS`."""
    split: bool = False
    """Split view: ``buffer`` on the left half, ``split_buffer`` on the right."""
    split_buffer: str = "albedo"
    """The buffer of the right half in split view."""
    backend: str = "Gaussian"
    """Geometry: ``Gaussian`` (always) or ``mesh`` (when the run has a trained mesh)."""
    resolution: int = 512
    """Longer side of a full frame, pixels (the shorter follows the browser's aspect)."""
    coarse_scale: float = 0.5
    """Resolution factor of the coarse frames sent while the camera moves."""
    background: Literal["run", "white", "black"] = "run"
    """Background colour; ``run``: the one the run was trained and evaluated on."""

    def validate(self) -> None:
        """Raise :class:`ViewerError` naming the field that is out of range."""
        for name, value, allowed in (("buffer", self.buffer, BUFFERS), ("split_buffer", self.split_buffer, BUFFERS),
                                     ("colormap", self.colormap, COLORMAPS), ("backend", self.backend, BACKENDS),
                                     ("tonemapping", self.tonemapping, ("srgb", "aces", None)),
                                     ("background", self.background, ("run", "white", "black"))):
            if value not in allowed:
                raise ViewerError(f"{name} must be one of {allowed}, got {value!r}")
        if not MIN_RESOLUTION <= int(self.resolution) <= MAX_RESOLUTION:
            raise ViewerError(f"resolution must be in [{MIN_RESOLUTION}, {MAX_RESOLUTION}], got {self.resolution}")
        if not 0.05 <= self.coarse_scale <= 1.0:
            raise ViewerError(f"coarse_scale must be in [0.05, 1], got {self.coarse_scale}")
        if not (math.isfinite(self.intensity) and self.intensity >= 0):
            raise ViewerError(f"intensity must be a finite number >= 0, got {self.intensity}")
        if not math.isfinite(self.rotation_deg):
            raise ViewerError(f"rotation must be a finite angle in degrees, got {self.rotation_deg}")

    @property
    def relit(self) -> bool:
        """Whether the light differs from the learned one (then the run is relit, as ``invrender relight`` does)."""
        return not (self.envmap == LEARNED and _wrap_degrees(self.rotation_deg) == 0.0 and self.intensity == 1.0)


# ----------------------------------------------------------------------------------------------
# cameras


@dataclass(frozen=True)
class ViewerCamera:
    """A pinhole camera with square pixels and a centred principal point (what a browser canvas is)."""

    viewmat: np.ndarray  # [4, 4] world-to-camera, OpenCV axes (x right, y down, z forward)
    fov_y: float
    """Vertical field of view, radians."""
    aspect: float = 1.0
    """Width / height of the image."""

    def image_size(self, resolution: int) -> tuple[int, int]:
        """(width, height) with the longer side ``resolution``."""
        if self.aspect >= 1.0:
            return int(resolution), max(1, round(resolution / self.aspect))
        return max(1, round(resolution * self.aspect)), int(resolution)

    def K(self, width: int, height: int) -> Tensor:
        """Intrinsics ``[3, 3]`` for an image of this size (pixel centres at +0.5)."""
        fy = 0.5 * height / math.tan(0.5 * self.fov_y)
        return torch.tensor([[fy, 0.0, width / 2], [0.0, fy, height / 2], [0.0, 0.0, 1.0]], dtype=torch.float32)

    def key(self) -> bytes:
        # rounded so that a camera echoed back by the browser hits the cache
        return np.round(np.asarray(self.viewmat, np.float64), 7).tobytes() + np.float64(
            [self.fov_y, self.aspect]).round(7).tobytes()


def quat_wxyz_to_matrix(wxyz) -> np.ndarray:
    """Rotation matrix ``[3, 3]`` of a (not necessarily unit) quaternion (w, x, y, z)."""
    w, x, y, z = np.asarray(wxyz, np.float64) / np.linalg.norm(wxyz)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def matrix_to_quat_wxyz(R) -> np.ndarray:
    """Unit quaternion (w, x, y, z), w >= 0, of a rotation matrix ``[3, 3]`` (Shepperd's method)."""
    R = np.asarray(R, np.float64)
    t = np.trace(R)
    if t > 0:
        s = 2.0 * math.sqrt(1.0 + t)
        q = [0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(R)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(max(1.0 + R[i, i] - R[j, j] - R[k, k], 1e-12))
        q = [0.0] * 4
        q[0] = (R[k, j] - R[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (R[j, i] + R[i, j]) / s
        q[1 + k] = (R[k, i] + R[i, k]) / s
    q = np.array(q)
    q = q / np.linalg.norm(q)
    return -q if q[0] < 0 else q


def camera_from_viser(wxyz, position, fov_y: float, aspect: float) -> ViewerCamera:
    """A viser client camera (``wxyz``, ``position``: its camera-to-world in OpenCV axes; vertical fov)."""
    c2w = np.eye(4)
    c2w[:3, :3] = quat_wxyz_to_matrix(wxyz)
    c2w[:3, 3] = np.asarray(position, np.float64)
    return ViewerCamera(np.linalg.inv(c2w), float(fov_y), float(aspect))


def viser_pose(camera: ViewerCamera, target=(0.0, 0.0, 0.0)) -> dict:
    """Where to put a viser camera to see what ``camera`` sees: ``wxyz``, ``position``, ``look_at``
    (the point of the viewing ray nearest ``target``, so orbiting turns about the object) and ``fov``."""
    c2w = np.linalg.inv(np.asarray(camera.viewmat, np.float64))
    pos, fwd = c2w[:3, 3], c2w[:3, 2]
    dist = float(np.dot(np.asarray(target, np.float64) - pos, fwd))
    if dist < 1e-3:  # looking away from the target: orbit about a point in front instead
        dist = max(float(np.linalg.norm(pos)), 1.0)
    return {"wxyz": matrix_to_quat_wxyz(c2w[:3, :3]), "position": pos, "look_at": pos + dist * fwd,
            "fov": camera.fov_y}


def camera_from_views(views, i: int) -> ViewerCamera:
    """Training view ``i`` of a :class:`~invrender.data.scene.Views` as a viewer camera (its exact pose,
    vertical fov and aspect)."""
    if not 0 <= i < len(views):
        raise ViewerError(f"training camera {i} does not exist (the run has {len(views)})")
    fy = float(views.Ks[i][1, 1])
    return ViewerCamera(views.viewmats[i].double().numpy(), 2.0 * math.atan(0.5 * views.height / fy),
                        views.width / views.height)


# ----------------------------------------------------------------------------------------------
# environment maps and uploads


def _wrap_degrees(deg: float) -> float:
    d = round(float(deg) % 360.0, 6)
    return 0.0 if d == 360.0 else d


def _hdr_resolution(content: bytes) -> tuple[int, int] | None:
    """(height, width) from a Radiance header, None when the header does not say."""
    head = content[:65536]
    end = head.find(b"\n\n")
    if end < 0:
        return None
    m = re.match(rb"\s*[-+]([YX])\s+(\d+)\s+[-+]([YX])\s+(\d+)", head[end + 2:end + 64])
    if not m:
        return None
    a, b = int(m.group(2)), int(m.group(4))
    return (a, b) if m.group(1) == b"Y" else (b, a)


def check_upload_size(filename: str, size: int, max_bytes: int = MAX_UPLOAD_BYTES) -> None:
    """Reject an upload by its declared size alone (before it is received, where the server can)."""
    if size > max_bytes:
        raise UploadError(f"{filename}: {size / 2**20:.1f} MB is over the upload limit of {max_bytes / 2**20:.0f} MB")


def read_envmap_upload(filename: str, content: bytes, max_bytes: int = MAX_UPLOAD_BYTES) -> np.ndarray:
    """An uploaded environment map as float32 linear RGB ``[H, W, 3]``, or :class:`UploadError`
    saying why not: empty, over ``max_bytes``, not ``.hdr`` / ``.exr`` by name and by content (magic
    bytes), larger than :data:`MAX_ENVMAP_PIXELS`, undecodable, or holding non-finite values."""
    name = Path(filename or "upload").name
    if not content:
        raise UploadError(f"{name}: the file is empty")
    check_upload_size(name, len(content), max_bytes)
    suffix = Path(name).suffix.lower()
    if suffix not in HDR_SUFFIXES:
        raise UploadError(f"{name}: not an environment map (expected a .hdr or .exr file)")
    # Radiance files start "#?RADIANCE" (or "#?RGBE"); OpenEXR with the magic number 20000630
    magic = (b"#?RADIANCE", b"#?RGBE") if suffix == ".hdr" else (b"\x76\x2f\x31\x01",)
    magic_ok = content.startswith(magic)
    if not magic_ok:
        raise UploadError(f"{name}: not a {suffix} image (its content does not start like one)")
    if suffix == ".hdr":
        hw = _hdr_resolution(content)
        if hw is None:
            raise UploadError(f"{name}: the Radiance header has no resolution line")
        if hw[0] * hw[1] > MAX_ENVMAP_PIXELS:
            raise UploadError(f"{name}: {hw[1]}x{hw[0]} pixels is over the limit of {MAX_ENVMAP_PIXELS} pixels")
    from invrender.shading.envmap import read_hdr  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="invrender-upload-") as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(content)
        try:
            img = read_hdr(path)
        except Exception as e:  # noqa: BLE001 - any decoder failure is a bad upload, never a dead server
            raise UploadError(f"{name}: could not decode the image ({type(e).__name__})") from e
    if img.ndim != 3 or img.shape[0] < 2 or img.shape[1] < 2:
        raise UploadError(f"{name}: decoded to shape {img.shape}, expected [H, W, 3] with H, W >= 2")
    if img.shape[0] * img.shape[1] > MAX_ENVMAP_PIXELS:
        raise UploadError(f"{name}: {img.shape[1]}x{img.shape[0]} pixels is over the limit of {MAX_ENVMAP_PIXELS}")
    if not np.isfinite(img).all():
        raise UploadError(f"{name}: holds non-finite values (NaN or infinity)")
    return np.maximum(img, 0.0).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# PNG output


def encode_png(image: np.ndarray) -> bytes:
    """An ``uint8`` RGB image ``[H, W, 3]`` as PNG bytes (for a file or a browser download)."""
    from invrender.image_io import encode_png as _encode  # noqa: PLC0415

    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"encode_png: expected uint8 [H, W, 3], got {img.dtype} {img.shape}")
    return _encode(img, name="the view")


def save_png(image: np.ndarray, folder: Path, stem: str = "view") -> Path:
    """Write ``uint8`` RGB ``image`` ``[H, W, 3]`` to a new file ``folder/<stem>_<time>.png`` (never
    overwriting one) atomically: :func:`invrender.image_io.write_png` writes a temporary file in
    ``folder`` and renames it over the final name."""
    from invrender.image_io import write_png  # noqa: PLC0415

    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"save_png: expected uint8 [H, W, 3], got {img.dtype} {img.shape}")
    folder = Path(folder)
    base = f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', stem)}_{time.strftime('%Y%m%d-%H%M%S')}"
    path, k = folder / f"{base}.png", 1
    while path.exists():
        path, k = folder / f"{base}_{k}.png", k + 1
    write_png(path, img)
    return path


# ----------------------------------------------------------------------------------------------
# the context: a run, its cameras and maps, and the caches


@dataclass
class _Raster:
    """The light-independent part of a frame, kept for covered pixels only."""

    width: int
    height: int
    mask: Tensor  # [H, W] bool, alpha > ALPHA_EPS
    alpha: Tensor  # [H, W, 1]
    g: GBuffer  # every field [M, C] for the M covered pixels
    depth: Tensor  # [M, 1] z-depth
    view_dirs: Tensor  # [M, 3] world, camera -> surface
    points: Tensor | None = None  # [M, 3] world positions, for traced reflections (Gaussians only)


def _resolve_data_dir(run_dir: Path, data: str | None) -> Path | None:
    """The run's dataset folder: as recorded (relative to where training ran), else relative to the
    run's parents (runs/<name> inside the project) or the run itself."""
    if not data:
        return None
    p = Path(data)
    candidates = [p] if p.is_absolute() else [p, run_dir.parent.parent / p, run_dir.parent / p, run_dir / p]
    return next((c for c in candidates if c.is_dir()), None)


class ViewerContext:
    """A loaded run with what frames need besides the state: training cameras, the environment
    maps, one :class:`~invrender.shading.prefilter.SpecularMips`, and the small LRU caches of the
    module docstring. Thread-safe: frames are made one at a time."""

    def __init__(self, run, *, views=None, envmaps: dict[str, Path] | None = None, mips=None,
                 raster_backend: str = "auto", mesh_file: Path | None = None,
                 max_upload_bytes: int = MAX_UPLOAD_BYTES):
        from invrender.train import background_color, resolve_background  # noqa: PLC0415

        self.run = run
        self.views = views
        self.raster_backend = raster_backend
        self.max_upload_bytes = int(max_upload_bytes)
        self.mesh_file = Path(mesh_file) if mesh_file is not None else Path(run.run_dir) / "mesh" / "textured_mesh.pt"
        self._envmap_paths: dict[str, Path] = dict(envmaps or {})
        self._envmap_images: dict[str, Tensor] = {}  # [H, W, 3] linear, read on first use
        self._mips = mips
        self._lock = threading.RLock()
        self._rasters: OrderedDict = OrderedDict()
        self._lights: OrderedDict = OrderedDict()
        self._shaded: OrderedDict = OrderedDict()
        self._mesh = None
        self._mesh_fn = None
        kind = resolve_background(run.meta.get("background", "auto"), run.meta.get("format") in ("blender", "tensoir"))
        self.run_background = background_color(kind, "cpu")  # [3]
        self.stats: dict = {}
        """Of the last frame: ``seconds``, ``size`` (W, H), ``coarse``, ``rasterized``, ``shaded``."""

    @classmethod
    def from_run_dir(cls, run_dir: Path, *, envmaps_dir: Path | None = None, raster_backend: str = "auto",
                     max_upload_bytes: int = MAX_UPLOAD_BYTES, load_views: bool = True) -> ViewerContext:
        """Load a run folder (``FileNotFoundError`` / ``ValueError`` when it is not one), its training
        cameras and the dataset's maps (or those of ``envmaps_dir``) when the dataset is found."""
        from invrender.data.scene import find_envmaps  # noqa: PLC0415
        from invrender.eval import load_run  # noqa: PLC0415

        run = load_run(run_dir)
        data_dir = _resolve_data_dir(Path(run_dir), run.meta.get("data"))
        views = None
        if load_views and data_dir is not None:
            from invrender.data import load_scene  # noqa: PLC0415

            views = load_scene(data_dir, downscale=run.meta.get("downscale", 1), splits=("train",), load_gt=False).train
        if envmaps_dir is not None:
            if not Path(envmaps_dir).is_dir():
                raise FileNotFoundError(f"environment map folder {envmaps_dir} does not exist")
            maps = {p.stem: p for p in sorted(Path(envmaps_dir).iterdir())
                    if p.is_file() and p.suffix.lower() in HDR_SUFFIXES}
        else:
            maps = find_envmaps(data_dir) if data_dir is not None else {}
        return cls(run, views=views, envmaps=maps, raster_backend=raster_backend, max_upload_bytes=max_upload_bytes)

    # -- inventory ---------------------------------------------------------------------------

    @property
    def has_light(self) -> bool:
        return self.run.light is not None and self.run.blend != "radiance"

    def envmap_names(self) -> list[str]:
        """Choices for :attr:`ViewerState.envmap`: the learned light first, then files, then uploads."""
        uploads = [k for k in self._envmap_images if k.startswith(UPLOAD_PREFIX)]
        return ([LEARNED] if self.run.light is not None else []) + list(self._envmap_paths) + uploads

    def add_upload(self, filename: str, content: bytes) -> str:
        """Validate an uploaded map (:func:`read_envmap_upload`) and add it; returns its name in the list."""
        img = read_envmap_upload(filename, content, self.max_upload_bytes)
        if img.shape[1] > STORED_UPLOAD_WIDTH:
            import cv2  # noqa: PLC0415

            # a 128² cube face spans ~512 equirect columns: 2048 keeps 4x that, and bounds memory
            h = max(2, round(img.shape[0] * STORED_UPLOAD_WIDTH / img.shape[1]))
            img = cv2.resize(img, (STORED_UPLOAD_WIDTH, h), interpolation=cv2.INTER_AREA)
        stem = re.sub(r"[^A-Za-z0-9_. -]+", "_", Path(filename).stem)[:60] or "map"
        key = f"{UPLOAD_PREFIX}{stem}"
        with self._lock:
            self._envmap_images.pop(key, None)
            self._envmap_images[key] = torch.from_numpy(np.ascontiguousarray(img))
            uploads = [k for k in self._envmap_images if k.startswith(UPLOAD_PREFIX)]
            dropped = uploads[:-MAX_UPLOADS]  # the oldest go first
            for k in dropped:
                del self._envmap_images[k]
            # a re-upload under the same name replaces the map: drop what was built from the old one
            for cache in (self._lights, self._shaded):
                for k in [k for k in cache if any(name in k for name in (key, *dropped))]:
                    del cache[k]
        return key

    def backend_options(self) -> list[tuple[str, bool, str]]:
        """(name, usable, message) per geometry backend: ``Gaussian`` always, ``mesh`` only when the
        run has ``mesh/textured_mesh.pt`` (usable when ``invrender.mesh.render`` imports)."""
        opts = [("Gaussian", True, "")]
        if self.mesh_file.is_file():
            try:
                self._mesh_renderer()
                opts.append(("mesh", True, ""))
            except ViewerError as e:
                opts.append(("mesh", False, str(e)))
        return opts

    def training_camera(self, i: int) -> ViewerCamera:
        """Training view ``i`` (its exact pose): what "snap to a training camera" goes to."""
        if self.views is None:
            raise ViewerError("the run's dataset was not found, so its training cameras are unknown")
        return camera_from_views(self.views, i)

    @property
    def mips(self):
        if self._mips is None:
            from invrender.shading.prefilter import SpecularMips  # noqa: PLC0415

            self._mips = SpecularMips(self.run.light_resolution)
        return self._mips

    # -- lights --------------------------------------------------------------------------------

    def _envmap_image(self, name: str) -> Tensor:
        if name not in self._envmap_images:
            if name not in self._envmap_paths:
                raise ViewerError(f"unknown environment map {name!r} (choose one of {self.envmap_names()})")
            from invrender.shading.envmap import read_hdr  # noqa: PLC0415

            img = read_hdr(self._envmap_paths[name])
            if not np.isfinite(img).all():
                raise ViewerError(f"environment map {self._envmap_paths[name]} holds non-finite values")
            self._envmap_images[name] = torch.from_numpy(np.maximum(img, 0.0))
        return self._envmap_images[name]

    def light(self, envmap: str, rotation_deg: float) -> EnvironmentLight:
        """The environment ``envmap`` rotated by ``rotation_deg`` at intensity 1 (cached)."""
        rot = _wrap_degrees(rotation_deg)
        key = ("light", envmap, rot)
        with self._lock:
            if key in self._lights:
                self._lights.move_to_end(key)
                return self._lights[key]
            res = self.run.light_resolution
            if envmap == LEARNED:
                if self.run.light is None:
                    raise ViewerError("this run has no learned environment light (it stopped before stage 2)")
                if rot == 0.0:
                    light = self.run.light
                else:
                    # rotate the learned cube itself: no round trip through an equirect map
                    d = cube_directions(res)
                    cube = sample_cube(self.run.light.cube().detach(), rotate_z(d, -rot))
                    light = EnvironmentLight(res)
                    with torch.no_grad():
                        light.log_radiance.copy_(torch.log(cube.clamp(min=1e-6)))
            else:
                light = EnvironmentLight.from_equirect(self._envmap_image(envmap), res, rot, 1.0)
            light.requires_grad_(False)
            _put(self._lights, key, light, _LIGHTS)
            return light

    # -- the three steps -------------------------------------------------------------------------

    def _mesh_renderer(self):
        if self._mesh_fn is None:
            try:
                from invrender.mesh.render import render_mesh_view  # noqa: PLC0415
            except Exception as e:  # noqa: BLE001 - the mesh backend is optional; say why it is off
                raise ViewerError(f"mesh renderer unavailable: cannot import invrender.mesh.render ({e})") from e
            self._mesh_fn = render_mesh_view
        return self._mesh_fn

    def _rasterize(self, backend: str, camera: ViewerCamera, width: int, height: int) -> tuple[tuple, _Raster]:
        key = ("raster", backend, camera.key(), width, height)
        if key in self._rasters:
            self._rasters.move_to_end(key)
            return key, self._rasters[key]
        viewmat = torch.as_tensor(np.asarray(camera.viewmat), dtype=torch.float32)  # [4, 4]
        K = camera.K(width, height)  # [3, 3]
        if backend == "mesh":
            if not self.mesh_file.is_file():
                raise ViewerError(f"this run has no trained mesh ({self.mesh_file} does not exist)")
            fn = self._mesh_renderer()
            if self._mesh is None:
                from invrender.mesh.textured import TexturedMesh  # noqa: PLC0415

                self._mesh = TexturedMesh.load(self.mesh_file)
            # the mesh draws the same G-buffer as the Gaussians (DESIGN.md); blend "radiance" skips
            # its shading, which is step 2 here as for the Gaussians
            out = fn(self._mesh, self.run.light, viewmat, K, width, height, blend="radiance")
            g_full, alpha, depth = out.gbuffer, out.alpha, out.depth
        else:
            from invrender.distill.model import render_prd  # noqa: PLC0415
            from invrender.eval import prd_params  # noqa: PLC0415

            run = self.run
            # blend "radiance" rasterizes every channel but shades nothing: shading is step 2
            out = render_prd(prd_params(run), run.light, viewmat, K, width, height, run.meta["sh_degree"], None,
                             blend="radiance", visibility=run.visibility, material_override=run.progress_override,
                             backend=self.raster_backend, visibility_per_pixel=True)  # shadows follow the light
            g_full, alpha, depth = out.gbuffer, out.alpha, out.depth
        mask = alpha[..., 0] > ALPHA_EPS  # [H, W]
        n = int(mask.sum())

        def pick(t: Tensor | None, c: int, fill: float) -> Tensor:
            return t[mask] if t is not None else torch.full((n, c), fill)

        metallic = pick(g_full.metallic, 1, 0.0)
        if self.run.blend == "specular":
            metallic = torch.ones_like(metallic)  # PRD's stage 2 holds metallic at 1 (render_prd)
        g = GBuffer(albedo=pick(g_full.albedo, 3, 0.5), roughness=pick(g_full.roughness, 1, 0.5), metallic=metallic,
                    normal=pick(g_full.normal, 3, 0.0), alpha=alpha[mask], radiance=pick(g_full.radiance, 3, 0.0),
                    progress=pick(g_full.progress, 1, 1.0),
                    visibility=pick(g_full.visibility, 1 if g_full.visibility is None else g_full.visibility.shape[-1], 1.0))
        view_dirs = F.normalize(pixel_rays(K, width, height) @ viewmat[:3, :3], dim=-1)[mask]  # [M, 3]
        points = None
        if backend != "mesh":  # the mesh is not trained with traced reflections (render_mesh_view)
            from invrender.distill.reflection import surface_points  # noqa: PLC0415

            points = surface_points(depth, K, viewmat)[mask]
        raster = _Raster(width, height, mask, alpha, g, depth[mask], view_dirs, points)
        _put(self._rasters, key, raster, _RASTERS)
        self.stats["rasterized"] = True
        return key, raster

    def _shade(self, rkey: tuple, raster: _Raster, envmap: str, rotation_deg: float) -> Shaded:
        key = ("shade", rkey, envmap, _wrap_degrees(rotation_deg))
        if key in self._shaded:
            self._shaded.move_to_end(key)
            return self._shaded[key]
        light = self.light(envmap, rotation_deg)
        if raster.g.albedo.shape[0] == 0:  # nothing in view
            z = torch.zeros(0, 3)
            sh = Shaded(z, z, z, z, z)
        else:
            g = raster.g
            grid = self.run.reflection_grid(light) if raster.points is not None else None
            if grid is not None:  # as render_prd: traced where the surface covers half the pixel
                from invrender.distill.reflection import reflection_image  # noqa: PLC0415

                g = dataclasses.replace(g, reflection=reflection_image(
                    grid, raster.points[:, None], g.normal[:, None], raster.view_dirs[:, None], g.alpha[:, None])[:, 0])
            sh = shade(g, light, raster.view_dirs, mips=self.mips)
        _put(self._shaded, key, sh, _SHADED)
        self.stats["shaded"] = True
        return sh


def _put(cache: OrderedDict, key, value, size: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > size:
        cache.popitem(last=False)


# ----------------------------------------------------------------------------------------------
# display


def _colormap(v: Tensor, name: str) -> Tensor:
    """Scalars ``[M, 1]`` in [0, 1] -> display RGB ``[M, 3]``."""
    if name == "gray":
        return v.clamp(0, 1).expand(-1, 3)
    import cv2  # noqa: PLC0415

    codes = {"turbo": cv2.COLORMAP_TURBO, "viridis": cv2.COLORMAP_VIRIDIS, "magma": cv2.COLORMAP_MAGMA}
    u8 = (v.clamp(0, 1) * 255).round().to(torch.uint8).numpy().reshape(-1, 1)
    if u8.shape[0] == 0:
        return torch.zeros(0, 3)
    bgr = cv2.applyColorMap(u8, codes[name]).reshape(-1, 3)
    return torch.from_numpy(bgr[:, ::-1].astype(np.float32) / 255.0)


def _pbr_linear(ctx: ViewerContext, state: ViewerState, rkey, raster: _Raster) -> tuple[Tensor, Tensor | None]:
    """Linear physically based colour ``[M, 3]`` under the state's light, and (when relit) the
    same under the learned light, which the radiance residual is relative to."""
    if state.relit:
        lin = ctx._shade(rkey, raster, state.envmap, state.rotation_deg).pbr_linear * state.intensity
        return lin, ctx._shade(rkey, raster, LEARNED, 0.0).pbr_linear
    sh = ctx._shade(rkey, raster, LEARNED, 0.0)
    # PRD's stage 2 shows the specular term alone (render_prd)
    return (sh.specular if ctx.run.blend == "specular" else sh.pbr_linear), None


def _buffer_values(ctx: ViewerContext, state: ViewerState, rkey, raster: _Raster, name: str) -> Tensor:
    """Display-space colour ``[M, 3]`` of buffer ``name`` at the covered pixels (not yet composited)."""
    g = raster.g
    tm = state.tonemapping or ctx.run.tonemapping
    if name in ("final", "pbr"):
        if not ctx.has_light:  # a radiance-only run: its final is the radiance, it has no PBR part
            return g.radiance.clamp(0, 1) if name == "final" else torch.zeros_like(g.radiance)
        lin, train = _pbr_linear(ctx, state, rkey, raster)
        pbr = tonemap(lin, tm)
        if name == "pbr" or ctx.run.blend == "pbr":
            return pbr
        return progress_blend(g.radiance, g.progress, lin, pbr, tm, train)
    if name == "radiance":
        return g.radiance.clamp(0, 1)
    if name == "albedo":
        return linear_to_srgb(g.albedo)
    if name == "normal":
        return F.normalize(g.normal, dim=-1) * 0.5 + 0.5
    if name == "depth":
        d = raster.depth
        if d.numel() == 0:
            return torch.zeros(0, 3)
        lo, hi = float(d.min()), float(d.max())
        return _colormap(1.0 - (d - lo) / max(hi - lo, 1e-8), state.colormap)  # near is the warm end
    if name == "visibility" and g.visibility is not None and g.visibility.shape[-1] > 1:
        # light-dependent: the shadows of the light on screen
        light = ctx.light(state.envmap if state.relit else LEARNED, state.rotation_deg if state.relit else 0.0)
        return _colormap(light_visibility(g.visibility, light).mean(dim=-1, keepdim=True), state.colormap)
    if name in SCALAR_BUFFERS:
        return _colormap(getattr(g, name), state.colormap)
    raise ViewerError(f"buffer must be one of {BUFFERS}, got {name!r}")


def _compose(ctx: ViewerContext, state: ViewerState, rkey, raster: _Raster, name: str, bg: Tensor) -> Tensor:
    """Buffer ``name`` over the background, ``[H, W, 3]`` in [0, 1]."""
    img = bg.expand(raster.height, raster.width, 3).clone()
    a = raster.g.alpha  # [M, 1]
    img[raster.mask] = _buffer_values(ctx, state, rkey, raster, name).clamp(0, 1) * a + bg * (1.0 - a)
    return img


@torch.no_grad()
def render_buffer(ctx: ViewerContext, state: ViewerState, camera: ViewerCamera, *, coarse: bool = False) -> Tensor:
    """The frame as float ``[H, W, 3]`` in [0, 1] (what :func:`render_frame` quantizes)."""
    state.validate()
    with ctx._lock:
        t0 = time.perf_counter()
        ctx.stats = {"rasterized": False, "shaded": False}
        res = max(MIN_RESOLUTION, round(state.resolution * (state.coarse_scale if coarse else 1.0)))
        width, height = camera.image_size(res)
        rkey, raster = ctx._rasterize(state.backend, camera, width, height)
        bg = {"white": torch.ones(3), "black": torch.zeros(3)}.get(state.background, ctx.run_background)
        img = _compose(ctx, state, rkey, raster, state.buffer, bg)
        if state.split:
            right = _compose(ctx, state, rkey, raster, state.split_buffer, bg)
            half = width // 2
            img[:, half:] = right[:, half:]
            img[:, max(half - 1, 0):half + 1] = 0.5  # a 2-px divider so the halves read as two images
        ctx.stats.update(seconds=time.perf_counter() - t0, size=(width, height), coarse=coarse)
        return img


def render_frame(ctx: ViewerContext, state: ViewerState, camera: ViewerCamera, *, coarse: bool = False) -> np.ndarray:
    """One viewer frame, ``uint8`` RGB ``[H, W, 3]``: the longer side ``state.resolution`` (times
    ``state.coarse_scale`` when ``coarse``), the aspect of ``camera``. Raises :class:`ViewerError`
    for a state it cannot render (unknown map, mesh unavailable), with a message for the panel."""
    img = render_buffer(ctx, state, camera, coarse=coarse)
    return (img * 255.0 + 0.5).clamp(0, 255).to(torch.uint8).numpy()


__all__ = [
    "BACKENDS", "BUFFERS", "COLORMAPS", "LEARNED", "SCALAR_BUFFERS", "UploadError", "ViewerCamera", "ViewerContext",
    "ViewerError", "ViewerState", "camera_from_viser", "camera_from_views", "check_upload_size", "encode_png",
    "read_envmap_upload", "render_buffer", "render_frame", "save_png", "viser_pose",
]
