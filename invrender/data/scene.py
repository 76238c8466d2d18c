"""`SceneData`: what every dataset reader returns, the format dispatcher, and helpers the readers share.

Readers live next to this file (``blender``, ``tensoir``, ``nerfstudio``, ``colmap``). Each one
converts its cameras with :mod:`invrender.cameras`, decodes PNG/JPG colour to linear at read time,
and reports bad input as :class:`DatasetError` with the offending file in the message.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from invrender import cameras
from invrender.color import srgb_to_linear
from invrender.image_io import ImageIOError, read_image


class DatasetError(ValueError):
    """Bad or unrecognised dataset. The message always names the file or folder and the problem."""


@dataclass
class Views:
    """One split of a dataset. All views share one resolution; tensors are float32 on the CPU."""

    names: list[str]
    """Per view, the name used for output files (``r_0``, ``test_000``, an image stem)."""
    images: torch.Tensor  # [V, H, W, 3] linear, straight (not premultiplied) colour
    alphas: torch.Tensor  # [V, H, W, 1] in [0, 1]; ones when the images carry no alpha / mask
    viewmats: torch.Tensor  # [V, 4, 4] world-to-camera, OpenCV axes, normalized frame
    Ks: torch.Tensor  # [V, 3, 3] pixel intrinsics, pixel centres at +0.5
    width: int
    height: int
    gt: dict[str, torch.Tensor] = field(default_factory=dict)
    """Optional ground truth in the same view order: ``albedo`` [V,H,W,3] linear, ``normal``
    [V,H,W,3] world unit vectors, ``roughness`` / ``metallic`` [V,H,W,1] raw values,
    ``rgba_<env>`` [V,H,W,4] linear colour + alpha of the view relit by environment ``<env>``."""
    image_paths: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def empty(cls, width: int = 0, height: int = 0) -> "Views":
        """A split with no views (for splits that were not requested)."""
        return cls(
            names=[],
            images=torch.zeros(0, height, width, 3),
            alphas=torch.zeros(0, height, width, 1),
            viewmats=torch.zeros(0, 4, 4),
            Ks=torch.zeros(0, 3, 3),
            width=width,
            height=height,
        )


@dataclass
class SceneData:
    """A loaded dataset: cameras and photos of each split plus what the format knows about the scene."""

    root: Path
    format: str  # "blender" | "tensoir" | "nerfstudio" | "colmap"
    train: Views
    test: Views
    points: torch.Tensor | None  # [P, 3] SfM / init points in the normalized frame
    point_colors: torch.Tensor | None  # [P, 3] display-space colours in [0, 1]
    normalization: torch.Tensor  # [4, 4] original capture coordinates -> normalized frame
    envmaps: dict[str, Path]  # environment name -> .hdr/.exr under <root>/envmaps
    scene_radius: float
    """1.1 x the largest distance of a camera centre from the cameras' mean centre (the 3DGS
    ``cameras_extent``), in the normalized frame; scales learning rates and random init."""
    white_background: bool  # default background hint: True for synthetic (blender / tensoir)


SPLITS = ("train", "test")


def load_scene(path, *, downscale: int = 1, splits=SPLITS, load_gt: bool = True) -> SceneData:
    """Load a dataset folder, detecting its format.

    Args:
        path: dataset root (or its ``transforms*.json``). Recognised: NeRF-synthetic
            (``transforms_{train,test}.json``), TensoIR (same JSONs with ``test_000/rgba`` paths, or
            ``test_000/metadata.json`` folders), nerfstudio (``transforms.json``) and COLMAP
            (``sparse/0`` + ``images/``).
        downscale: integer factor; images, alphas and GT are area-averaged over factor x factor
            blocks (colour weighted by alpha; a right/bottom remainder is cropped), Ks scaled by
            1 / factor.
        splits: which of ("train", "test") to read; the others come back as empty :class:`Views`.
        load_gt: read ground-truth maps (TensoIR) when present.
    """
    root = Path(path)
    if not isinstance(downscale, int) or isinstance(downscale, bool) or downscale < 1:
        raise ValueError(f"downscale must be an integer >= 1, got {downscale!r}")
    splits = tuple(splits)
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits:
        raise ValueError(f"splits must be a non-empty subset of {SPLITS}, got {splits}")
    fmt, root = detect_format(root)
    if fmt == "blender":
        from invrender.data import blender

        return blender.load(root, downscale=downscale, splits=splits)
    if fmt == "tensoir":
        from invrender.data import tensoir

        return tensoir.load(root, downscale=downscale, splits=splits, load_gt=load_gt)
    if fmt == "nerfstudio":
        from invrender.data import nerfstudio

        return nerfstudio.load(root, downscale=downscale, splits=splits)
    from invrender.data import colmap

    return colmap.load(root, downscale=downscale, splits=splits)


def detect_format(path: Path) -> tuple[str, Path]:
    """Return ``(format, root)`` for a dataset path, or raise :class:`DatasetError`."""
    from invrender.data import colmap, tensoir

    if not path.exists():
        raise DatasetError(f"{path}: dataset path does not exist")
    if path.is_file():
        if path.name == "transforms.json":
            return "nerfstudio", path.parent
        if path.name.startswith("transforms_") and path.suffix == ".json":
            path = path.parent
        else:
            raise DatasetError(f"{path}: not a dataset folder or transforms JSON")
    root = path
    if any((root / f"transforms_{s}.json").is_file() for s in ("train", "test", "val")):
        return ("tensoir" if tensoir.looks_like_tensoir(root) else "blender"), root
    if tensoir.metadata_folders(root, "train") or tensoir.metadata_folders(root, "test"):
        return "tensoir", root
    if (root / "transforms.json").is_file():
        return "nerfstudio", root
    if colmap.find_sparse_dir(root) is not None:
        return "colmap", root
    raise DatasetError(
        f"{root}: not a recognised dataset (no transforms_train.json, transforms.json or sparse/0 found)"
    )


# ----------------------------------------------------------------------------------------------
# Helpers shared by the readers


def read_json(path: Path) -> dict:
    """Parse a JSON file into a dict, raising :class:`DatasetError` with the parser's message."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: malformed JSON ({e})") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read ({e})") from e
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    return data


def read_image_file(path: Path, channels=None) -> np.ndarray:
    """:func:`invrender.image_io.read_image`, reporting failures as :class:`DatasetError`."""
    try:
        return read_image(path, channels)
    except ImageIOError as e:
        raise DatasetError(str(e)) from e


def number(value, where: str, key: str) -> float:
    """A finite float from a JSON value, or a :class:`DatasetError` naming ``where`` and ``key``."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: '{key}' must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise DatasetError(f"{where}: '{key}' is not finite ({value!r})")
    return x


def pose_matrix(value, where: str, key: str = "transform_matrix") -> np.ndarray:
    """A 4x4 float64 pose from a nested 4x4 / 3x4 list, a flat list of 16 / 12, or a
    comma- or space-separated string of 16 numbers (TensoIR's ``cam_transform_mat``)."""
    try:
        if isinstance(value, str):
            value = [float(v) for v in value.replace(",", " ").split()]
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: '{key}' is not a matrix of numbers") from None
    if m.size in (12, 16) and m.ndim in (1, 2):
        m = m.reshape(-1, 4)
    if m.shape not in ((3, 4), (4, 4)):
        raise DatasetError(f"{where}: '{key}' must be 4x4 (or 16 numbers), got shape {m.shape}")
    if m.shape == (3, 4):
        m = np.concatenate([m, [[0.0, 0.0, 0.0, 1.0]]], axis=0)
    if not np.isfinite(m).all():
        raise DatasetError(f"{where}: '{key}' has non-finite values")
    if abs(np.linalg.det(m[:3, :3])) < 1e-12:
        raise DatasetError(f"{where}: '{key}' is singular")
    return m


def area_downscale(x: np.ndarray, factor: int, weight: np.ndarray | None = None) -> np.ndarray:
    """Average ``factor`` x ``factor`` blocks of x [H, W, C]; crops a right/bottom remainder.

    With ``weight`` [H, W, 1] (alpha), each block is the weighted mean, so fully transparent
    pixels do not bleed their (arbitrary) colour into the edge; blocks of zero weight fall back
    to the plain mean.
    """
    if factor == 1:
        return x
    H, W, C = x.shape
    h, w = H // factor, W // factor
    x = x[: h * factor, : w * factor].reshape(h, factor, w, factor, C)
    plain = x.mean(axis=(1, 3))
    if weight is None:
        return plain.astype(np.float32)
    wb = weight[: h * factor, : w * factor].reshape(h, factor, w, factor, 1)
    wsum = wb.sum(axis=(1, 3))  # [h, w, 1]
    weighted = (x * wb).sum(axis=(1, 3)) / np.maximum(wsum, 1e-12)
    return np.where(wsum > 1e-6, weighted, plain).astype(np.float32)


def split_color_alpha(img: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Encoded [H, W, C] image -> (linear RGB [H, W, 3], alpha [H, W, 1]); grey is replicated."""
    c = img.shape[2]
    if c == 1:
        rgb, alpha = np.repeat(img, 3, axis=2), None
    elif c == 3:
        rgb, alpha = img, None
    elif c == 4:
        rgb, alpha = img[:, :, :3], img[:, :, 3:]
    else:  # read_image only returns 1, 3 or 4 channels
        raise DatasetError(f"{path}: unsupported channel count {c}")
    if alpha is None:
        alpha = np.ones_like(img[:, :, :1])
    return srgb_to_linear(rgb).astype(np.float32), alpha.astype(np.float32)


class SplitBuilder:
    """Collects the views of one split, checking sizes and downscaling as they arrive.

    Per-view arrays are written into preallocated tensors, so peak memory is one full-size image
    above the final tensors.
    """

    def __init__(self, split: str, n: int, downscale: int, source: Path):
        if n == 0:
            raise DatasetError(f"{source}: the '{split}' split has no views")
        self.split, self.n, self.downscale, self.source = split, n, downscale, source
        self.names: list[str] = []
        self.paths: list[str] = []
        self.viewmats: list[torch.Tensor] = []
        self.Ks: list[torch.Tensor] = []
        self.size: tuple[int, int] | None = None  # original (H, W)
        self.first_path: Path | None = None
        self.images: torch.Tensor | None = None
        self.alphas: torch.Tensor | None = None
        self.gt: dict[str, torch.Tensor] = {}
        self.gt_count: dict[str, int] = {}
        self._alpha_full: np.ndarray | None = None  # full-res alpha of the latest view, for GT

    def _check_size(self, arr: np.ndarray, path: Path) -> None:
        hw = arr.shape[:2]
        if self.size is None:
            self.size, self.first_path = hw, path
            if hw[0] < self.downscale or hw[1] < self.downscale:
                raise DatasetError(f"{path}: image of {hw[1]}x{hw[0]} is smaller than downscale {self.downscale}")
        elif hw != self.size:
            raise DatasetError(
                f"{path}: image size {hw[1]}x{hw[0]} differs from {self.size[1]}x{self.size[0]} "
                f"of {self.first_path} in the '{self.split}' split"
            )

    def _store(self, tensor: torch.Tensor | None, i: int, arr: np.ndarray) -> torch.Tensor:
        if tensor is None:
            tensor = torch.empty((self.n, *arr.shape), dtype=torch.float32)
        tensor[i] = torch.from_numpy(arr)
        return tensor

    def add_view(
        self,
        name: str,
        image_path: Path,
        viewmat: torch.Tensor,
        K,
        *,
        declared_wh: tuple[int, int] | None = None,
        mask_path: Path | None = None,
    ) -> int:
        """Read and store one view; returns its index.

        ``viewmat`` [4, 4]; ``K`` [3, 3] at full resolution, or a function ``(width, height) -> K``
        for formats whose intrinsics depend on the image size.
        """
        i = len(self.names)
        img = read_image_file(image_path)
        self._check_size(img, image_path)
        if declared_wh is not None and (img.shape[1], img.shape[0]) != tuple(declared_wh):
            raise DatasetError(
                f"{image_path}: image is {img.shape[1]}x{img.shape[0]} but the dataset declares "
                f"{declared_wh[0]}x{declared_wh[1]} (w x h)"
            )
        rgb, alpha = split_color_alpha(img, image_path)
        if mask_path is not None:
            mask = read_image_file(mask_path)
            if mask.shape[:2] != img.shape[:2]:
                raise DatasetError(
                    f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]}, its image {image_path} is "
                    f"{img.shape[1]}x{img.shape[0]}"
                )
            alpha = alpha * (mask[:, :, 3:] if mask.shape[2] == 4 else mask[:, :, :1])
        self._alpha_full = alpha
        s = self.downscale
        self.images = self._store(self.images, i, area_downscale(rgb, s, alpha))
        self.alphas = self._store(self.alphas, i, area_downscale(alpha, s))
        self.names.append(name)
        self.paths.append(str(image_path))
        self.viewmats.append(torch.as_tensor(viewmat, dtype=torch.float32))
        if callable(K):
            K = K(img.shape[1], img.shape[0])
        self.Ks.append(torch.as_tensor(K, dtype=torch.float32))
        return i

    def add_gt(self, i: int, key: str, arr: np.ndarray, path: Path, *, kind: str) -> None:
        """Store a ground-truth map for view ``i`` (the view added last).

        ``kind``: "color" (sRGB -> linear RGB), "normal" (raw 2 rgb - 1, normalized), "scalar"
        (raw, first channel), "rgba" (sRGB colour -> linear, plus alpha).
        """
        if arr.shape[:2] != self.size:
            raise DatasetError(
                f"{path}: ground truth is {arr.shape[1]}x{arr.shape[0]}, the view images are "
                f"{self.size[1]}x{self.size[0]}"
            )
        s, alpha = self.downscale, self._alpha_full
        if kind == "color":
            out = area_downscale(srgb_to_linear(_rgb(arr)).astype(np.float32), s, alpha)
        elif kind == "normal":
            n = area_downscale(_rgb(arr) * 2.0 - 1.0, s, alpha)
            norm = np.linalg.norm(n, axis=2, keepdims=True)
            out = np.where(norm > 1e-6, n / np.maximum(norm, 1e-6), 0.0).astype(np.float32)
        elif kind == "scalar":
            out = area_downscale(arr[:, :, :1], s, alpha)
        elif kind == "rgba":
            rgb, a = split_color_alpha(arr if arr.shape[2] != 1 else np.repeat(arr, 3, axis=2), path)
            out = np.concatenate([area_downscale(rgb, s, a), area_downscale(a, s)], axis=2)
        else:
            raise ValueError(f"unknown ground-truth kind {kind!r}")
        self.gt[key] = self._store(self.gt.get(key), i, out)
        self.gt_count[key] = self.gt_count.get(key, 0) + 1

    def build(self) -> Views:
        V = len(self.names)
        assert V == self.n, (V, self.n)
        Ks = torch.stack(self.Ks)
        if self.downscale > 1:
            Ks = cameras.scale_Ks(Ks, 1.0 / self.downscale)
        gt = {}
        for key, t in self.gt.items():
            if self.gt_count[key] == V:
                gt[key] = t
            else:
                warnings.warn(
                    f"{self.source}: ground truth '{key}' exists for {self.gt_count[key]} of {V} "
                    f"'{self.split}' views; ignoring it",
                    stacklevel=3,
                )
        return Views(
            names=self.names,
            images=self.images,
            alphas=self.alphas,
            viewmats=torch.stack(self.viewmats),
            Ks=Ks,
            width=self.images.shape[2],
            height=self.images.shape[1],
            gt=gt,
            image_paths=self.paths,
        )


def _rgb(arr: np.ndarray) -> np.ndarray:
    return np.repeat(arr[:, :, :1], 3, axis=2) if arr.shape[2] == 1 else arr[:, :, :3]


def camera_extent(viewmats: torch.Tensor) -> float:
    """1.1 x the largest distance of a camera centre from the mean centre (3DGS ``cameras_extent``).

    Falls back to 1.0 when all cameras sit at one point (a single view, say).
    """
    centers = cameras.camera_centers(viewmats).double()  # [V, 3]
    radius = float((centers - centers.mean(0)).norm(dim=-1).max()) if len(centers) else 0.0
    return 1.1 * radius if radius > 1e-8 else 1.0


def fit_normalization(viewmats: torch.Tensor) -> torch.Tensor:
    """Similarity [4, 4] that centres the camera centres on their mean and scales them into [-1, 1].

    As nerfstudio's ``auto_scale_poses``: after subtracting the mean centre, the largest absolute
    camera coordinate becomes 1. No rotation is applied. Identity scale if the cameras coincide.
    """
    centers = cameras.camera_centers(viewmats).double()  # [V, 3]
    mean = centers.mean(0)
    extent = float((centers - mean).abs().max())
    scale = 1.0 / extent if extent > 1e-8 else 1.0
    T = torch.eye(4, dtype=torch.float64)
    T[:3, :3] *= scale
    T[:3, 3] = -scale * mean
    return T


def transform_points(points: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """Apply a [4, 4] transform to points [P, 3]."""
    p = points.double()
    T = T.double()
    return (p @ T[:3, :3].T + T[:3, 3]).float()


def make_scene_data(root: Path, fmt: str, views: dict[str, Views], points: torch.Tensor | None,
                    colors: torch.Tensor | None, normalization: torch.Tensor, white_background: bool,
                    viewmats: torch.Tensor | None = None) -> SceneData:
    """The SceneData every reader returns: the scene radius from ``viewmats`` (default: all loaded
    cameras), an empty Views for a split the dataset does not have, env maps found under ``root``."""
    loaded = [v for v in views.values() if len(v)]
    ref = loaded[0] if loaded else next(iter(views.values()))
    empty = Views.empty(ref.width, ref.height)
    if viewmats is None:
        viewmats = torch.cat([v.viewmats for v in loaded]) if loaded else ref.viewmats
    return SceneData(
        root=root,
        format=fmt,
        train=views.get("train", empty),
        test=views.get("test", empty),
        points=points,
        point_colors=colors,
        normalization=normalization.float(),
        envmaps=find_envmaps(root),
        scene_radius=camera_extent(viewmats),
        white_background=white_background,
    )


def find_envmaps(root: Path) -> dict[str, Path]:
    """Environment maps under ``<root>/envmaps``: name (file stem) -> path, sorted by name."""
    d = root / "envmaps"
    if not d.is_dir():
        return {}
    files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in (".hdr", ".exr"))
    return {p.stem: p for p in files}


def resolve_image(root: Path, file_path: str, where: str) -> Path:
    """``root / file_path``; when that file does not exist, try it with an image extension added."""
    p = (root / file_path) if not Path(file_path).is_absolute() else Path(file_path)
    if p.is_file():
        return p
    for ext in (".png", ".PNG", ".jpg", ".jpeg", ".JPG"):
        q = p.with_name(p.name + ext)
        if q.is_file():
            return q
    raise DatasetError(f"{p}: image file not found (also tried .png/.jpg; referenced by {where})")
