"""nerfstudio datasets: ``transforms.json`` (as written by ``ns-process-data``).

Intrinsics ``fl_x fl_y cx cy w h camera_model`` sit at the top level and may be overridden per
frame. Pinhole models only: PINHOLE, SIMPLE_PINHOLE, and OPENCV / SIMPLE_RADIAL / RADIAL when all
distortion terms are zero. ``transform_matrix`` is an OpenGL camera-to-world. ``cx``/``cy``
default to the image centre (nerfstudio uses the same pixel-centre convention as we do).

Frames are sorted by ``file_path``. Split: ``train_filenames`` / ``test_filenames`` when the file
lists them, otherwise every 8th frame (index % 8 == 0) is a test view, as nerfstudio's
``interval`` split and the mip-NeRF 360 protocol do.

Normalization: the JSON frame is first mapped back to the original capture by the inverse of
``applied_transform`` when present; then, in the JSON frame, the mean camera centre moves to the
origin and a uniform scale puts the largest absolute camera coordinate at 1 (nerfstudio's
``auto_scale_poses``; no rotation). ``SceneData.normalization`` = that similarity @
``applied_transform``, so exports that apply its inverse land in the capture's (COLMAP) frame.
Points from ``ply_file_path`` are in the JSON frame, as nerfstudio writes them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from invrender import cameras
from invrender.data.scene import (
    DatasetError,
    SceneData,
    make_scene_data,
    SplitBuilder,
    Views,
    fit_normalization,
    number,
    pose_matrix,
    read_json,
    resolve_image,
    transform_points,
)

PINHOLE_MODELS = ("PINHOLE", "SIMPLE_PINHOLE", "OPENCV", "SIMPLE_RADIAL", "RADIAL")
DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")


def _frame_K(frame: dict, meta: dict, where: str):
    """Intrinsics function (w, h) -> K for one frame (per-frame keys override the top level)."""

    def get(key, default=None):
        v = frame.get(key, meta.get(key, default))
        return None if v is None else number(v, where, key)

    fl_x = get("fl_x")
    if fl_x is None:
        raise DatasetError(f"{where}: missing 'fl_x' (focal length in pixels)")
    fl_y = get("fl_y", fl_x)
    cx, cy = get("cx"), get("cy")

    def K(width: int, height: int) -> torch.Tensor:
        return cameras.make_K(fl_x, fl_y, width / 2.0 if cx is None else cx, height / 2.0 if cy is None else cy)

    return K


def _check_model(frame: dict, meta: dict, where: str) -> None:
    model = str(frame.get("camera_model", meta.get("camera_model", "PINHOLE")))
    if model not in PINHOLE_MODELS:
        raise DatasetError(
            f"{where}: unknown or unsupported camera_model '{model}' (supported: {', '.join(PINHOLE_MODELS)})"
        )
    dist = {k: number(frame.get(k, meta.get(k, 0.0)), where, k) for k in DISTORTION_KEYS}
    nonzero = {k: v for k, v in dist.items() if v != 0.0}
    if nonzero:
        raise DatasetError(
            f"{where}: camera_model {model} with nonzero distortion {nonzero}: distortion not supported yet "
            "(undistort the images first, e.g. colmap image_undistorter)"
        )


def _path_key(p: Path) -> str:
    """Comparable form of a dataset-relative path (``./images/a.png`` == ``images/a.png``)."""
    return os.path.normcase(os.path.abspath(p))


def read_ply_points(path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``x y z`` [P, 3] and, when present, ``red green blue`` scaled to [0, 1] [P, 3] of a PLY."""
    try:
        from plyfile import PlyData
    except ImportError as e:
        raise ImportError(f"reading {path} needs plyfile: pip install plyfile (or invrender[dev])") from e
    if not path.is_file():
        raise DatasetError(f"{path}: point cloud file not found")
    try:
        ply = PlyData.read(str(path))
        v = ply["vertex"]
        xyz = np.stack([np.asarray(v[k], dtype=np.float64) for k in ("x", "y", "z")], axis=1)
    except Exception as e:  # plyfile raises several types for bad files
        raise DatasetError(f"{path}: cannot read PLY vertices with x, y, z ({e})") from e
    if not np.isfinite(xyz).all():
        raise DatasetError(f"{path}: point cloud has non-finite coordinates")
    names = v.data.dtype.names
    colors = None
    if all(k in names for k in ("red", "green", "blue")):
        c = np.stack([np.asarray(v[k]) for k in ("red", "green", "blue")], axis=1)
        if np.issubdtype(c.dtype, np.integer):
            c = c.astype(np.float64) / float(np.iinfo(c.dtype).max)
        colors = torch.from_numpy(np.clip(c, 0.0, 1.0)).float()
    return torch.from_numpy(xyz).float(), colors


def _split_indices(meta: dict, file_paths: list[Path], json_path: Path, root: Path):
    """(train, test) index lists into the sorted frames."""
    keys = {s: meta.get(f"{s}_filenames") for s in ("train", "test")}
    if keys["train"] is None and keys["test"] is None:
        test = [i for i in range(len(file_paths)) if i % 8 == 0]
        train = [i for i in range(len(file_paths)) if i % 8 != 0]
        return train, test
    lookup = {_path_key(p): i for i, p in enumerate(file_paths)}
    chosen = {}
    for split, names in keys.items():
        if names is None:
            continue
        if not isinstance(names, list):
            raise DatasetError(f"{json_path}: '{split}_filenames' must be a list")
        idx = []
        for n in names:
            key = _path_key(root / str(n))
            if key not in lookup:
                raise DatasetError(f"{json_path}: '{split}_filenames' lists {n}, which is not a frame file_path")
            idx.append(lookup[key])
        chosen[split] = sorted(idx)
    for split, other in (("train", "test"), ("test", "train")):
        if split not in chosen:
            taken = set(chosen[other])
            chosen[split] = [i for i in range(len(file_paths)) if i not in taken]
    return chosen["train"], chosen["test"]


def load(root: Path, *, downscale: int = 1, splits=("train", "test")) -> SceneData:
    """Load a nerfstudio ``transforms.json`` dataset (see the module docstring)."""
    json_path = root / "transforms.json"
    meta = read_json(json_path)
    frames = meta.get("frames")
    if not isinstance(frames, list):
        raise DatasetError(f"{json_path}: missing or invalid 'frames' list")
    if not frames:
        raise DatasetError(f"{json_path}: 'frames' is empty")
    for k, frame in enumerate(frames):
        if not isinstance(frame, dict) or "file_path" not in frame or "transform_matrix" not in frame:
            raise DatasetError(f"{json_path} frame {k}: needs 'file_path' and 'transform_matrix'")
    order = sorted(range(len(frames)), key=lambda k: str(frames[k]["file_path"]))

    specs = []  # (name, image path, c2w, K fn, declared wh, mask path) in sorted order
    for k in order:
        frame = frames[k]
        where = f"{json_path} frame {k} ({frame['file_path']})"
        _check_model(frame, meta, where)
        K = _frame_K(frame, meta, where)
        w, h = frame.get("w", meta.get("w")), frame.get("h", meta.get("h"))
        wh = None if w is None or h is None else (int(number(w, where, "w")), int(number(h, where, "h")))
        c2w = pose_matrix(frame["transform_matrix"], where)
        image = resolve_image(root, str(frame["file_path"]), where)
        mask = None
        if frame.get("mask_path"):
            mask = resolve_image(root, str(frame["mask_path"]), where)
        specs.append((Path(str(frame["file_path"])).stem, image, c2w, K, wh, mask))

    applied = torch.eye(4, dtype=torch.float64)
    if "applied_transform" in meta:
        applied = torch.from_numpy(pose_matrix(meta["applied_transform"], str(json_path), "applied_transform"))
    viewmats_json = cameras.opengl_c2w_to_viewmat(np.stack([s[2] for s in specs]))  # [N, 4, 4]
    N = fit_normalization(viewmats_json)
    viewmats = cameras.transform_viewmats(viewmats_json, N)

    train_idx, test_idx = _split_indices(meta, [root / str(frames[k]["file_path"]) for k in order], json_path, root)
    views: dict[str, Views] = {}
    for split, idx in (("train", train_idx), ("test", test_idx)):
        if split not in splits:
            continue
        builder = SplitBuilder(split, len(idx), downscale, json_path)
        for i in idx:
            name, image, _, K, wh, mask = specs[i]
            builder.add_view(name, image, viewmats[i], K, declared_wh=wh, mask_path=mask)
        views[split] = builder.build()

    points = colors = None
    if meta.get("ply_file_path"):
        points, colors = read_ply_points(root / str(meta["ply_file_path"]))
        points = transform_points(points, N)
        if colors is None:
            colors = torch.full_like(points, 0.5)
    # a real capture: black background by default
    return make_scene_data(root, "nerfstudio", views, points, colors, (N @ applied), white_background=False,
                           viewmats=viewmats)
