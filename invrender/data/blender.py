"""NeRF-synthetic ("Blender") datasets: ``transforms_{train,val,test}.json`` + RGBA PNGs.

Each JSON has ``camera_angle_x`` (horizontal field of view, radians) and ``frames``, each with a
``file_path`` relative to the root and usually without extension, and an OpenGL camera-to-world
``transform_matrix``. Pixels are square and the principal point is the image centre. The world is
used as is (Z up, object inside about [-1.5, 1.5]^3), so ``normalization`` is the identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from invrender import cameras
from invrender.data.scene import (
    DatasetError,
    SceneData,
    SplitBuilder,
    Views,
    make_scene_data,
    number,
    pose_matrix,
    read_json,
    resolve_image,
)


@dataclass
class FrameSpec:
    """One view as a transforms JSON or a TensoIR metadata.json describes it."""

    name: str
    image_path: Path
    viewmat: torch.Tensor  # [4, 4] world-to-camera, OpenCV axes
    fov_x: float  # horizontal field of view, radians
    declared_wh: tuple[int, int] | None = None


def view_name(file_path: str) -> str:
    """``./test/r_0`` -> ``r_0``; TensoIR's ``./test_000/rgba`` -> ``test_000`` (folder per view)."""
    p = Path(file_path)
    stem = p.name if p.suffix.lower() not in (".png", ".jpg", ".jpeg") else p.stem
    if stem == "rgba" and p.parent.name not in ("", "."):
        return p.parent.name
    return stem


def read_transforms(root: Path, split: str) -> list[FrameSpec]:
    """Frames of ``transforms_{split}.json`` in file order."""
    path = root / f"transforms_{split}.json"
    meta = read_json(path)
    frames = meta.get("frames")
    if not isinstance(frames, list):
        raise DatasetError(f"{path}: missing or invalid 'frames' list")
    if not frames:
        raise DatasetError(f"{path}: the '{split}' split has no frames")
    if "camera_angle_x" not in meta and not all(isinstance(f, dict) and "camera_angle_x" in f for f in frames):
        raise DatasetError(f"{path}: missing 'camera_angle_x'")
    out = []
    for k, frame in enumerate(frames):
        where = f"{path} frame {k}"
        if not isinstance(frame, dict) or "file_path" not in frame or "transform_matrix" not in frame:
            raise DatasetError(f"{where}: needs 'file_path' and 'transform_matrix'")
        fov = number(frame.get("camera_angle_x", meta.get("camera_angle_x")), where, "camera_angle_x")
        if not 0.0 < fov < 3.14159:
            raise DatasetError(f"{where}: camera_angle_x must be in (0, pi) radians, got {fov}")
        c2w = pose_matrix(frame["transform_matrix"], where)
        file_path = str(frame["file_path"])
        out.append(
            FrameSpec(
                name=view_name(file_path),
                image_path=resolve_image(root, file_path, where),
                viewmat=cameras.opengl_c2w_to_viewmat(c2w),
                fov_x=fov,
            )
        )
    return out


def centred_K(fov_x: float):
    """Intrinsics from a horizontal FOV, square pixels, centred principal point."""

    def K(width: int, height: int) -> torch.Tensor:
        f = cameras.focal_from_fov(fov_x, width)
        return cameras.make_K(f, f, width / 2.0, height / 2.0)

    return K


def build_views(
    specs: list[FrameSpec], split: str, downscale: int, source: Path, gt_hook=None
) -> Views:
    """Read the images of ``specs`` into :class:`Views`; ``gt_hook(builder, index, spec)`` adds GT."""
    builder = SplitBuilder(split, len(specs), downscale, source)
    for spec in specs:
        i = builder.add_view(
            spec.name, spec.image_path, spec.viewmat, centred_K(spec.fov_x), declared_wh=spec.declared_wh
        )
        if gt_hook is not None:
            gt_hook(builder, i, spec)
    return builder.build()


def assemble(root: Path, fmt: str, views: dict[str, Views]) -> SceneData:
    """SceneData for synthetic formats (identity normalization, white background)."""
    return make_scene_data(root, fmt, views, None, None, torch.eye(4), white_background=True)


def load(root: Path, *, downscale: int = 1, splits=("train", "test")) -> SceneData:
    """Load a NeRF-synthetic dataset (see the module docstring)."""
    views = {}
    for split in splits:
        views[split] = build_views(read_transforms(root, split), split, downscale, root / f"transforms_{split}.json")
    return assemble(root, "blender", views)
