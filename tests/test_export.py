"""Exports: glTF binary (Khronos validator, trimesh reload), OBJ + PBR MTL, 3DGS PLY round trip,
environment maps, the capture frame, and the CLI's errors and a real tiny run."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from invrender.checkpoint import atomic_torch_save, checkpoint_path
from invrender.cli import main as cli_main
from invrender.distill.model import material_params
from invrender.export.common import Similarity, rotate_quats, rotate_sh, rotmat_to_quat
from invrender.export.envmap import envmap_image
from invrender.export.gltf import PRD_EXTENSION, Z_UP_TO_Y_UP, read_glb, write_glb
from invrender.export.obj import write_obj
from invrender.export.ply import SH_REST_BASES, ply_property_names, read_gaussian_ply, write_gaussian_ply
from invrender.export.run import export_run
from invrender.mesh.textured import TexturedMesh, mesh_path
from invrender.shading.envmap import read_hdr
from invrender.shading.light import EnvironmentLight
from invrender.splat.project import quat_to_rotmat
from invrender.splat.sh import eval_sh, sh_basis

ROOT = Path(__file__).resolve().parents[1]
NODE_DIR = ROOT / ".ci" / "node"  # `npm install --prefix .ci/node gltf-validator` (.ci/run does it)


def _rotation(axis, degrees) -> np.ndarray:
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    t = math.radians(degrees)
    K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(t) * K + (1 - math.cos(t)) * K @ K


def _normalization(scale=0.5, translation=(0.1, -0.2, 0.3), rotation=None) -> torch.Tensor:
    """A reader-style normalization [4, 4] (capture -> normalized): s R x + t."""
    N = torch.eye(4, dtype=torch.float64)
    R = np.eye(3) if rotation is None else rotation
    N[:3, :3] = torch.from_numpy(scale * R)
    N[:3, 3] = torch.tensor(translation, dtype=torch.float64)
    return N


def _cube(normalization: torch.Tensor, size: int = 8, half: float = 1.5,
          centre=(2.0, -1.0, 0.5)) -> tuple[TexturedMesh, np.ndarray]:
    """A textured box of half-width ``half`` around ``centre`` *in the capture frame* (24 vertices,
    12 triangles, counter-clockwise from outside; each face in its own cell of a 3 x 2 UV atlas),
    stored in the normalized frame. Returns the mesh and its capture-frame vertices [24, 3]."""
    verts, normals, uvs, faces = [], [], [], []
    for k, n in enumerate(np.concatenate([np.eye(3), -np.eye(3)])):
        a = np.roll(np.abs(n), 1)  # any axis across n; b = n x a makes a x b = n
        b = np.cross(n, a)
        cu, cv = (k % 3) / 3, (k // 3) / 2
        base = len(verts)
        for su, sv in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
            verts.append(np.asarray(centre) + half * (n + su * a + sv * b))
            normals.append(n)
            uvs.append([cu + (0.5 + 0.4 * su) / 3, cv + (0.5 + 0.4 * sv) / 2])
        faces += [[base, base + 1, base + 2], [base, base + 2, base + 3]]
    v_cap = np.asarray(verts)
    Nm = normalization.numpy()
    L = Nm[:3, :3]
    v_norm = v_cap @ L.T + Nm[:3, 3]
    n_norm = np.asarray(normals) @ np.linalg.inv(L)  # normals go by the inverse transpose
    n_norm /= np.linalg.norm(n_norm, axis=1, keepdims=True)
    g = torch.Generator().manual_seed(0)
    tex = lambda c: torch.rand(size, size, c, generator=g)  # noqa: E731
    mesh = TexturedMesh(
        vertices=torch.tensor(v_norm, dtype=torch.float32), faces=torch.tensor(faces, dtype=torch.int64),
        uvs=torch.tensor(uvs, dtype=torch.float32), normals=torch.tensor(n_norm, dtype=torch.float32),
        albedo=tex(3), roughness=tex(1), metallic=tex(1), progress=tex(1), radiance=tex(3),
        normalization=normalization.float(),
    )
    return mesh, v_cap


def _gaussians(n=50, sh_bases=16, materials=True, seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    p = {
        "means": torch.randn(n, 3, generator=g),
        "scales": torch.randn(n, 3, generator=g) - 3,
        "quats": torch.randn(n, 4, generator=g),
        "opacities": torch.randn(n, generator=g),
        "sh0": torch.randn(n, 1, 3, generator=g),
        "shN": torch.randn(n, sh_bases - 1, 3, generator=g) * 0.3,
    }
    if materials:
        for k, v in material_params(n).items():
            p[k] = v.detach() + torch.randn(v.shape, generator=g)
    return p


# ------------------------------------------------------------------------------------------
# frame helpers
# ------------------------------------------------------------------------------------------


def test_similarity_splits_the_normalization_and_rejects_what_a_quaternion_cannot_carry():
    R = _rotation([1, 2, 3], 40)
    sim = Similarity.from_matrix(_normalization(2.5, (1, 2, 3), R))
    assert sim.scale == pytest.approx(2.5) and np.allclose(sim.rotation, R) and sim.has_rotation
    x = torch.randn(10, 3, dtype=torch.float64)
    torch.testing.assert_close(sim.to_capture(sim.to_normalized(x)), x)
    torch.testing.assert_close(sim.inverse().to_normalized(x), sim.to_capture(x))
    mirror = torch.diag(torch.tensor([1.0, 1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="reflection"):
        Similarity.from_matrix(mirror)
    with pytest.raises(ValueError, match="similarity"):
        Similarity.from_matrix(torch.diag(torch.tensor([1.0, 2.0, 1.0, 1.0])))


def test_quaternion_and_sh_rotation_follow_the_frame():
    R = _rotation([0.3, -1, 0.5], 70)
    q = torch.randn(20, 4, dtype=torch.float64)
    torch.testing.assert_close(quat_to_rotmat(rotate_quats(q, R)), torch.from_numpy(R) @ quat_to_rotmat(q))
    torch.testing.assert_close(rotate_quats(q, R).norm(dim=-1), q.norm(dim=-1))  # unnormalized norm kept
    # every pivot of Shepperd's method: near identity, and half turns about x, y, z
    for axis, deg in (([1, 1, 1], 10), ([1, 0.1, 0], 179), ([0, 1, 0.1], 179), ([0.1, 0, 1], 179)):
        Ra = _rotation(axis, deg)
        Rq = quat_to_rotmat(torch.from_numpy(rotmat_to_quat(Ra)))
        torch.testing.assert_close(Rq, torch.from_numpy(Ra))
    identity = torch.tensor([1.0, 0, 0, 0], dtype=torch.float64)
    torch.testing.assert_close(torch.from_numpy(rotmat_to_quat(np.eye(3))), identity)
    # the colour seen along R d in the new frame is the old colour along d, in every band
    coeffs = torch.randn(20, 16, 3, dtype=torch.float64)
    d = torch.nn.functional.normalize(torch.randn(20, 3, dtype=torch.float64), dim=-1)
    new = rotate_sh(coeffs, R)
    torch.testing.assert_close(eval_sh(3, new, d @ torch.from_numpy(R).T), eval_sh(3, coeffs, d))


# ------------------------------------------------------------------------------------------
# glTF
# ------------------------------------------------------------------------------------------


def _glb_json(data: bytes) -> tuple[dict, bytes]:
    magic, version, total = np.frombuffer(data[:12], dtype="<u4")
    assert magic == 0x46546C67 and version == 2 and total == len(data) and total % 4 == 0
    jlen = int(np.frombuffer(data[12:16], dtype="<u4")[0])
    doc = json.loads(data[20 : 20 + jlen])
    blen = int(np.frombuffer(data[20 + jlen : 24 + jlen], dtype="<u4")[0])
    return doc, data[28 + jlen : 28 + jlen + blen]


def test_glb_structure_positions_in_the_capture_frame(tmp_path):
    mesh, v_cap = _cube(_normalization(0.5, (0.1, -0.2, 0.3), _rotation([0, 0, 1], 30)))
    path = write_glb(tmp_path / "cube.glb", mesh)
    doc, binary = _glb_json(path.read_bytes())
    assert doc["asset"] == {"version": "2.0", "generator": "invrender"}
    assert doc["nodes"][0]["rotation"] == Z_UP_TO_Y_UP
    prim = doc["meshes"][0]["primitives"][0]
    pos_acc = doc["accessors"][prim["attributes"]["POSITION"]]
    view = doc["bufferViews"][pos_acc["bufferView"]]
    assert all(v["byteOffset"] % 4 == 0 and "byteStride" not in v for v in doc["bufferViews"])
    pos = np.frombuffer(binary, dtype="<f4", count=3 * pos_acc["count"], offset=view["byteOffset"]).reshape(-1, 3)
    np.testing.assert_allclose(pos, v_cap, atol=1e-5)
    np.testing.assert_allclose(pos_acc["min"], v_cap.min(0), atol=1e-5)
    np.testing.assert_allclose(pos_acc["max"], v_cap.max(0), atol=1e-5)
    pbr = doc["materials"][0]["pbrMetallicRoughness"]
    assert pbr["metallicFactor"] == 1.0 and pbr["roughnessFactor"] == 1.0
    assert doc["accessors"][prim["indices"]]["componentType"] == 5125  # uint32


def _with_radiance_sh_and_shadows(mesh: TexturedMesh, seed: int = 1) -> TexturedMesh:
    """``mesh`` given per-vertex radiance SH (degree 2) and a degree-3 shadowing record [V, 33]."""
    g = torch.Generator().manual_seed(seed)
    v = mesh.vertices.shape[0]
    mesh.radiance_sh = torch.randn(v, 8, 3, generator=g) * 0.2
    mesh.visibility = torch.cat([torch.randn(v, 32, generator=g), torch.rand(v, 1, generator=g)], dim=1)
    mesh.validate()
    return mesh


def test_glb_prd_extension_round_trips_in_a_rotated_frame(tmp_path):
    R = _rotation([1, -2, 0.5], 35)  # capture -> normalized
    mesh, _ = _cube(_normalization(0.5, (0.1, -0.2, 0.3), R), size=16)
    mesh = _with_radiance_sh_and_shadows(mesh)
    path = write_glb(tmp_path / "cube.glb", mesh)
    doc, _ = _glb_json(path.read_bytes())
    assert doc["extensionsUsed"] == [PRD_EXTENSION] and "extensionsRequired" not in doc  # viewers may skip it
    ext = doc["materials"][0]["extensions"][PRD_EXTENSION]
    assert ext["visibilityChannels"] == 33 and len(ext["visibilityAttributes"]) == 9  # VEC4s, last one padded
    assert len(ext["radianceShAttributes"]) == 8
    assert all(a.startswith("_") for a in doc["meshes"][0]["primitives"][0]["attributes"] if a not in
               ("POSITION", "NORMAL", "TEXCOORD_0"))  # glTF's application-specific attributes

    # read back in the training frame: everything the run had, the textures to 8 bits
    back = read_glb(path, mesh.normalization)
    assert float((back.progress - mesh.progress).abs().max()) <= 0.5 / 255 + 1e-6
    assert float((back.radiance - mesh.radiance).abs().max()) <= 0.5 / 255 + 1e-6
    torch.testing.assert_close(back.radiance_sh, mesh.radiance_sh, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(back.visibility, mesh.visibility, atol=1e-5, rtol=1e-5)

    # in the file the SH live in the capture's frame: the colour seen along a capture direction d is
    # the trained one along R d (not the same coefficients, as the rotation is not trivial)
    cap = read_glb(path)  # identity normalization: the file's own frame
    d = torch.nn.functional.normalize(torch.randn(24, 3, dtype=torch.float64), dim=-1)
    seen_cap = torch.einsum("vk,vkc->vc", sh_basis(2, d)[:, 1:], cap.radiance_sh.double())
    seen_run = torch.einsum("vk,vkc->vc", sh_basis(2, d @ torch.from_numpy(R).T)[:, 1:], mesh.radiance_sh.double())
    torch.testing.assert_close(seen_cap, seen_run, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(cap.radiance_sh, mesh.radiance_sh, atol=1e-2)
    # a shadowing record's share of a light is the same for the light rotated along with it
    light = torch.randn(16, dtype=torch.float64)
    light_cap = rotate_sh(light[None, :, None], R.T)[0, :, 0]  # the same sky in the capture's axes
    share = lambda rec, L: (rec[:, :16] @ L) / (rec[:, 16:32] @ L)  # noqa: E731
    torch.testing.assert_close(share(cap.visibility.double(), light_cap), share(mesh.visibility.double(), light),
                               atol=1e-3, rtol=1e-3)

    # what another viewer gets: the physically based material alone
    core = read_glb(path, mesh.normalization, prd=False)
    assert torch.equal(core.progress, torch.ones_like(core.progress)) and not core.radiance.any()
    assert core.radiance_sh is None and core.visibility.shape[1] == 1  # the occlusion texture
    # a file written without the extension reads the same way
    plain = read_glb(write_glb(tmp_path / "plain.glb", mesh, prd=False), mesh.normalization)
    assert plain.radiance_sh is None and torch.equal(plain.progress, core.progress)
    assert "extensionsUsed" not in _glb_json((tmp_path / "plain.glb").read_bytes())[0]


def test_glb_reloads_with_trimesh(tmp_path):
    trimesh = pytest.importorskip("trimesh", reason="trimesh (the [dev] extra) is not installed")
    mesh, v_cap = _cube(_normalization(), size=16)
    path = write_glb(tmp_path / "cube.glb", mesh, up="y")  # no node rotation: trimesh's vertices are the file's
    scene = trimesh.load(str(path), process=False)
    geoms = list(scene.geometry.values()) if hasattr(scene, "geometry") else [scene]
    assert len(geoms) == 1
    m = geoms[0]
    assert len(m.vertices) == 24 and len(m.faces) == 12
    np.testing.assert_allclose(np.asarray(m.vertices), v_cap, atol=1e-5)
    mat = m.visual.material
    assert mat.metallicFactor == pytest.approx(1.0) and mat.roughnessFactor == pytest.approx(1.0)
    assert mat.baseColorTexture.size == (16, 16) and mat.metallicRoughnessTexture.size == (16, 16)
    # the base colour is the linear albedo sRGB-encoded; the ORM texture is linear (G roughness, B metallic)
    from invrender.color import linear_to_srgb

    base = np.asarray(mat.baseColorTexture.convert("RGB"), dtype=np.float64) / 255
    np.testing.assert_allclose(base, linear_to_srgb(mesh.albedo.double().numpy()), atol=0.5 / 255 + 1e-9)
    mr = np.asarray(mat.metallicRoughnessTexture.convert("RGB"), dtype=np.float64) / 255
    np.testing.assert_allclose(mr[..., 1], mesh.roughness[..., 0].double().numpy(), atol=0.5 / 255 + 1e-9)
    np.testing.assert_allclose(mr[..., 2], mesh.metallic[..., 0].double().numpy(), atol=0.5 / 255 + 1e-9)


_VALIDATE_JS = """
const fs = require('fs');
const validator = require(process.argv[2]);
validator.validateBytes(new Uint8Array(fs.readFileSync(process.argv[3])), {maxIssues: 100})
  .then((report) => console.log(JSON.stringify(report)))
  .catch((e) => { console.error(e); process.exit(2); });
"""


def _validator_module() -> Path:
    module = NODE_DIR / "node_modules" / "gltf-validator"
    if shutil.which("node") is None:
        pytest.skip("node is not installed (the Khronos glTF validator runs on node)")
    if not (module / "package.json").is_file():
        pytest.skip(f"gltf-validator is not installed: npm install --prefix {NODE_DIR} gltf-validator")
    return module


@pytest.mark.parametrize("up", ["z", "y"])
def test_glb_passes_the_khronos_validator(tmp_path, up):
    module = _validator_module()
    mesh, _ = _cube(_normalization(0.5, (0.1, -0.2, 0.3), _rotation([1, 1, 0], 25)), size=32)
    mesh.normals[0] = 0.0  # a degenerate normal (decimation fins make them): glTF needs unit ones
    mesh = _with_radiance_sh_and_shadows(mesh)  # the PRD extension's attributes and textures too
    path = write_glb(tmp_path / "cube.glb", mesh, up=up)
    script = tmp_path / "validate.js"
    script.write_text(_VALIDATE_JS)
    r = subprocess.run(["node", str(script), str(module), str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    issues = report["issues"]
    print("gltf-validator:", {k: issues[k] for k in ("numErrors", "numWarnings", "numInfos", "numHints")},
          [m["code"] for m in issues["messages"]])
    assert issues["numErrors"] == 0, issues["messages"]
    assert issues["numWarnings"] == 0, issues["messages"]


# ------------------------------------------------------------------------------------------
# OBJ + MTL
# ------------------------------------------------------------------------------------------


def _parse_obj(path: Path) -> dict[str, list]:
    out: dict[str, list] = {"v": [], "vt": [], "vn": [], "f": [], "mtllib": [], "usemtl": []}
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] in out:
            out[parts[0]].append(parts[1:])
    return out


def test_obj_mtl_parse_back_in_the_capture_frame(tmp_path):
    mesh, v_cap = _cube(_normalization(0.25, (0.5, 0.0, -1.0)), size=8)
    (tmp_path / "sub").mkdir()
    written = write_obj(tmp_path / "sub" / "toy.obj", mesh)
    assert written[-1] == tmp_path / "sub" / "toy.obj"
    obj = _parse_obj(written[-1])
    assert len(obj["v"]) == 24 and len(obj["vt"]) == 24 and len(obj["vn"]) == 24 and len(obj["f"]) == 12
    np.testing.assert_allclose(np.asarray(obj["v"], dtype=np.float64), v_cap, atol=1e-5)
    vt = np.asarray(obj["vt"], dtype=np.float64)
    np.testing.assert_allclose(vt[:, 1], 1 - mesh.uvs[:, 1].double().numpy(), atol=1e-7)  # v flipped
    face = obj["f"][0][0].split("/")
    assert len(face) == 3 and face[0] == face[1] == face[2] and int(face[0]) >= 1  # 1-based, shared index
    assert min(int(c.split("/")[0]) for f in obj["f"] for c in f) == 1
    mtl_path = written[-1].parent / obj["mtllib"][0][0]
    keys = {}
    for line in mtl_path.read_text().splitlines():
        parts = line.split()
        if parts and not parts[0].startswith("#"):
            keys[parts[0]] = parts[1:]
    assert keys["newmtl"] == obj["usemtl"][0]
    assert keys["Kd"] == ["1", "1", "1"] and keys["Pr"] == ["1"] and keys["Pm"] == ["1"]
    assert "norm" not in keys  # no normal map is written
    from invrender.image_io import read_image

    for key, channels in (("map_Kd", 3), ("map_Pr", 1), ("map_Pm", 1)):
        tex = mtl_path.parent / keys[key][0]
        assert tex.is_file() and tex.name.startswith("toy_")
        assert read_image(tex).shape == (8, 8, channels)
    rough = read_image(mtl_path.parent / keys["map_Pr"][0])[..., 0]
    np.testing.assert_allclose(rough, mesh.roughness[..., 0].numpy(), atol=0.5 / 255 + 1e-6)
    assert not list(tmp_path.rglob("*.tmp"))


# ------------------------------------------------------------------------------------------
# PLY
# ------------------------------------------------------------------------------------------


def test_ply_header_is_the_3dgs_layout(tmp_path):
    from plyfile import PlyData

    path = write_gaussian_ply(tmp_path / "g.ply", _gaussians(10), torch.eye(4))
    ply = PlyData.read(str(path))
    names = [p.name for p in ply["vertex"].properties]
    gs = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(45)]
          + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    assert names == gs + ["albedo_0", "albedo_1", "albedo_2", "roughness", "metallic", "progress"]
    assert names == ply_property_names(True) and ply_property_names(False) == gs
    assert not ply.text and ply.byte_order == "<"
    assert all(p.val_dtype in ("f4", "float32") for p in ply["vertex"].properties)
    head = path.read_bytes()[:60]
    assert head.startswith(b"ply\nformat binary_little_endian 1.0\n")


@pytest.mark.parametrize("rotated", [False, True])
def test_ply_round_trip_recovers_every_parameter(tmp_path, rotated):
    from plyfile import PlyData

    R = _rotation([1, -2, 0.5], 55) if rotated else None
    N = _normalization(0.4, (0.3, -0.7, 1.1), R)
    params = _gaussians(64)
    path = write_gaussian_ply(tmp_path / "g.ply", params, N)
    v = PlyData.read(str(path))["vertex"]
    sim = Similarity.from_matrix(N)
    # the file is in the capture frame: positions, log scales - log s, rotated local axes
    xyz = torch.from_numpy(np.stack([v["x"], v["y"], v["z"]], 1).astype(np.float64))
    torch.testing.assert_close(xyz, sim.to_capture(params["means"].double()), atol=1e-5, rtol=1e-6)
    np.testing.assert_allclose(v["scale_0"], params["scales"][:, 0] - math.log(0.4), atol=1e-5)
    normals = np.stack([v["nx"], v["ny"], v["nz"]], 1)
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1, atol=1e-5)
    # a normal is the smallest-scale axis, oriented away from the median centre
    q = torch.from_numpy(np.stack([v[f"rot_{i}"] for i in range(4)], 1)).double()
    s = np.stack([v[f"scale_{i}"] for i in range(3)], 1)
    axes = quat_to_rotmat(q).numpy()[np.arange(64), :, s.argmin(1)]  # [N, 3]
    np.testing.assert_allclose(np.abs((axes * normals).sum(1)), 1, atol=1e-5)
    centre = np.median(xyz.numpy(), axis=0)
    assert ((xyz.numpy() - centre) * normals).sum(1).min() >= -1e-6
    np.testing.assert_allclose(v["albedo_1"], torch.sigmoid(params["albedo"][:, 1]).numpy(), atol=1e-6)
    if rotated:  # the view-dependent colour survives the frame change
        d = torch.nn.functional.normalize(torch.randn(64, 3, dtype=torch.float64), dim=-1)
        rest = np.stack([v[f"f_rest_{i}"] for i in range(45)], 1).reshape(64, 3, 15).transpose(0, 2, 1)
        coeffs_cap = torch.cat([params["sh0"].double(), torch.from_numpy(rest.copy()).double()], 1)
        coeffs = torch.cat([params["sh0"], params["shN"]], 1).double()
        d_norm = d @ torch.from_numpy(sim.rotation).T
        torch.testing.assert_close(eval_sh(3, coeffs_cap, d), eval_sh(3, coeffs, d_norm), atol=1e-5, rtol=1e-5)
    back = read_gaussian_ply(path, N)
    assert set(back) == set(params)
    for k, val in params.items():
        if k in ("albedo", "roughness", "metallic", "progress"):
            # the file holds activated float32 values: saturated logits (metallic starts near 1) come
            # back finite but different, the materials themselves do not
            torch.testing.assert_close(torch.sigmoid(back[k]), torch.sigmoid(val), atol=1e-6, rtol=0, msg=k)
        else:
            torch.testing.assert_close(back[k], val, atol=2e-5, rtol=2e-5, msg=k)


@pytest.mark.parametrize("rotated", [False, True])
def test_ply_carries_the_residual_normal(tmp_path, rotated):
    from plyfile import PlyData

    from invrender.distill.model import NORMAL_RESIDUAL, gaussian_normals

    R = _rotation([2, -1, 0.3], 70) if rotated else None
    N = _normalization(0.5, (0.2, 0.1, -0.4), R)
    params = _gaussians(40)
    params[NORMAL_RESIDUAL] = 0.6 * torch.randn(40, 3, generator=torch.Generator().manual_seed(3))
    path = write_gaussian_ply(tmp_path / "g.ply", params, N)
    v = PlyData.read(str(path))["vertex"]
    normals = torch.from_numpy(np.stack([v["nx"], v["ny"], v["nz"]], 1)).double()
    cam = torch.tensor([0.0, 0.0, 50.0])
    shaded = gaussian_normals(params, cam).double()  # what the run shades with, normalized frame
    # the file's normals are those, turned into the capture frame (up to the side each one faces)
    rot = torch.from_numpy(Similarity.from_matrix(N).rotation)
    torch.testing.assert_close((normals @ rot.T * shaded).sum(-1).abs(), torch.ones(40, dtype=torch.float64),
                               atol=1e-5, rtol=0)
    back = read_gaussian_ply(path, N)
    assert NORMAL_RESIDUAL in back
    torch.testing.assert_close(gaussian_normals(back, cam).double(), shaded, atol=1e-5, rtol=0)
    # without a residual the normals are the axes and nothing is invented on the way back
    del params[NORMAL_RESIDUAL]
    assert NORMAL_RESIDUAL not in read_gaussian_ply(write_gaussian_ply(tmp_path / "h.ply", params, N), N)


def test_ply_low_sh_degree_is_padded_and_trimmed_and_materials_are_optional(tmp_path):
    from plyfile import PlyData

    params = _gaussians(12, sh_bases=4, materials=False)
    path = write_gaussian_ply(tmp_path / "g.ply", params, _normalization(2.0, (0, 0, 1)))
    ply = PlyData.read(str(path))
    names = [p.name for p in ply["vertex"].properties]
    assert names == ply_property_names(False) and "sh_degree 1" in ply.comments
    rest = np.stack([ply["vertex"][f"f_rest_{i}"] for i in range(3 * SH_REST_BASES)], 1).reshape(12, 3, 15)
    assert np.all(rest[:, :, 3:] == 0) and np.any(rest[:, :, :3] != 0)  # channel-major, zero-padded
    np.testing.assert_allclose(rest[:, 1, :3], params["shN"][:, :, 1].numpy(), atol=1e-6)  # G block
    back = read_gaussian_ply(path, _normalization(2.0, (0, 0, 1)))
    assert back["shN"].shape == (12, 3, 3) and "albedo" not in back
    torch.testing.assert_close(back["shN"], params["shN"])


# ------------------------------------------------------------------------------------------
# environment map
# ------------------------------------------------------------------------------------------


def _light(res=16) -> EnvironmentLight:
    light = EnvironmentLight(res)
    with torch.no_grad():
        light.log_radiance.copy_(torch.randn(light.log_radiance.shape, generator=torch.Generator().manual_seed(1)))
    return light


@pytest.mark.parametrize("suffix", [".hdr", ".exr"])
def test_envmap_round_trip(tmp_path, suffix):
    from invrender.export.envmap import write_envmap

    light = _light()
    path = write_envmap(tmp_path / f"light{suffix}", light, torch.eye(4), height=16)
    img = read_hdr(path)
    ref = light.to_equirect(16, 32).detach().numpy()
    assert img.shape == (16, 32, 3)
    # RGBE shares one exponent per pixel: 8 mantissa bits relative to the brightest channel
    # (OpenCV truncates, hence 2^-7); EXR holds half or full floats
    tol = ref.max(axis=-1, keepdims=True) * (2.0**-7 if suffix == ".hdr" else 1e-3)
    assert np.all(np.abs(img - ref) <= tol + 1e-6)


def test_envmap_in_a_rotated_capture_frame_looks_up_the_rotated_direction():
    from invrender.shading.envmap import direction_grid

    R = _rotation([1, 0, 0], 90)  # e.g. a Y-up capture normalized to Z up
    light = _light()
    img = envmap_image(light, _normalization(3.0, (1, 2, 3), R), height=8)
    d = torch.from_numpy(direction_grid(8, 16)).float()
    torch.testing.assert_close(img, light.radiance(d @ torch.from_numpy(R).float().T).detach())
    torch.testing.assert_close(envmap_image(light, _normalization(3.0, (1, 2, 3)), 8), light.to_equirect(8).detach())


# ------------------------------------------------------------------------------------------
# runs and the CLI
# ------------------------------------------------------------------------------------------


def _fake_run(tmp_path: Path, *, light: bool, mesh: bool, normalization=None) -> Path:
    """A run folder with one checkpoint (what load_run reads), without training."""
    run = tmp_path / "run"
    N = _normalization() if normalization is None else normalization
    params = _gaussians(30, materials=light)
    sd = {"step": 1, "params": params,
          "meta": {"data": "/nonexistent", "sh_degree": 3, "normalization": N.tolist(), "blend": "radiance"}}
    if light:
        sd["light"] = _light(8).state_dict()
    atomic_torch_save(sd, checkpoint_path(run, 1))
    if mesh:
        _cube(N)[0].save(mesh_path(run))
    return run


def _cli(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        cli_main(["export", *map(str, args)])
        raise SystemExit(0)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_cli_exports_every_format_from_a_run(tmp_path, capsys):
    run = _fake_run(tmp_path, light=True, mesh=True)
    for fmt, name in (("glb", "a/m.glb"), ("obj", "b/m.obj"), ("ply", "c/g.ply"), ("envmap", "d/l.exr")):
        code, out, err = _cli(capsys, "--run", run, "--format", fmt, "--out", tmp_path / name, "--envmap-height", "8")
        assert code == 0, err
        assert (tmp_path / name).is_file() and "wrote" in out
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        "m.mtl", "m.obj", "m_albedo.png", "m_metallic.png", "m_roughness.png"]
    assert read_hdr(tmp_path / "d" / "l.exr").shape == (8, 16, 3)
    # the glb carries the PRD extension unless asked not to
    assert _glb_json((tmp_path / "a" / "m.glb").read_bytes())[0]["extensionsUsed"] == [PRD_EXTENSION]
    code, _, err = _cli(capsys, "--run", run, "--format", "glb", "--out", tmp_path / "core.glb", "--no-glb-prd")
    assert code == 0, err
    assert "extensionsUsed" not in _glb_json((tmp_path / "core.glb").read_bytes())[0]


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    run = _fake_run(tmp_path, light=False, mesh=False)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cases = [
        (["--format", "envmap", "--out", tmp_path / "light.png"], ".hdr or .exr"),
        (["--format", "ply", "--out", tmp_path / "g.splat"], ".ply"),
        (["--format", "ply", "--out", blocker / "sub" / "g.ply"], "is a file"),
        (["--format", "ply", "--out", tmp_path], "."),  # a folder has no .ply suffix
        (["--format", "glb", "--out", tmp_path / "m.glb"], "--mesh.enable"),
        (["--format", "obj", "--out", tmp_path / "m.obj"], "has no mesh"),
        (["--format", "envmap", "--out", tmp_path / "l.hdr"], "no learned light"),
    ]
    for args, needle in cases:
        code, _, err = _cli(capsys, "--run", run, *args)
        assert code == 1 and needle in err and len(err.strip().splitlines()) == 1, (args, err)
        assert "Traceback" not in err
    code, _, err = _cli(capsys, "--run", tmp_path / "nope", "--format", "ply", "--out", tmp_path / "g.ply")
    assert code == 1 and "does not exist" in err
    # a run without materials still exports its splats, without the material extras
    code, _, err = _cli(capsys, "--run", run, "--format", "ply", "--out", tmp_path / "g.ply")
    assert code == 0, err
    assert "albedo" not in read_gaussian_ply(tmp_path / "g.ply")
    # tyro rejects an unknown format before anything runs
    with pytest.raises(SystemExit) as e:
        cli_main(["export", "--run", str(run), "--format", "fbx", "--out", str(tmp_path / "x.fbx")])
    assert e.value.code == 2


def test_unwritable_folder_is_named(tmp_path):
    import os

    run = _fake_run(tmp_path, light=True, mesh=False)
    if Path("/proc/self").is_dir():  # a folder nobody can create, root included
        with pytest.raises(ValueError, match="cannot create folder /proc/invrender-nope"):
            export_run(run, "ply", Path("/proc/invrender-nope/g.ply"))
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(ValueError, match="locked"):
            export_run(run, "ply", locked / "deeper" / "g.ply")
        with pytest.raises(ValueError, match="not writable"):
            export_run(run, "ply", locked / "g.ply")
    finally:
        locked.chmod(0o700)


@pytest.fixture(scope="module")
def tiny_run(embedded_scene, tmp_path_factory):
    """A real run through all four PRD stages in a few steps (as tests/test_relight_eval.py)."""
    from invrender.distill.schedule import DistillConfig
    from invrender.distill.visibility import AOConfig
    from invrender.train import TrainConfig, train

    out = tmp_path_factory.mktemp("export") / "run"
    distill = DistillConfig(specular_steps=2, diffuse_steps=2, joint_steps=2, light_resolution=16, mesh_normal_resolution=24,
                            ao=AOConfig(grid_resolution=12, num_directions=4))
    cfg = TrainConfig(data=embedded_scene, out=out, steps=4, downscale=4, init_num_points=500, distill=distill,
                      progress=False, eval_at_end=False, checkpoint_every=1000)
    train(cfg)
    return out


def test_cli_exports_a_real_run(tiny_run, tmp_path):
    from invrender.eval import load_run

    cmd = [sys.executable, "-m", "invrender.cli", "export", "--run", str(tiny_run)]
    r = subprocess.run(cmd + ["--format", "ply", "--out", str(tmp_path / "splats.ply")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(cmd + ["--format", "envmap", "--out", str(tmp_path / "light.hdr"), "--envmap-height", "32"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    run = load_run(tiny_run)
    N = torch.tensor(run.meta["normalization"], dtype=torch.float64)
    back = read_gaussian_ply(tmp_path / "splats.ply", N)
    assert back["means"].shape == run.params["means"].shape and "progress" in back
    torch.testing.assert_close(back["means"], run.params["means"], atol=1e-5, rtol=1e-5)
    ref = run.light.to_equirect(32).detach().numpy()
    assert np.all(np.abs(read_hdr(tmp_path / "light.hdr") - ref) <= ref.max(-1, keepdims=True) * 2.0**-7 + 1e-6)
    r = subprocess.run(cmd + ["--format", "glb", "--out", str(tmp_path / "m.glb")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1 and "--mesh.enable" in r.stderr and len(r.stderr.strip().splitlines()) == 1
