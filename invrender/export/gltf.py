"""A textured mesh as one binary glTF 2.0 file (.glb), written by hand: a JSON chunk and a BIN chunk.

What the file holds (one scene, one node, one mesh, one primitive, one material):

- ``POSITION`` (with the ``min``/``max`` the spec requires), ``NORMAL`` (unit), ``TEXCOORD_0`` as
  float32 VEC3/VEC3/VEC2 accessors, each in its own tightly packed buffer view (so no
  ``byteStride``, which the spec needs only when views are shared or interleaved), and uint32
  triangle indices. Every buffer view starts on a 4-byte boundary, which satisfies the
  accessor alignment rule (offset a multiple of the component size) for all of them.
- A metallic-roughness material with ``metallicFactor = roughnessFactor = 1`` and two PNG
  textures: ``baseColorTexture`` in sRGB (the linear albedo encoded with the sRGB OETF) and
  ``metallicRoughnessTexture`` in linear 8-bit with G = roughness, B = metallic and R = the
  mesh's baked ambient occlusion plus its bounce fill (the light-independent part of its per-vertex
  visibility, :func:`invrender.shading.shadowing.ambient_visibility`, painted through the UV layout), which
  the material's ``occlusionTexture`` points at (the usual packed ORM image); R = 255 and no
  ``occlusionTexture`` for a mesh without visibility.
- Vertex data are in the capture's frame (the reader's normalization undone). glTF's world is
  +Y up; with ``up="z"`` (NeRF-synthetic, TensoIR, Blender captures) the node carries a
  -90 degree rotation about X, which takes the capture's +Z to glTF's +Y, so that viewers show
  the object upright and Blender's importer (which converts +Y up back to +Z up) places it exactly
  at the capture's coordinates. ``up="y"`` leaves the node without rotation.

The mesh's progress and radiance textures have no place in core glTF and are not written; the
material's ``extras`` says so, for anyone who wonders where they went.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import torch

from invrender.color import linear_to_srgb
from invrender.checkpoint import atomic_write_bytes
from invrender.image_io import encode_png
from invrender.shading.shadowing import ambient_visibility

GLB_MAGIC = 0x46546C67  # "glTF"
CHUNK_JSON = 0x4E4F534A  # "JSON"
CHUNK_BIN = 0x004E4942  # "BIN\0"
FLOAT, UNSIGNED_INT = 5126, 5125
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
LINEAR, LINEAR_MIPMAP_LINEAR, CLAMP_TO_EDGE = 9729, 9987, 33071
# glTF's node rotation (x, y, z, w) taking +Z up to +Y up: -90 degrees about X, (x, y, z) -> (x, z, -y)
Z_UP_TO_Y_UP = [-math.sqrt(0.5), 0.0, 0.0, math.sqrt(0.5)]


def _pad4(b: bytes, fill: bytes = b"\0") -> bytes:
    return b + fill * (-len(b) % 4)


def material_images(mesh, occlusion: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The two texture images as uint8: base colour ``[T, T, 3]`` sRGB and occlusion-metallic-
    roughness ``[T, T, 3]`` linear (R = ambient occlusion, or 255 when the mesh has none or
    ``occlusion`` is False, which skips baking it; G = roughness, B = metallic)."""
    albedo = linear_to_srgb(mesh.albedo.detach().double().cpu().numpy())  # [T, T, 3]
    base = np.rint(np.clip(albedo, 0, 1) * 255).astype(np.uint8)
    rough = mesh.roughness.detach().double().cpu().numpy()[..., 0]  # [T, T]
    metal = mesh.metallic.detach().double().cpu().numpy()[..., 0]
    occ = np.ones_like(rough)
    if occlusion and getattr(mesh, "visibility", None) is not None:
        from invrender.mesh.render import bake_vertex_values  # noqa: PLC0415

        # [V, 1] per-vertex AO (+ fill) of the mesh stage; a shadowing record gives its ambient part
        vis = ambient_visibility(mesh.visibility.detach().cpu().double())
        occ = bake_vertex_values(mesh.uvs.detach().cpu(), mesh.faces.detach().cpu(), vis, rough.shape[0])
        occ = occ.numpy()[..., 0]
    mr = np.stack([occ, rough, metal], axis=-1)
    return base, np.rint(np.clip(mr, 0, 1) * 255).astype(np.uint8)


def mesh_arrays(mesh) -> dict[str, np.ndarray]:
    """Capture-frame vertex arrays and indices of a :class:`~invrender.mesh.textured.TexturedMesh`:
    ``positions`` [V, 3], ``normals`` [V, 3] unit, ``uvs`` [V, 2] (glTF orientation) float32,
    ``faces`` [F, 3] uint32, counter-clockwise seen from outside (reversed if the normalization
    mirrors, which the readers never do)."""
    positions = mesh.vertices_capture_frame().detach().cpu().double()
    normals = torch.nn.functional.normalize(mesh.normals_capture_frame().detach().cpu().double(), dim=-1)
    # glTF requires unit normals: a zero or non-finite one (a degenerate fin) becomes +z
    bad = ~torch.isfinite(normals).all(dim=-1, keepdim=True) | (normals.norm(dim=-1, keepdim=True) < 0.5)
    normals = torch.where(bad, torch.tensor([0.0, 0.0, 1.0], dtype=normals.dtype), normals)
    faces = mesh.faces.detach().cpu().numpy().astype(np.int64)
    if float(torch.linalg.det(mesh.normalization.double()[:3, :3])) < 0:
        faces = faces[:, ::-1]
    return {
        "positions": positions.numpy().astype(np.float32),
        "normals": normals.numpy().astype(np.float32),
        "uvs": mesh.uvs.detach().cpu().numpy().astype(np.float32),
        "faces": np.ascontiguousarray(faces).astype(np.uint32),
    }


def glb_bytes(mesh, name: str = "invrender", up: str = "z") -> bytes:
    """The binary glTF of a textured mesh (see the module docstring); ``up``: the capture's up axis."""
    if up not in ("z", "y"):
        raise ValueError(f"up must be 'z' or 'y', got {up!r}")
    arr = mesh_arrays(mesh)
    base_img, mr_img = material_images(mesh)
    blobs: list[bytes] = []
    views: list[dict] = []

    def add_view(data: bytes, target: int | None) -> int:
        offset = sum(len(b) for b in blobs)
        view = {"buffer": 0, "byteOffset": offset, "byteLength": len(data)}
        if target is not None:
            view["target"] = target
        views.append(view)
        blobs.append(_pad4(data))  # the next view starts 4-aligned
        return len(views) - 1

    pos = arr["positions"]
    accessors = [
        {"bufferView": add_view(pos.tobytes(), ARRAY_BUFFER), "componentType": FLOAT, "count": len(pos),
         "type": "VEC3", "min": pos.min(axis=0).tolist(), "max": pos.max(axis=0).tolist()},
        {"bufferView": add_view(arr["normals"].tobytes(), ARRAY_BUFFER), "componentType": FLOAT,
         "count": len(pos), "type": "VEC3"},
        {"bufferView": add_view(arr["uvs"].tobytes(), ARRAY_BUFFER), "componentType": FLOAT,
         "count": len(pos), "type": "VEC2"},
        {"bufferView": add_view(arr["faces"].tobytes(), ELEMENT_ARRAY_BUFFER), "componentType": UNSIGNED_INT,
         "count": int(arr["faces"].size), "type": "SCALAR"},
    ]
    images = [
        {"bufferView": add_view(encode_png(base_img), None), "mimeType": "image/png", "name": "baseColor"},
        {"bufferView": add_view(encode_png(mr_img), None), "mimeType": "image/png", "name": "metallicRoughness"},
    ]
    node: dict = {"mesh": 0, "name": name}
    if up == "z":
        node["rotation"] = Z_UP_TO_Y_UP
    doc = {
        "asset": {"version": "2.0", "generator": "invrender"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [node],
        "meshes": [{"name": name, "primitives": [{
            "attributes": {"POSITION": 0, "NORMAL": 1, "TEXCOORD_0": 2},
            "indices": 3, "material": 0, "mode": 4,
        }]}],
        "materials": [{
            "name": name,
            "pbrMetallicRoughness": {
                "baseColorTexture": {"index": 0},
                "metallicRoughnessTexture": {"index": 1},
                "metallicFactor": 1.0,
                "roughnessFactor": 1.0,
            },
            **({"occlusionTexture": {"index": 1}} if getattr(mesh, "visibility", None) is not None else {}),
            "extras": {"invrender": "progress and radiance textures are not part of glTF and were not exported"},
        }],
        "textures": [{"sampler": 0, "source": 0}, {"sampler": 0, "source": 1}],
        "images": images,
        "samplers": [{"magFilter": LINEAR, "minFilter": LINEAR_MIPMAP_LINEAR,
                      "wrapS": CLAMP_TO_EDGE, "wrapT": CLAMP_TO_EDGE}],
        "accessors": accessors,
        "bufferViews": views,
        "buffers": [{"byteLength": sum(len(b) for b in blobs)}],
    }
    bin_chunk = b"".join(blobs)  # already 4-aligned
    json_chunk = _pad4(json.dumps(doc, separators=(",", ":")).encode("utf-8"), b" ")  # the spec pads JSON with spaces
    total = 12 + 8 + len(json_chunk) + 8 + len(bin_chunk)
    return b"".join([
        struct.pack("<III", GLB_MAGIC, 2, total),
        struct.pack("<II", len(json_chunk), CHUNK_JSON), json_chunk,
        struct.pack("<II", len(bin_chunk), CHUNK_BIN), bin_chunk,
    ])


def write_glb(path: Path, mesh, up: str = "z") -> Path:
    """Write ``mesh`` (:class:`~invrender.mesh.textured.TexturedMesh`) as a .glb, atomically."""
    path = Path(path)
    return atomic_write_bytes(path, glb_bytes(mesh, name=path.stem or "invrender", up=up), shared=True)


_COMPONENTS = {5126: np.float32, 5125: np.uint32, 5123: np.uint16, 5121: np.uint8}
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}


def read_glb(path: Path, normalization: torch.Tensor | None = None):
    """Read a single-primitive, textured metallic-roughness .glb (as :func:`write_glb` writes and
    most tools export) back into a :class:`~invrender.mesh.textured.TexturedMesh`: positions as
    stored in the buffer (the node's up-axis rotation is a viewing convention and is not applied),
    mapped into the training frame by ``normalization`` (capture -> normalized; identity if None);
    base colour decoded from sRGB to linear; roughness and metallic from G and B times their
    factors; the occlusion texture, when there is one, read at the vertices as their visibility;
    progress 1 and radiance 0 (the file holds only the physically based material), so it renders
    as the ``pbr`` blend. Clear ``ValueError`` naming the file on anything else."""
    import io  # noqa: PLC0415

    from PIL import Image  # noqa: PLC0415

    from invrender.color import srgb_to_linear  # noqa: PLC0415
    from invrender.mesh.textured import TexturedMesh  # noqa: PLC0415

    path = Path(path)
    data = path.read_bytes()
    if len(data) < 20 or struct.unpack_from("<I", data, 0)[0] != GLB_MAGIC:
        raise ValueError(f"{path}: not a binary glTF (.glb) file")
    jlen, jtype = struct.unpack_from("<II", data, 12)
    if jtype != CHUNK_JSON:
        raise ValueError(f"{path}: the first GLB chunk is not JSON")
    doc = json.loads(data[20:20 + jlen])
    off = 20 + jlen
    blen, btype = struct.unpack_from("<II", data, off)
    if btype != CHUNK_BIN:
        raise ValueError(f"{path}: no binary chunk")
    binary = data[off + 8:off + 8 + blen]

    def view_bytes(i: int) -> bytes:
        v = doc["bufferViews"][i]
        start = v.get("byteOffset", 0)
        return binary[start:start + v["byteLength"]]

    def accessor(i: int) -> np.ndarray:
        a = doc["accessors"][i]
        if "bufferView" not in a or doc["bufferViews"][a["bufferView"]].get("byteStride"):
            raise ValueError(f"{path}: accessor {i} is sparse or strided, which this reader does not handle")
        dtype = np.dtype(_COMPONENTS[a["componentType"]])
        width = _WIDTH[a["type"]]
        raw = view_bytes(a["bufferView"])[a.get("byteOffset", 0):]
        return np.frombuffer(raw, dtype=dtype, count=a["count"] * width).reshape(a["count"], width)

    try:
        prim = doc["meshes"][0]["primitives"][0]
        attrs = prim["attributes"]
        pos = accessor(attrs["POSITION"]).astype(np.float32)
        nrm = accessor(attrs["NORMAL"]).astype(np.float32)
        uv = accessor(attrs["TEXCOORD_0"]).astype(np.float32)
        faces = accessor(prim["indices"]).reshape(-1, 3).astype(np.int64)
        pbr = doc["materials"][prim["material"]]["pbrMetallicRoughness"]

        def image(tex_ref: dict) -> np.ndarray:
            img = doc["images"][doc["textures"][tex_ref["index"]]["source"]]
            return np.asarray(Image.open(io.BytesIO(view_bytes(img["bufferView"]))).convert("RGB"), dtype=np.float32) / 255.0

        base = image(pbr["baseColorTexture"]) * np.asarray(pbr.get("baseColorFactor", [1, 1, 1, 1])[:3], np.float32)
        mr = image(pbr["metallicRoughnessTexture"])
    except (KeyError, IndexError) as e:
        raise ValueError(f"{path}: not a textured metallic-roughness glTF ({e!r} missing)") from e
    if base.shape != mr.shape or base.shape[0] != base.shape[1]:
        raise ValueError(f"{path}: base colour {base.shape[:2]} and metallic-roughness {mr.shape[:2]} textures "
                         "must be square and the same size")
    vis = None
    mat = doc["materials"][prim["material"]]
    if "occlusionTexture" in mat:  # ambient occlusion read at the vertices (the renderer's per-vertex AO)
        from invrender.mesh.raster import texture_lookup  # noqa: PLC0415

        occ_img = doc["images"][doc["textures"][mat["occlusionTexture"]["index"]]["source"]]
        occ = np.asarray(Image.open(io.BytesIO(view_bytes(occ_img["bufferView"]))).convert("RGB"), np.float32) / 255.0
        vis = texture_lookup(torch.from_numpy(occ[..., :1].copy()), torch.from_numpy(uv), mip=False).clamp(0, 1)
    norm = torch.eye(4) if normalization is None else normalization.float().cpu()
    p = torch.from_numpy(pos)
    n = torch.from_numpy(nrm)
    inv_t = torch.linalg.inv(norm.double()[:3, :3]).T.float()  # normals go by the inverse transpose
    t = base.shape[0]
    return TexturedMesh(
        vertices=(p @ norm[:3, :3].T + norm[:3, 3]).contiguous(),
        faces=torch.from_numpy(faces),
        uvs=torch.from_numpy(uv),
        normals=torch.nn.functional.normalize(n @ inv_t.T, dim=-1),
        albedo=srgb_to_linear(torch.from_numpy(base)).clamp(0, 1),
        roughness=torch.from_numpy(mr[..., 1:2] * float(pbr.get("roughnessFactor", 1.0))).clamp(0, 1),
        metallic=torch.from_numpy(mr[..., 2:3] * float(pbr.get("metallicFactor", 1.0))).clamp(0, 1),
        progress=torch.ones(t, t, 1),
        radiance=torch.zeros(t, t, 3),
        normalization=norm,
        visibility=vis,
    )
