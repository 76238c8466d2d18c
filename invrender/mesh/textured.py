"""The mesh backend's asset: a UV-mapped triangle mesh with PBR, progress and radiance textures.

This is the contract between the mesh stage (which trains it), the mesh renderer, evaluation,
the viewer and the exporters. Conventions:

- ``vertices`` live in the *normalized* training frame; ``normalization`` maps capture
  coordinates to it, so exporters return to the capture's frame with its inverse.
- UVs follow glTF: ``u`` to the right, ``v`` downwards, ``(0, 0)`` the top-left corner of the
  texture image, i.e. texel row ``i`` covers ``v`` in ``[i/T, (i+1)/T]``. (OBJ's ``vt`` has ``v``
  upwards: its writer flips.)
- Textures are ``[T, T, C]`` float32 in ``[0, 1]``: ``albedo`` linear RGB, ``roughness`` and
  ``metallic`` perceptual scalars, ``progress`` the PRD blend weight, ``radiance`` the view-
  independent radiance colour in display (sRGB) space, as the Gaussians' SH DC term is.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import Tensor

from invrender.checkpoint import atomic_torch_save
from invrender.shading.shadowing import is_transfer_record

TEXTURE_NAMES = ("albedo", "roughness", "metallic", "progress", "radiance")
OPTIONAL_FIELDS = ("visibility", "radiance_sh")
TEXTURE_CHANNELS = {"albedo": 3, "roughness": 1, "metallic": 1, "progress": 1, "radiance": 3}


@dataclass
class TexturedMesh:
    vertices: Tensor  # [V, 3] float32, normalized frame
    faces: Tensor  # [F, 3] int64, counter-clockwise seen from outside
    uvs: Tensor  # [V, 2] float32 in [0, 1] (glTF orientation, see the module docstring)
    normals: Tensor  # [V, 3] float32, unit, outward
    albedo: Tensor  # [T, T, 3] linear base colour
    roughness: Tensor  # [T, T, 1]
    metallic: Tensor  # [T, T, 1]
    progress: Tensor  # [T, T, 1]
    radiance: Tensor  # [T, T, 3] display-space radiance colour
    normalization: Tensor  # [4, 4] capture coordinates -> normalized frame
    visibility: Tensor | None = None  # [V, 1] ambient or [V, 2K+1] transfer visibility of the diffuse term (optional)
    radiance_sh: Tensor | None = None  # [V, K - 1, 3] view-dependent radiance SH, degrees >= 1 (optional)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, where: str = "mesh") -> None:
        """Raise ``ValueError`` naming the field and the shape it got when anything is off."""
        v, f = self.vertices, self.faces
        if v.ndim != 2 or v.shape[1] != 3:
            raise ValueError(f"{where}: vertices must be [V, 3], got {tuple(v.shape)}")
        if f.ndim != 2 or f.shape[1] != 3 or f.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{where}: faces must be integer [F, 3], got {tuple(f.shape)} {f.dtype}")
        if f.numel() and (int(f.min()) < 0 or int(f.max()) >= v.shape[0]):
            raise ValueError(f"{where}: faces index vertices outside [0, {v.shape[0]})")
        for name, want in (("uvs", 2), ("normals", 3)):
            t = getattr(self, name)
            if t.shape != (v.shape[0], want):
                raise ValueError(f"{where}: {name} must be [{v.shape[0]}, {want}], got {tuple(t.shape)}")
        size = self.albedo.shape[0]
        for name in TEXTURE_NAMES:
            t = getattr(self, name)
            c = TEXTURE_CHANNELS[name]
            if t.ndim != 3 or t.shape[2] != c or t.shape[0] != t.shape[1] or t.shape[0] != size:
                raise ValueError(f"{where}: texture {name} must be [{size}, {size}, {c}], got {tuple(t.shape)}")
        vis = self.visibility
        if vis is not None and (vis.ndim != 2 or vis.shape[0] != v.shape[0]
                                or not (vis.shape[1] == 1 or is_transfer_record(vis))):
            raise ValueError(f"{where}: visibility must be [{v.shape[0]}, 1] (ambient) or [{v.shape[0]}, 2K+1] "
                             f"(shadowing transfer record, K = 4, 9 or 16), got {tuple(vis.shape)}")
        sh = self.radiance_sh
        if sh is not None and (sh.ndim != 3 or sh.shape[0] != v.shape[0] or sh.shape[2] != 3):
            raise ValueError(f"{where}: radiance_sh must be [{v.shape[0]}, K, 3], got {tuple(sh.shape)}")
        if self.normalization.shape != (4, 4):
            raise ValueError(f"{where}: normalization must be [4, 4], got {tuple(self.normalization.shape)}")

    @property
    def texture_size(self) -> int:
        return int(self.albedo.shape[0])

    def to(self, device) -> "TexturedMesh":
        return TexturedMesh(**{f.name: _opt(getattr(self, f.name), lambda t: t.to(device)) for f in fields(self)})

    def detach(self) -> "TexturedMesh":
        return TexturedMesh(**{f.name: _opt(getattr(self, f.name), Tensor.detach) for f in fields(self)})

    def vertices_capture_frame(self) -> Tensor:
        """Vertices in the capture's original coordinates ([V, 3]), undoing the reader's normalization."""
        inv = torch.linalg.inv(self.normalization.double())
        v = self.vertices.double()
        return (v @ inv[:3, :3].T + inv[:3, 3]).to(self.vertices.dtype)

    def normals_capture_frame(self) -> Tensor:
        """Normals in the capture frame: transformed by the inverse-transpose of the inverse map."""
        lin = self.normalization.double()[:3, :3]  # capture -> normalized; normals go by its transpose
        n = self.normals.double() @ lin
        return torch.nn.functional.normalize(n, dim=-1).to(self.normals.dtype)

    def state_dict(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name).detach().cpu() for f in fields(self) if getattr(self, f.name) is not None}

    def save(self, path: Path) -> Path:
        """Atomic write (temp file + rename) of all fields to a torch file."""
        atomic_torch_save({"textured_mesh": self.state_dict(), "format": 1}, Path(path))
        return Path(path)

    @classmethod
    def load(cls, path: Path, device="cpu") -> "TexturedMesh":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"mesh file {path} does not exist")
        try:
            sd = torch.load(path, map_location=device, weights_only=True)
        except Exception as e:  # noqa: BLE001 - a truncated or foreign file: say which
            raise ValueError(f"{path}: not a readable invrender mesh file ({e})") from e
        if not isinstance(sd, dict) or "textured_mesh" not in sd:
            raise ValueError(f"{path}: not an invrender mesh file (no 'textured_mesh' entry)")
        data = sd["textured_mesh"]
        missing = [f.name for f in fields(cls) if f.name not in data and f.name not in OPTIONAL_FIELDS]
        if missing:
            raise ValueError(f"{path}: mesh file lacks {', '.join(missing)}")
        mesh = cls.__new__(cls)
        for f in fields(cls):
            setattr(mesh, f.name, data.get(f.name))
        mesh.validate(str(path))
        return mesh


def _opt(t: Tensor | None, fn):
    return None if t is None else fn(t)


def mesh_path(run_dir: Path) -> Path:
    """Where a run keeps its trained mesh: ``RUN/mesh/textured_mesh.pt``."""
    return Path(run_dir) / "mesh" / "textured_mesh.pt"
