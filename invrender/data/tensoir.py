"""TensoIR synthetic layout: one folder per view plus relighting ground truth.

::

    root/
      transforms_{train,test}.json   optional; file_path like "./test_000/rgba"
      train_000/ rgba.png metadata.json
      test_000/  rgba.png metadata.json albedo.png normal.png [roughness.png metallic.png]
                 rgba_<env>.png ...
      envmaps/   <env>.hdr | <env>.exr

``metadata.json`` holds ``imw``, ``imh``, ``cam_angle_x`` (horizontal FOV) and
``cam_transform_mat`` (OpenGL camera-to-world as a comma-separated string, a flat list of 16
or a 4x4 list). It is read only when the split has no transforms JSON. Ground truth (any split):
``albedo.png`` is sRGB and decoded to linear; ``normal.png`` is raw (n = 2 rgb - 1, normalized,
world space); ``roughness.png`` / ``metallic.png`` are raw greyscale; ``rgba_<env>.png`` are
sRGB colour + alpha relit under ``<env>``, decoded to linear.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from invrender import cameras
from invrender.data import blender
from invrender.data.scene import (
    DatasetError,
    SceneData,
    SplitBuilder,
    number,
    pose_matrix,
    read_image_file,
    read_json,
)

_VIEW_PATH = re.compile(r"(^|[/\\])(train|test|val)_\d+[/\\]rgba(\.png)?$")
_GT_FILES = {"albedo": "color", "normal": "normal", "roughness": "scalar", "metallic": "scalar"}


def metadata_folders(root: Path, split: str) -> list[Path]:
    """``{split}_<n>/`` folders holding a metadata.json, sorted by n."""
    if not root.is_dir():
        return []
    pat = re.compile(rf"^{split}_(\d+)$")
    found = []
    for d in root.iterdir():
        m = pat.match(d.name)
        if m and (d / "metadata.json").is_file():
            found.append((int(m.group(1)), d))
    return [d for _, d in sorted(found)]


def looks_like_tensoir(root: Path) -> bool:
    """True when a transforms JSON points at ``<split>_<n>/rgba`` or metadata folders exist."""
    if metadata_folders(root, "train") or metadata_folders(root, "test"):
        return True
    for split in ("train", "test", "val"):
        path = root / f"transforms_{split}.json"
        if path.is_file():
            frames = read_json(path).get("frames")
            if isinstance(frames, list):
                return any(isinstance(f, dict) and _VIEW_PATH.search(str(f.get("file_path", ""))) for f in frames)
    return False


def read_metadata_split(root: Path, split: str) -> list[blender.FrameSpec]:
    """Views of ``split`` from ``{split}_<n>/metadata.json`` folders."""
    folders = metadata_folders(root, split)
    if not folders:
        raise DatasetError(
            f"{root / f'transforms_{split}.json'}: file not found, and no {split}_<n>/metadata.json folders in {root}"
        )
    specs = []
    for d in folders:
        path = d / "metadata.json"
        meta = read_json(path)
        for key in ("cam_angle_x", "cam_transform_mat"):
            if key not in meta:
                raise DatasetError(f"{path}: missing '{key}'")
        fov = number(meta["cam_angle_x"], str(path), "cam_angle_x")
        if not 0.0 < fov < 3.14159:
            raise DatasetError(f"{path}: cam_angle_x must be in (0, pi) radians, got {fov}")
        wh = None
        if "imw" in meta and "imh" in meta:
            wh = (int(number(meta["imw"], str(path), "imw")), int(number(meta["imh"], str(path), "imh")))
        c2w = pose_matrix(meta["cam_transform_mat"], str(path), "cam_transform_mat")
        image = d / "rgba.png"
        if not image.is_file():
            raise DatasetError(f"{image}: image file not found (view folder of {path})")
        specs.append(
            blender.FrameSpec(
                name=d.name,
                image_path=image,
                viewmat=cameras.opengl_c2w_to_viewmat(c2w),
                fov_x=fov,
                declared_wh=wh,
            )
        )
    return specs


def _add_gt(builder: SplitBuilder, i: int, spec: blender.FrameSpec) -> None:
    folder = spec.image_path.parent
    if folder.name != spec.name:  # not a folder-per-view layout: nothing to look for
        return
    for key, kind in _GT_FILES.items():
        path = folder / f"{key}.png"
        if path.is_file():
            builder.add_gt(i, key, read_image_file(path), path, kind=kind)
    for path in sorted(folder.glob("rgba_*.png")):
        arr = read_image_file(path)
        if arr.shape[2] != 4 and arr.shape[:2] == builder.size:
            # relit images without alpha: use the view's own alpha
            arr = np.concatenate([arr[:, :, :3] if arr.shape[2] == 3 else np.repeat(arr, 3, 2), builder._alpha_full], 2)
        builder.add_gt(i, path.stem, arr, path, kind="rgba")


def load(root: Path, *, downscale: int = 1, splits=("train", "test"), load_gt: bool = True) -> SceneData:
    """Load a TensoIR-layout dataset (see the module docstring)."""
    views = {}
    for split in splits:
        tjson = root / f"transforms_{split}.json"
        if tjson.is_file():
            specs, source = blender.read_transforms(root, split), tjson
        else:
            specs, source = read_metadata_split(root, split), root
        views[split] = blender.build_views(specs, split, downscale, source, _add_gt if load_gt else None)
    return blender.assemble(root, "tensoir", views)
