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

The rest of the run's mesh, which core glTF has no place for, goes into a vendor extension,
``INVRENDER_materials_prd`` (named in ``extensionsUsed``, not ``extensionsRequired``: viewers skip
it and show the physically based material above). On the material it holds

- ``progressTexture``: the PRD progress map (8-bit grey PNG, linear), the per-texel weight of the
  physically based colour against the radiance colour;
- ``radianceTexture``: the view-independent radiance colour (8-bit RGB PNG, display space, as the
  mesh stage keeps it);
- ``radianceShAttributes``: names of per-vertex ``VEC3`` float attributes (``_RADIANCE_SH_<j>``,
  glTF's application-specific attributes), the view-dependent radiance SH coefficient ``j >= 1``
  per colour, rotated into the capture's frame;
- ``visibilityAttributes`` and ``visibilityChannels``: the per-vertex visibility of the diffuse
  term (a shadowing transfer record, :mod:`invrender.shading.shadowing`, its SH rotated into the
  capture's frame, or an ambient value) packed four channels to a ``VEC4`` float attribute
  (``_VISIBILITY_<j>``), the last one padded with zeros;

each only when the mesh has it. :func:`read_glb` reads them back, so the file re-imported into
invrender renders as the trained run did, prd blend and shadows included.
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
from invrender.export.common import Similarity, rotate_sh
from invrender.image_io import encode_png
from invrender.shading.shadowing import RECORD_SH_SIZES, ambient_visibility, record_degree

GLB_MAGIC = 0x46546C67  # "glTF"
CHUNK_JSON = 0x4E4F534A  # "JSON"
CHUNK_BIN = 0x004E4942  # "BIN\0"
FLOAT, UNSIGNED_INT = 5126, 5125
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
LINEAR, LINEAR_MIPMAP_LINEAR, CLAMP_TO_EDGE = 9729, 9987, 33071
# glTF's node rotation (x, y, z, w) taking +Z up to +Y up: -90 degrees about X, (x, y, z) -> (x, z, -y)
Z_UP_TO_Y_UP = [-math.sqrt(0.5), 0.0, 0.0, math.sqrt(0.5)]
PRD_EXTENSION = "INVRENDER_materials_prd"  # progress, radiance and visibility (module docstring)


def _pad4(b: bytes, fill: bytes = b"\0") -> bytes:
    return b + fill * (-len(b) % 4)


def _unorm8(x: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (clipped) as 8-bit unsigned normalized integers."""
    return np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8)


def _rotate_sh_rest(sh: torch.Tensor, rotation: np.ndarray) -> torch.Tensor:
    """SH coefficients of degrees >= 1 ``[V, K - 1, 3]`` for a frame rotated by ``rotation``
    (:func:`~invrender.export.common.rotate_sh` with an empty DC slot; float64)."""
    full = torch.cat([torch.zeros_like(sh[:, :1]), sh], dim=1).double()  # [V, K, 3]
    return rotate_sh(full, rotation)[:, 1:]


def material_images(mesh, occlusion: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The two texture images as uint8: base colour ``[T, T, 3]`` sRGB and occlusion-metallic-
    roughness ``[T, T, 3]`` linear (R = ambient occlusion, or 255 when the mesh has none or
    ``occlusion`` is False, which skips baking it; G = roughness, B = metallic)."""
    albedo = linear_to_srgb(mesh.albedo.detach().double().cpu().numpy())  # [T, T, 3]
    base = _unorm8(albedo)
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
    return base, _unorm8(mr)


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


def _record_to_frame(visibility: torch.Tensor, rotation: np.ndarray) -> torch.Tensor:
    """A per-vertex visibility ``[V, C]`` seen in a frame rotated by ``rotation``: a transfer
    record's two SH projections are rotated (their dot product with a light rotated alike is
    unchanged), its fill and any ambient visibility are kept."""
    degree = record_degree(visibility)
    if degree is None:
        return visibility.clone()
    k = RECORD_SH_SIZES[degree - 1]
    sh = visibility[:, :2 * k].reshape(-1, 2, k).transpose(1, 2)  # [V, K, 2]: T and U as two "colours"
    rotated = rotate_sh(sh, rotation).transpose(1, 2).reshape(-1, 2 * k)
    return torch.cat([rotated, visibility[:, 2 * k:]], dim=1)


def prd_arrays(mesh) -> dict[str, np.ndarray]:
    """What :data:`PRD_EXTENSION` stores of a mesh: ``progress`` [T, T] and ``radiance`` [T, T, 3]
    as uint8; ``radiance_sh`` [V, K - 1, 3] and ``visibility`` [V, C] float32 in the capture's
    frame, when the mesh has them."""
    out = {
        "progress": _unorm8(mesh.progress.detach().double().cpu().numpy()[..., 0]),
        "radiance": _unorm8(mesh.radiance.detach().double().cpu().numpy()),
    }
    to_capture = Similarity.from_matrix(mesh.normalization.double()).inverse().rotation
    if getattr(mesh, "radiance_sh", None) is not None:
        sh = mesh.radiance_sh.detach().cpu()  # [V, K - 1, 3], degrees >= 1
        out["radiance_sh"] = _rotate_sh_rest(sh, to_capture).numpy().astype(np.float32)
    if getattr(mesh, "visibility", None) is not None:
        vis = _record_to_frame(mesh.visibility.detach().cpu().double(), to_capture)
        out["visibility"] = vis.numpy().astype(np.float32)
    return out


def glb_bytes(mesh, name: str = "invrender", up: str = "z", prd: bool = True) -> bytes:
    """The binary glTF of a textured mesh (see the module docstring); ``up``: the capture's up
    axis; ``prd``: also write :data:`PRD_EXTENSION` (progress, radiance, visibility)."""
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
    attributes = {"POSITION": 0, "NORMAL": 1, "TEXCOORD_0": 2}
    material_ext: dict = {}
    if prd:
        extra = prd_arrays(mesh)

        def add_attribute(semantic: str, values: np.ndarray) -> str:
            values = np.ascontiguousarray(values, dtype=np.float32)
            accessors.append({"bufferView": add_view(values.tobytes(), ARRAY_BUFFER), "componentType": FLOAT,
                              "count": len(values), "type": {3: "VEC3", 4: "VEC4"}[values.shape[1]]})
            attributes[semantic] = len(accessors) - 1
            return semantic

        for key, label in (("progress", "progress"), ("radiance", "radiance")):
            images.append({"bufferView": add_view(encode_png(extra[key]), None), "mimeType": "image/png",
                           "name": label})
            material_ext[f"{key}Texture"] = {"index": len(images) - 1}
        if "radiance_sh" in extra:
            sh = extra["radiance_sh"]
            material_ext["radianceShAttributes"] = [add_attribute(f"_RADIANCE_SH_{j + 1}", sh[:, j])
                                                    for j in range(sh.shape[1])]
        if "visibility" in extra:
            vis = extra["visibility"]
            c = vis.shape[1]
            padded = np.zeros((len(vis), -(-c // 4) * 4), np.float32)
            padded[:, :c] = vis
            material_ext["visibilityAttributes"] = [add_attribute(f"_VISIBILITY_{j}", padded[:, 4 * j:4 * j + 4])
                                                    for j in range(padded.shape[1] // 4)]
            material_ext["visibilityChannels"] = c
    node: dict = {"mesh": 0, "name": name}
    if up == "z":
        node["rotation"] = Z_UP_TO_Y_UP
    doc = {
        "asset": {"version": "2.0", "generator": "invrender"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [node],
        "meshes": [{"name": name, "primitives": [{"attributes": attributes, "indices": 3, "material": 0, "mode": 4}]}],
        "materials": [{
            "name": name,
            "pbrMetallicRoughness": {
                "baseColorTexture": {"index": 0},
                "metallicRoughnessTexture": {"index": 1},
                "metallicFactor": 1.0,
                "roughnessFactor": 1.0,
            },
            **({"occlusionTexture": {"index": 1}} if getattr(mesh, "visibility", None) is not None else {}),
            **({"extensions": {PRD_EXTENSION: material_ext}} if material_ext else {}),
        }],
        "textures": [{"sampler": 0, "source": i} for i in range(len(images))],
        "images": images,
        "samplers": [{"magFilter": LINEAR, "minFilter": LINEAR_MIPMAP_LINEAR,
                      "wrapS": CLAMP_TO_EDGE, "wrapT": CLAMP_TO_EDGE}],
        "accessors": accessors,
        "bufferViews": views,
        "buffers": [{"byteLength": sum(len(b) for b in blobs)}],
    }
    if material_ext:
        doc["extensionsUsed"] = [PRD_EXTENSION]
    bin_chunk = b"".join(blobs)  # already 4-aligned
    json_chunk = _pad4(json.dumps(doc, separators=(",", ":")).encode("utf-8"), b" ")  # the spec pads JSON with spaces
    total = 12 + 8 + len(json_chunk) + 8 + len(bin_chunk)
    return b"".join([
        struct.pack("<III", GLB_MAGIC, 2, total),
        struct.pack("<II", len(json_chunk), CHUNK_JSON), json_chunk,
        struct.pack("<II", len(bin_chunk), CHUNK_BIN), bin_chunk,
    ])


def write_glb(path: Path, mesh, up: str = "z", prd: bool = True) -> Path:
    """Write ``mesh`` (:class:`~invrender.mesh.textured.TexturedMesh`) as a .glb, atomically
    (``prd``: with :data:`PRD_EXTENSION`)."""
    path = Path(path)
    return atomic_write_bytes(path, glb_bytes(mesh, name=path.stem or "invrender", up=up, prd=prd), shared=True)


_COMPONENTS = {5126: np.float32, 5125: np.uint32, 5123: np.uint16, 5121: np.uint8}
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}


def read_glb(path: Path, normalization: torch.Tensor | None = None, prd: bool = True):
    """Read a single-primitive, textured metallic-roughness .glb (as :func:`write_glb` writes and
    most tools export) back into a :class:`~invrender.mesh.textured.TexturedMesh`: positions as
    stored in the buffer (the node's up-axis rotation is a viewing convention and is not applied),
    mapped into the training frame by ``normalization`` (capture -> normalized; identity if None);
    base colour decoded from sRGB to linear; roughness and metallic from G and B times their
    factors; the occlusion texture, when there is one, read at the vertices as their visibility.

    With ``prd`` and a file that carries :data:`PRD_EXTENSION`, its progress and radiance
    textures, radiance SH and visibility come back too (SH rotated into the training frame), and
    the mesh renders as the run it was exported from. Otherwise (``prd=False``: what a glTF viewer
    sees, or a file from another tool) progress is 1 and radiance 0, so it renders as the ``pbr``
    blend. Clear ``ValueError`` naming the file on anything else."""
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
    progress, radiance, radiance_sh = torch.ones(t, t, 1), torch.zeros(t, t, 3), None
    ext = mat.get("extensions", {}).get(PRD_EXTENSION) if prd else None
    if ext is not None:
        try:
            to_train = Similarity.from_matrix(norm.double()).rotation
            progress = torch.from_numpy(image(ext["progressTexture"])[..., :1].copy())
            radiance = torch.from_numpy(image(ext["radianceTexture"]).copy())
            if progress.shape[:2] != (t, t) or radiance.shape[:2] != (t, t):
                raise ValueError(f"{path}: {PRD_EXTENSION} textures {tuple(progress.shape[:2])} and "
                                 f"{tuple(radiance.shape[:2])} must match the base colour's {(t, t)}")
            if "radianceShAttributes" in ext:
                sh = torch.from_numpy(np.stack([accessor(attrs[a]) for a in ext["radianceShAttributes"]], axis=1))
                radiance_sh = _rotate_sh_rest(sh, to_train).float()
            if "visibilityAttributes" in ext:
                packed = np.concatenate([accessor(attrs[a]) for a in ext["visibilityAttributes"]], axis=1)
                record = torch.from_numpy(packed[:, :int(ext["visibilityChannels"])].copy()).double()
                vis = _record_to_frame(record, to_train).float()
        except (KeyError, IndexError, TypeError) as e:
            raise ValueError(f"{path}: malformed {PRD_EXTENSION} extension ({e!r})") from e
        for name, arr in (("radiance SH", radiance_sh), ("visibility", vis)):
            if arr is not None and arr.shape[0] != len(pos):
                raise ValueError(f"{path}: {PRD_EXTENSION} {name} has {arr.shape[0]} vertices, the mesh {len(pos)}")
    return TexturedMesh(
        vertices=(p @ norm[:3, :3].T + norm[:3, 3]).contiguous(),
        faces=torch.from_numpy(faces),
        uvs=torch.from_numpy(uv),
        normals=torch.nn.functional.normalize(n @ inv_t.T, dim=-1),
        albedo=srgb_to_linear(torch.from_numpy(base)).clamp(0, 1),
        roughness=torch.from_numpy(mr[..., 1:2] * float(pbr.get("roughnessFactor", 1.0))).clamp(0, 1),
        metallic=torch.from_numpy(mr[..., 2:3] * float(pbr.get("metallicFactor", 1.0))).clamp(0, 1),
        progress=progress,
        radiance=radiance,
        normalization=norm,
        visibility=vis,
        radiance_sh=radiance_sh,
    )
