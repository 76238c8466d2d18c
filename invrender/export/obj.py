"""A textured mesh as Wavefront OBJ + MTL with the PBR extension keys, textures as PNGs beside it.

For ``--out DIR/NAME.obj`` the files are::

    NAME.obj               v / vt / vn / f (1-based), mtllib NAME.mtl, usemtl NAME
    NAME.mtl               Kd 1 1 1 + map_Kd, Pr 1 + map_Pr, Pm 1 + map_Pm
    NAME_albedo.png        base colour, sRGB 8-bit (the linear albedo through the sRGB OETF)
    NAME_roughness.png     perceptual roughness, linear 8-bit grey
    NAME_metallic.png      metallic, linear 8-bit grey

The scalar keys are the factors the maps are multiplied by (1, as glTF's factors), so an
importer that reads only scalars sees a white, rough metal rather than a wrong colour. No
normal map (``norm``) is written: the mesh carries per-vertex normals and no normal texture.
OBJ's ``vt`` has ``v`` upwards, the mesh's UVs have it downwards (glTF): ``vt = (u, 1 - v)``;
the images are written top row first, as any importer expects. Positions and normals are in the
capture's frame, with the capture's axes as they are (no Y-up conversion: tell the importer the
up axis, ``Z`` for NeRF-synthetic / TensoIR captures). Each file is written atomically, the
textures first and the .obj last, so an .obj on disk always has its companions.
The mesh's progress and radiance textures are not exported (the MTL has no key for them).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from invrender.checkpoint import atomic_write_bytes
from invrender.image_io import write_png
from invrender.export.gltf import material_images, mesh_arrays


def texture_names(obj_path: Path) -> dict[str, str]:
    """File names (beside the .obj) of the three textures."""
    stem = Path(obj_path).stem
    return {k: f"{stem}_{k}.png" for k in ("albedo", "roughness", "metallic")}


def mtl_text(name: str, textures: dict[str, str]) -> str:
    return "\n".join([
        "# invrender PBR material (map_Kd sRGB; map_Pr, map_Pm linear)",
        f"newmtl {name}",
        "Ka 0 0 0",
        "Kd 1 1 1",
        "Ks 0 0 0",
        "d 1",
        "illum 2",
        f"map_Kd {textures['albedo']}",
        "Pr 1",
        f"map_Pr {textures['roughness']}",
        "Pm 1",
        f"map_Pm {textures['metallic']}",
        "",
    ])


def obj_text(arr: dict[str, np.ndarray], name: str, mtl_name: str) -> str:
    buf = io.StringIO()
    buf.write(f"# invrender textured mesh: {len(arr['positions'])} vertices, {len(arr['faces'])} triangles\n")
    buf.write(f"mtllib {mtl_name}\no {name}\n")
    # %.9g round-trips float32 exactly
    np.savetxt(buf, arr["positions"].astype(np.float64), fmt="v %.9g %.9g %.9g")
    uv = arr["uvs"].astype(np.float64)
    np.savetxt(buf, np.stack([uv[:, 0], 1.0 - uv[:, 1]], axis=1), fmt="vt %.9g %.9g")
    np.savetxt(buf, arr["normals"].astype(np.float64), fmt="vn %.9g %.9g %.9g")
    buf.write(f"usemtl {name}\n")
    f = arr["faces"].astype(np.int64) + 1  # OBJ indices are 1-based
    # one shared index for position, uv and normal
    np.savetxt(buf, np.repeat(f, 3, axis=1), fmt="f %d/%d/%d %d/%d/%d %d/%d/%d")
    return buf.getvalue()


def write_obj(path: Path, mesh) -> list[Path]:
    """Write ``mesh`` (:class:`~invrender.mesh.textured.TexturedMesh`) as OBJ + MTL + 3 PNGs
    (see the module docstring). Returns the paths written, the .obj last."""
    path = Path(path)
    folder, name = path.parent, path.stem
    textures = texture_names(path)
    base, mr = material_images(mesh, occlusion=False)  # [T, T, 3] uint8 each; mr = (255, roughness, metallic)
    written = [
        write_png(folder / textures["albedo"], base),
        write_png(folder / textures["roughness"], mr[..., 1]),
        write_png(folder / textures["metallic"], mr[..., 2]),
    ]
    mtl = folder / f"{name}.mtl"
    written.append(atomic_write_bytes(mtl, mtl_text(name, textures).encode(), shared=True))
    written.append(atomic_write_bytes(path, obj_text(mesh_arrays(mesh), name, mtl.name).encode(), shared=True))
    return written
