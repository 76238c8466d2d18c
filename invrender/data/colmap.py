"""COLMAP datasets: ``<root>/sparse/0`` (cameras, images, points3D as .bin or .txt) + ``<root>/images``.

Read with pycolmap (optional extra ``invrender[colmap]``, imported only here). COLMAP poses are
already world-to-camera in OpenCV axes and its pixel centres sit at +0.5 like ours, so they are
used as they are. Pinhole models only: PINHOLE, SIMPLE_PINHOLE, and SIMPLE_RADIAL / RADIAL /
OPENCV when their distortion is zero; undistort other captures with
``colmap image_undistorter`` first. Registered images are sorted by name and every 8th
(index % 8 == 0) is a test view. The normalization is the one of the nerfstudio reader (centre
the cameras, scale them into [-1, 1]).
"""

from __future__ import annotations

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
    transform_points,
)

# model name -> (indices of fx, fy, cx, cy in params, indices of distortion params)
_MODELS = {
    "SIMPLE_PINHOLE": ((0, 0, 1, 2), ()),
    "PINHOLE": ((0, 1, 2, 3), ()),
    "SIMPLE_RADIAL": ((0, 0, 1, 2), (3,)),
    "RADIAL": ((0, 0, 1, 2), (3, 4)),
    "OPENCV": ((0, 1, 2, 3), (4, 5, 6, 7)),
}


def find_sparse_dir(root: Path) -> Path | None:
    """``root/sparse/0`` or ``root/sparse`` when it holds cameras.bin / cameras.txt."""
    for d in (root / "sparse" / "0", root / "sparse"):
        if (d / "cameras.bin").is_file() or (d / "cameras.txt").is_file():
            return d
    return None


def _import_pycolmap():
    try:
        import pycolmap
    except ImportError as e:
        raise ImportError("reading COLMAP datasets needs pycolmap: pip install invrender[colmap]") from e
    return pycolmap


def _model_name(camera) -> str:
    model = camera.model
    # an enum in pycolmap >= 0.5 (its .name is the COLMAP name), a string before
    return str(getattr(model, "name", model))


def _camera_K(camera, sparse: Path) -> torch.Tensor:
    name = _model_name(camera)
    where = f"{sparse} camera {camera.camera_id}"
    if name not in _MODELS:
        raise DatasetError(
            f"{where}: unsupported camera model {name} (supported: {', '.join(_MODELS)}); "
            "undistort with colmap image_undistorter"
        )
    (ifx, ify, icx, icy), idist = _MODELS[name]
    p = np.asarray(camera.params, dtype=np.float64)
    if p.size <= max((ifx, ify, icx, icy) + idist):
        raise DatasetError(f"{where}: model {name} has too few parameters ({p.size})")
    if not np.isfinite(p).all():
        raise DatasetError(f"{where}: non-finite intrinsics {p.tolist()}")
    if any(p[i] != 0.0 for i in idist):
        raise DatasetError(
            f"{where}: model {name} has nonzero distortion {[float(p[i]) for i in idist]}; distortion is "
            "not supported yet: undistort with colmap image_undistorter"
        )
    return cameras.make_K(p[ifx], p[ify], p[icx], p[icy])


def _cam_from_world(image) -> np.ndarray:
    pose = image.cam_from_world
    if callable(pose):  # a method from pycolmap 3.12, a property before
        pose = pose()
    return np.asarray(pose.matrix(), dtype=np.float64)  # [3, 4]


def load(root: Path, *, downscale: int = 1, splits=("train", "test")) -> SceneData:
    """Load a COLMAP dataset (see the module docstring)."""
    pycolmap = _import_pycolmap()
    sparse = find_sparse_dir(root)
    if sparse is None:
        raise DatasetError(f"{root}: no sparse/0 with cameras.bin or cameras.txt found")
    image_dir = root / "images"
    if not image_dir.is_dir():
        raise DatasetError(f"{image_dir}: image folder not found (COLMAP dataset at {root})")
    try:
        rec = pycolmap.Reconstruction(str(sparse))
    except Exception as e:  # pycolmap raises RuntimeError/ValueError for bad files
        raise DatasetError(f"{sparse}: cannot read the COLMAP reconstruction ({e})") from e

    images = [im for im in rec.images.values() if getattr(im, "has_pose", True)]
    if not images:
        raise DatasetError(f"{sparse}: the reconstruction has no registered images")
    images.sort(key=lambda im: im.name)

    Ks, poses = [], []
    for im in images:
        camera = rec.cameras[im.camera_id]
        Ks.append(_camera_K(camera, sparse))
        m = _cam_from_world(im)
        if not np.isfinite(m).all():
            raise DatasetError(f"{sparse} image {im.name}: non-finite pose")
        poses.append(np.concatenate([m, [[0.0, 0.0, 0.0, 1.0]]], axis=0))
    viewmats_orig = torch.from_numpy(np.stack(poses)).float()  # [N, 4, 4]
    N = fit_normalization(viewmats_orig)
    viewmats = cameras.transform_viewmats(viewmats_orig, N)

    test_idx = [i for i in range(len(images)) if i % 8 == 0]
    train_idx = [i for i in range(len(images)) if i % 8 != 0]
    views: dict[str, Views] = {}
    for split, idx in (("train", train_idx), ("test", test_idx)):
        if split not in splits:
            continue
        builder = SplitBuilder(split, len(idx), downscale, sparse)
        for i in idx:
            im = images[i]
            camera = rec.cameras[im.camera_id]
            builder.add_view(
                Path(im.name).stem,
                image_dir / im.name,
                viewmats[i],
                Ks[i],
                declared_wh=(int(camera.width), int(camera.height)),
            )
        views[split] = builder.build()

    points = colors = None
    if rec.points3D:
        pts = [p for _, p in sorted(rec.points3D.items())]  # by id: dict order is arbitrary
        xyz = torch.from_numpy(np.stack([np.asarray(p.xyz, dtype=np.float64) for p in pts])).float()
        points = transform_points(xyz, N)
        colors = torch.from_numpy(np.stack([np.asarray(p.color, dtype=np.float32) for p in pts]) / 255.0)
    # a real capture: black background by default
    return make_scene_data(root, "colmap", views, points, colors, N, white_background=False,
                           viewmats=viewmats)
