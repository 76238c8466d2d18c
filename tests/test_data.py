"""Dataset readers and image I/O on tiny fake datasets built in tmp_path.

Images are 8 x 6 (W x H), non-square so that a width/height swap anywhere shows up.
"""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from invrender import cameras
from invrender.color import srgb_to_linear
from invrender.data import DatasetError, SceneData, Views, load_scene
from invrender.image_io import ImageIOError, read_image, write_png

W, H = 8, 6
FOV_X = math.radians(40)
LIN_128 = float(srgb_to_linear(np.float64(128 / 255)))  # ~0.2158: an sRGB mid-grey decoded


def _gl_look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """OpenGL camera-to-world looking from eye at target (written independently of cameras.py)."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    z = eye - target  # OpenGL cameras look along -z
    z /= np.linalg.norm(z)
    x = np.cross(up, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, z, eye
    return m


def _eyes(n, radius=4.0, height=1.5):
    return [
        (radius * math.cos(2 * math.pi * i / n), radius * math.sin(2 * math.pi * i / n), height) for i in range(n)
    ]


def _rgba(value=128, alpha=255, w=W, h=H) -> np.ndarray:
    a = np.full((h, w, 4), value, np.uint8)
    a[..., 3] = alpha
    a[0, 0] = (255, 0, 0, 0)  # a transparent red pixel in the top-left corner
    return a


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _project_origin(views: Views) -> torch.Tensor:
    uv, _ = cameras.project_points(torch.zeros(1, 3), views.viewmats, views.Ks)
    return uv[:, 0]  # [V, 2]


# ---------------------------------------------------------------------------------------------
# dataset builders


def make_blender(root: Path, n_train=3, n_test=2) -> Path:
    for split, n in (("train", n_train), ("test", n_test)):
        frames = []
        for i, eye in enumerate(_eyes(n)):
            _save(root / split / f"r_{i}.png", _rgba())
            frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": _gl_look_at(eye).tolist()})
        (root / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": FOV_X, "frames": frames}))
    return root


def _write_gt(folder: Path) -> None:
    _save(folder / "albedo.png", np.full((H, W, 3), 128, np.uint8))
    normal = np.zeros((H, W, 3), np.uint8)
    normal[...] = (255, 128, 128)  # n ~ (1, 0, 0)
    _save(folder / "normal.png", normal)
    _save(folder / "roughness.png", np.full((H, W), 64, np.uint8))
    _save(folder / "metallic.png", np.full((H, W), 255, np.uint8))
    for env in ("bridge", "city"):
        _save(folder / f"rgba_{env}.png", _rgba(value=255 if env == "city" else 128))


def make_tensoir(root: Path, with_transforms: bool, n_train=2, n_test=2) -> Path:
    for split, n in (("train", n_train), ("test", n_test)):
        frames = []
        for i, eye in enumerate(_eyes(n)):
            folder = root / f"{split}_{i:03d}"
            _save(folder / "rgba.png", _rgba())
            c2w = _gl_look_at(eye)
            meta = {
                "imw": W,
                "imh": H,
                "cam_angle_x": FOV_X,
                "cam_transform_mat": ",".join(str(v) for v in c2w.reshape(-1)),
                "envmap": "sunset",
            }
            (folder / "metadata.json").write_text(json.dumps(meta))
            if split == "test":
                _write_gt(folder)
            frames.append({"file_path": f"./{split}_{i:03d}/rgba", "transform_matrix": c2w.tolist()})
        if with_transforms:
            (root / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": FOV_X, "frames": frames}))
    (root / "envmaps").mkdir()
    for env in ("city", "bridge"):
        (root / "envmaps" / f"{env}.hdr").write_bytes(b"#?RADIANCE\n")
    return root


def _write_ply(path: Path, xyz: np.ndarray, rgb: np.ndarray) -> None:
    plyfile = pytest.importorskip("plyfile")
    PlyData, PlyElement = plyfile.PlyData, plyfile.PlyElement

    v = np.empty(len(xyz), dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    v["x"], v["y"], v["z"] = xyz.T
    v["red"], v["green"], v["blue"] = rgb.T
    PlyData([PlyElement.describe(v, "vertex")]).write(str(path))


NS_CENTER = np.array([10.0, -5.0, 2.0])  # capture frame far from the origin, to test normalization


def make_nerfstudio(root: Path, n=10, **extra) -> Path:
    frames = []
    for i, eye in enumerate(_eyes(n, radius=3.0)):
        _save(root / "images" / f"frame_{i:05d}.png", _rgba()[..., :3])
        c2w = _gl_look_at(np.array(eye) + NS_CENTER, NS_CENTER)
        frames.append({"file_path": f"images/frame_{i:05d}.png", "transform_matrix": c2w.tolist()})
    frames.reverse()  # the reader sorts by file_path
    meta = {"camera_model": "OPENCV", "fl_x": 9.0, "fl_y": 10.0, "cx": 4.5, "cy": 2.5, "w": W, "h": H,
            "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0, "frames": frames, "ply_file_path": "sparse_pc.ply"}
    meta.update(extra)
    _write_ply(root / "sparse_pc.ply", np.array([NS_CENTER, NS_CENTER + 1]), np.array([[255, 0, 0], [0, 0, 255]]))
    (root / "transforms.json").write_text(json.dumps(meta))
    return root


def make_colmap(root: Path, n=9, model="PINHOLE", params=(9.0, 10.0, 4.5, 2.5)) -> Path:
    pycolmap = pytest.importorskip("pycolmap")
    rec = pycolmap.Reconstruction()
    cam = pycolmap.Camera(camera_id=1, model=model, width=W, height=H, params=list(params))
    rec.add_camera_with_trivial_rig(cam)
    for i, eye in enumerate(_eyes(n, radius=5.0)):
        name = f"img_{i:02d}.jpg" if i == 0 else f"img_{i:02d}.png"  # one JPG among the PNGs
        path = root / "images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_rgba()[..., :3]).save(path, **({"quality": 100} if i == 0 else {}))
        # COLMAP stores world-to-camera in OpenCV axes
        cv_c2w = _gl_look_at(eye) @ np.diag([1.0, -1.0, -1.0, 1.0])
        w2c = np.linalg.inv(cv_c2w)
        image = pycolmap.Image(name=name, camera_id=1, image_id=i + 1)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(w2c[:3]))
    rec.add_point3D(np.array([0.0, 0.0, 0.0]), pycolmap.Track(), np.array([255, 128, 0], np.uint8))
    rec.add_point3D(np.array([0.5, 0.2, 0.1]), pycolmap.Track(), np.array([0, 0, 0], np.uint8))
    sparse = root / "sparse" / "0"
    sparse.mkdir(parents=True)
    rec.write(str(sparse))
    return root


# ---------------------------------------------------------------------------------------------
# image I/O


def test_read_image_channels_bit_depths_and_roundtrip(tmp_path):
    grey = np.arange(W * H, dtype=np.uint8).reshape(H, W)
    _save(tmp_path / "g.png", grey)
    g = read_image(tmp_path / "g.png")
    assert g.shape == (H, W, 1) and g.dtype == np.float32
    np.testing.assert_allclose(g[..., 0], grey / 255.0, atol=1e-7)

    rgba = _rgba()
    rgba[1, 2] = (10, 20, 30, 40)
    _save(tmp_path / "a.png", rgba)
    a = read_image(tmp_path / "a.png")
    assert a.shape == (H, W, 4)
    np.testing.assert_allclose(a[1, 2] * 255, [10, 20, 30, 40], atol=1e-4)  # RGBA order, not BGRA

    img16 = np.linspace(0, 1, W * H * 3).reshape(H, W, 3)
    write_png(tmp_path / "c16.png", img16, bits=16)
    back = read_image(tmp_path / "c16.png")
    assert back.shape == (H, W, 3)
    np.testing.assert_allclose(back, img16, atol=1 / 65535)
    write_png(tmp_path / "c8.png", torch.from_numpy(img16))
    np.testing.assert_allclose(read_image(tmp_path / "c8.png"), img16, atol=0.5 / 255 + 1e-6)
    # grey + alpha comes back as RGBA
    Image.fromarray(np.stack([grey, np.full_like(grey, 200)], -1), "LA").save(tmp_path / "la.png")
    assert read_image(tmp_path / "la.png").shape == (H, W, 4)
    # JPG
    Image.fromarray(np.full((H, W, 3), 128, np.uint8)).save(tmp_path / "j.jpg", quality=100)
    np.testing.assert_allclose(read_image(tmp_path / "j.jpg"), 128 / 255, atol=2 / 255)
    # the atomic write leaves no temporary files behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "c16.png", "c8.png", "g.png", "j.jpg", "la.png"]


def test_image_errors_name_the_file(tmp_path):
    with pytest.raises(ImageIOError, match="nope.png.*not found"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(ImageIOError, match="bad.png"):
        read_image(tmp_path / "bad.png")
    _save(tmp_path / "g.png", np.zeros((H, W), np.uint8))
    with pytest.raises(ImageIOError, match="g.png.*1 channels"):
        read_image(tmp_path / "g.png", channels=(3, 4))
    with pytest.raises(ValueError):
        write_png(tmp_path / "x.png", np.zeros((2, 2, 2)))


# ---------------------------------------------------------------------------------------------
# Blender


def test_blender(tmp_path):
    scene = load_scene(make_blender(tmp_path))
    assert isinstance(scene, SceneData) and scene.format == "blender"
    assert scene.white_background and scene.points is None
    tr, te = scene.train, scene.test
    assert tr.names == ["r_0", "r_1", "r_2"] and te.names == ["r_0", "r_1"]
    assert tr.images.shape == (3, H, W, 3) and tr.alphas.shape == (3, H, W, 1)
    assert (tr.width, tr.height) == (W, H)
    assert tr.images.dtype == torch.float32
    assert tr.images[0, 3, 4, 1].item() == pytest.approx(LIN_128, abs=1e-5)
    assert LIN_128 == pytest.approx(0.2158, abs=1e-3)
    assert tr.alphas[0, 0, 0, 0] == 0 and tr.alphas[0, 3, 4, 0] == 1
    torch.testing.assert_close(tr.images[0, 0, 0], torch.tensor([1.0, 0.0, 0.0]))  # straight colour kept
    f = 0.5 * W / math.tan(FOV_X / 2)
    torch.testing.assert_close(tr.Ks[0], torch.tensor([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]]))
    # every camera looks at the origin: it projects to the image centre
    torch.testing.assert_close(_project_origin(tr), torch.tensor([[W / 2, H / 2]]).expand(3, 2), atol=1e-4, rtol=0)
    torch.testing.assert_close(cameras.camera_centers(tr.viewmats)[0], torch.tensor([4.0, 0.0, 1.5]), atol=1e-5, rtol=0)
    # world up (+z) appears above the centre (image y grows downward)
    uv, _ = cameras.project_points(torch.tensor([[0.0, 0.0, 0.5]]), tr.viewmats, tr.Ks)
    assert (uv[:, 0, 1] < H / 2).all()
    torch.testing.assert_close(scene.normalization, torch.eye(4))
    assert scene.scene_radius == pytest.approx(1.1 * 4.0, rel=1e-4)
    assert tr.image_paths[0].endswith("r_0.png")
    assert scene.envmaps == {}


def test_blender_downscale_averages_by_alpha(tmp_path):
    root = make_blender(tmp_path)
    scene = load_scene(root, downscale=2, splits=("train",))
    tr = scene.train
    assert tr.images.shape == (3, H // 2, W // 2, 3) and (tr.width, tr.height) == (W // 2, H // 2)
    # the top-left block has one transparent red pixel and three opaque grey ones
    torch.testing.assert_close(tr.images[0, 0, 0], torch.full((3,), LIN_128))
    assert tr.alphas[0, 0, 0, 0].item() == pytest.approx(0.75)
    torch.testing.assert_close(tr.Ks[0, :2, 2], torch.tensor([W / 4, H / 4]))
    torch.testing.assert_close(_project_origin(tr), torch.tensor([[W / 4, H / 4]]).expand(3, 2), atol=1e-4, rtol=0)
    assert len(scene.test) == 0 and scene.test.images.shape == (0, H // 2, W // 2, 3)


# ---------------------------------------------------------------------------------------------
# TensoIR


@pytest.mark.parametrize("with_transforms", [True, False])
def test_tensoir(tmp_path, with_transforms):
    scene = load_scene(make_tensoir(tmp_path, with_transforms))
    assert scene.format == "tensoir" and scene.white_background
    assert scene.train.names == ["train_000", "train_001"] and scene.test.names == ["test_000", "test_001"]
    assert scene.train.gt == {}
    gt = scene.test.gt
    assert sorted(gt) == ["albedo", "metallic", "normal", "rgba_bridge", "rgba_city", "roughness"]
    assert gt["albedo"].shape == (2, H, W, 3) and gt["albedo"][0, 2, 2, 0].item() == pytest.approx(LIN_128, abs=1e-5)
    n = gt["normal"][0, 2, 2]
    assert n.norm().item() == pytest.approx(1.0, abs=1e-5) and n[0] > 0.999
    assert gt["roughness"].shape == (2, H, W, 1) and gt["roughness"][0, 2, 2, 0].item() == pytest.approx(64 / 255)
    assert gt["metallic"][1, 5, 7, 0].item() == pytest.approx(1.0)
    assert gt["rgba_bridge"].shape == (2, H, W, 4)
    torch.testing.assert_close(gt["rgba_bridge"][0, 2, 2], torch.tensor([LIN_128, LIN_128, LIN_128, 1.0]))
    assert gt["rgba_city"][0, 0, 0, 3] == 0
    assert list(scene.envmaps) == ["bridge", "city"] and scene.envmaps["city"].name == "city.hdr"
    torch.testing.assert_close(_project_origin(scene.test), torch.tensor([[W / 2, H / 2]]).expand(2, 2), atol=1e-4, rtol=0)

    small = load_scene(tmp_path, downscale=2, load_gt=True, splits=("test",))
    assert small.test.gt["normal"].shape == (2, H // 2, W // 2, 3)
    assert small.test.gt["roughness"][0, 1, 1, 0].item() == pytest.approx(64 / 255)
    assert load_scene(tmp_path, load_gt=False).test.gt == {}


def test_tensoir_metadata_matrix_formats(tmp_path):
    root = make_tensoir(tmp_path, with_transforms=False, n_train=2, n_test=1)
    ref = load_scene(root).train.viewmats
    meta_path = root / "train_001" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    mat = [float(v) for v in meta["cam_transform_mat"].split(",")]
    for value in (mat, np.reshape(mat, (4, 4)).tolist()):
        meta["cam_transform_mat"] = value
        meta_path.write_text(json.dumps(meta))
        torch.testing.assert_close(load_scene(root, splits=("train",)).train.viewmats, ref)


# ---------------------------------------------------------------------------------------------
# nerfstudio


def test_nerfstudio(tmp_path):
    root = make_nerfstudio(tmp_path)
    scene = load_scene(root)
    assert scene.format == "nerfstudio" and not scene.white_background
    assert scene.test.names == ["frame_00000", "frame_00008"]
    assert len(scene.train) == 8 and "frame_00001" in scene.train.names
    tr = scene.train
    assert tr.images.shape == (8, H, W, 3)
    assert torch.all(tr.alphas == 1)
    torch.testing.assert_close(tr.Ks[0], torch.tensor([[9.0, 0, 4.5], [0, 10.0, 2.5], [0, 0, 1]]))
    # normalized frame: camera centres centred on 0, largest |coordinate| = 1
    centers = cameras.camera_centers(torch.cat([tr.viewmats, scene.test.viewmats]))
    torch.testing.assert_close(centers.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    assert centers.abs().max().item() == pytest.approx(1.0, abs=1e-5)
    # normalization maps the capture frame to it, and the cameras still look at the mapped centre
    N = scene.normalization
    target = N[:3, :3] @ torch.tensor(NS_CENTER, dtype=torch.float32) + N[:3, 3]
    uv, _ = cameras.project_points(target[None], tr.viewmats, tr.Ks)
    torch.testing.assert_close(uv[:, 0], torch.tensor([[4.5, 2.5]]).expand(8, 2), atol=1e-4, rtol=0)
    # points come through the same normalization, colours in [0, 1]
    torch.testing.assert_close(scene.points[0], target, atol=1e-5, rtol=0)
    torch.testing.assert_close(scene.point_colors, torch.tensor([[1.0, 0, 0], [0, 0, 1.0]]))
    assert scene.scene_radius == pytest.approx(1.1, rel=1e-3)


def test_nerfstudio_filename_split_overrides_and_applied_transform(tmp_path):
    perm = [[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]]  # original -> json frame
    root = make_nerfstudio(tmp_path, n=4, test_filenames=["./images/frame_00002.png"], applied_transform=perm)
    meta = json.loads((root / "transforms.json").read_text())
    for fr in meta["frames"]:
        if fr["file_path"].endswith("00003.png"):
            fr["fl_x"] = 7.0
    (root / "transforms.json").write_text(json.dumps(meta))
    scene = load_scene(root)
    assert scene.test.names == ["frame_00002"]
    assert scene.train.names == ["frame_00000", "frame_00001", "frame_00003"]
    assert scene.train.Ks[2, 0, 0] == 7.0 and scene.train.Ks[0, 0, 0] == 9.0
    # normalization @ (original point) == normalized point; original = A^-1 (json point)
    A = torch.eye(4, dtype=torch.float64)
    A[:3] = torch.tensor(perm, dtype=torch.float64)
    original = torch.linalg.inv(A) @ torch.tensor([*NS_CENTER, 1.0], dtype=torch.float64)
    mapped = (scene.normalization.double() @ original)[:3].float()
    torch.testing.assert_close(mapped, scene.points[0], atol=1e-5, rtol=0)


def test_nerfstudio_mask_becomes_alpha_and_json_path_is_accepted(tmp_path):
    root = make_nerfstudio(tmp_path, n=3)
    mask = np.full((H, W), 255, np.uint8)
    mask[:, :2] = 0
    _save(root / "masks" / "m.png", mask)
    _edit_json(root / "transforms.json", lambda d: [f.__setitem__("mask_path", "masks/m.png") for f in d["frames"]])
    scene = load_scene(root / "transforms.json")
    assert scene.root == root
    assert scene.train.alphas[0, 3, 1, 0] == 0 and scene.train.alphas[0, 3, 2, 0] == 1


def test_nerfstudio_errors(tmp_path):
    root = make_nerfstudio(tmp_path / "a", k1=0.1)
    with pytest.raises(DatasetError, match=r"transforms\.json.*distortion not supported yet"):
        load_scene(root)
    root = make_nerfstudio(tmp_path / "b", camera_model="OPENCV_FISHEYE")
    with pytest.raises(DatasetError, match=r"transforms\.json.*OPENCV_FISHEYE"):
        load_scene(root)
    root = make_nerfstudio(tmp_path / "c", w=W + 1)
    with pytest.raises(DatasetError, match=r"frame_\d+\.png.*declares"):
        load_scene(root)
    root = make_nerfstudio(tmp_path / "d", test_filenames=["images/missing.png"])
    with pytest.raises(DatasetError, match=r"transforms\.json.*missing\.png"):
        load_scene(root)


# ---------------------------------------------------------------------------------------------
# COLMAP


def test_colmap(tmp_path):
    root = make_colmap(tmp_path)
    scene = load_scene(root)
    assert scene.format == "colmap"
    assert scene.test.names == ["img_00", "img_08"] and len(scene.train) == 7
    assert scene.train.images.shape == (7, H, W, 3)
    assert scene.test.images[0, 3, 3, 0].item() == pytest.approx(LIN_128, abs=0.01)  # the JPG one
    torch.testing.assert_close(scene.train.Ks[0], torch.tensor([[9.0, 0, 4.5], [0, 10.0, 2.5], [0, 0, 1]]))
    assert scene.points.shape == (2, 3)
    # the world origin (a 3D point) is where every camera looks
    uv, depth = cameras.project_points(scene.points[:1], scene.train.viewmats, scene.train.Ks)
    torch.testing.assert_close(uv[:, 0], torch.tensor([[4.5, 2.5]]).expand(7, 2), atol=1e-4, rtol=0)
    assert (depth > 0).all()
    N = scene.normalization
    torch.testing.assert_close(N[:3, :3] @ torch.tensor([0.5, 0.2, 0.1]) + N[:3, 3], scene.points[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(scene.point_colors[0], torch.tensor([1.0, 128 / 255, 0.0]))
    centers = cameras.camera_centers(torch.cat([scene.train.viewmats, scene.test.viewmats]))
    assert centers.abs().max().item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    "model,params,pattern",
    [
        ("OPENCV", (9.0, 10.0, 4.5, 2.5, 0.1, 0.0, 0.0, 0.0), "nonzero distortion.*image_undistorter"),
        ("OPENCV_FISHEYE", (9.0, 10.0, 4.5, 2.5, 0.0, 0.0, 0.0, 0.0), "unsupported camera model OPENCV_FISHEYE"),
    ],
)
def test_colmap_camera_model_errors(tmp_path, model, params, pattern):
    root = make_colmap(tmp_path, n=2, model=model, params=params)
    with pytest.raises(DatasetError, match=rf"sparse[/\\]0 camera 1.*{pattern}"):
        load_scene(root)


def test_colmap_without_pycolmap_says_which_extra(tmp_path, monkeypatch):
    root = make_colmap(tmp_path, n=2)
    monkeypatch.setitem(sys.modules, "pycolmap", None)  # makes `import pycolmap` fail
    with pytest.raises(ImportError, match=r"pip install invrender\[colmap\]"):
        load_scene(root)


def test_colmap_zero_distortion_opencv_is_accepted(tmp_path):
    root = make_colmap(tmp_path, n=2, model="OPENCV", params=(9.0, 10.0, 4.5, 2.5, 0.0, 0.0, 0.0, 0.0))
    assert load_scene(root).train.Ks.shape == (1, 3, 3)


# ---------------------------------------------------------------------------------------------
# errors common to all formats


def _edit_json(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def test_dataset_errors_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_scene(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"empty.*no transforms_train\.json, transforms\.json or sparse/0"):
        load_scene(tmp_path / "empty")

    root = make_blender(tmp_path / "no_test")
    (root / "transforms_test.json").unlink()
    with pytest.raises(DatasetError, match=r"transforms_test\.json: file not found"):
        load_scene(root)

    root = make_blender(tmp_path / "no_image")
    (root / "train" / "r_1.png").unlink()
    with pytest.raises(DatasetError, match=r"r_1: image file not found"):
        load_scene(root)

    root = make_blender(tmp_path / "size")
    _save(root / "train" / "r_2.png", _rgba(w=W + 2))
    with pytest.raises(DatasetError, match=r"r_2\.png: image size 10x6 differs from 8x6"):
        load_scene(root)

    root = make_blender(tmp_path / "nan")
    _edit_json(root / "transforms_train.json", lambda d: d["frames"][1]["transform_matrix"][0].__setitem__(3, float("nan")))
    with pytest.raises(DatasetError, match=r"transforms_train\.json frame 1.*non-finite"):
        load_scene(root)

    root = make_blender(tmp_path / "empty_split")
    _edit_json(root / "transforms_test.json", lambda d: d.__setitem__("frames", []))
    with pytest.raises(DatasetError, match=r"transforms_test\.json.*no frames"):
        load_scene(root)

    root = make_blender(tmp_path / "malformed")
    (root / "transforms_train.json").write_text('{"camera_angle_x": 0.7, "frames": [')
    with pytest.raises(DatasetError, match=r"transforms_train\.json: malformed JSON \(Expecting"):
        load_scene(root)

    root = make_blender(tmp_path / "channels")
    (root / "train" / "r_0.png").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=r"r_0\.png: not a readable image"):
        load_scene(root)

    root = make_tensoir(tmp_path / "meta", with_transforms=False)
    _edit_json(root / "test_001" / "metadata.json", lambda d: d.pop("cam_angle_x"))
    with pytest.raises(DatasetError, match=r"test_001[/\\]metadata\.json: missing 'cam_angle_x'"):
        load_scene(root)

    with pytest.raises(ValueError, match="downscale"):
        load_scene(make_blender(tmp_path / "ds"), downscale=0)
