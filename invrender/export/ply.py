"""Gaussian splats as the de-facto 3DGS PLY, readable by splat viewers, and back.

Layout (binary little-endian float32, one ``vertex`` element), exactly the order of the 3DGS
reference's ``save_ply``::

    x y z  nx ny nz  f_dc_0..2  f_rest_0..44  opacity  scale_0..2  rot_0..3
    [albedo_0..2 roughness metallic progress]        (only when the run has materials)

- ``f_rest`` is channel-major: the 15 higher-order coefficients of R, then those of G, then B.
  A run trained with SH degree < 3 is padded with zeros up to 45 (degree 3), because the common
  loaders (the 3DGS reference among them) derive nothing from the count and expect 45; the
  header's ``comment sh_degree <d>`` lets :func:`read_gaussian_ply` trim the padding again.
- ``opacity`` is the logit, ``scale_*`` the log of the standard deviations, ``rot_*`` the
  unnormalized quaternion wxyz, colour = SH * coeffs + 0.5 in display space (all as 3DGS stores them).
- ``nx ny nz`` are real normals (3DGS writes zeros): the normal PRD shades with, the axis of each
  Gaussian's smallest scale plus its learned residual when the run has one
  (``distill.lr_normal_residual``). Its sign is ambiguous (a flat disc has two sides); the renderer
  flips it towards each camera, the file orients it away from the scene's centre (the median of the
  Gaussian centres), which is right for the outer surface of an object capture. A file with the
  material extras is read back with the residual that gives these normals again.
- The material extras are the *activated* values in [0, 1] (linear albedo, perceptual roughness,
  metallic, PRD progress); viewers ignore properties they do not know.

Everything is written in the capture's original frame: positions by the inverse of the reader's
normalization, log scales shifted by ``-log s``, quaternions composed with the inverse rotation and,
when the normalization rotates (nerfstudio's ``applied_transform``), the view-dependent SH
coefficients rotated band by band so that each Gaussian still shows the same colour in every
direction. :func:`read_gaussian_ply` applies the normalization again and recovers the parameters.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from invrender.checkpoint import atomic_write_bytes
from invrender.export.common import Similarity, rotate_quats, rotate_sh
from invrender.splat.project import shortest_axes

MATERIAL_NAMES = ("albedo", "roughness", "metallic", "progress")  # as invrender.distill.model
NORMAL_RESIDUAL = "normal_residual"  # as invrender.distill.model
SH_REST_BASES = 15  # f_rest coefficients per channel in the file (degree 3)
_MATERIAL_CHANNELS = {"albedo": 3, "roughness": 1, "metallic": 1, "progress": 1}
# logits read back from activated float32 values saturate here instead of becoming infinite
_EPS = 1e-7


def ply_property_names(with_materials: bool) -> list[str]:
    """The vertex properties of the file, in order."""
    names = ["x", "y", "z", "nx", "ny", "nz"]
    names += [f"f_dc_{i}" for i in range(3)]
    names += [f"f_rest_{i}" for i in range(3 * SH_REST_BASES)]
    names += ["opacity"] + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)]
    if with_materials:
        names += ["albedo_0", "albedo_1", "albedo_2", "roughness", "metallic", "progress"]
    return names


def has_materials(params: dict[str, Tensor]) -> bool:
    return all(k in params for k in MATERIAL_NAMES)


def transform_gaussians(params: dict[str, Tensor], sim: Similarity) -> dict[str, Tensor]:
    """The Gaussians ``params`` (stored layout, see :mod:`invrender.splat.gaussians`) moved by
    ``x' = s R x + t``: centres mapped, log scales + log s, quaternions R * q, and the view-dependent
    SH rotated (the colour seen along ``d'`` is the old colour along ``R^T d'``). Other entries
    (opacities, materials) are copied."""
    out = {k: v.detach().clone() for k, v in params.items()}
    R = torch.from_numpy(sim.rotation)
    t = torch.from_numpy(sim.translation)
    means = params["means"].detach()
    out["means"] = (sim.scale * means.double() @ R.T + t).to(means.dtype)  # [N, 3]
    out["scales"] = params["scales"].detach() + math.log(sim.scale)  # [N, 3] log
    out["quats"] = rotate_quats(params["quats"], sim.rotation)  # [N, 4] wxyz
    if NORMAL_RESIDUAL in params:  # a world-space vector: turned like the axes it is added to
        out[NORMAL_RESIDUAL] = params[NORMAL_RESIDUAL].detach() @ torch.from_numpy(sim.rotation).to(
            params[NORMAL_RESIDUAL].dtype).T
    if sim.has_rotation and params["shN"].shape[1] > 0:
        coeffs = torch.cat([params["sh0"], params["shN"]], dim=1).detach()  # [N, K, 3]
        rotated = rotate_sh(coeffs, sim.rotation)
        out["sh0"] = params["sh0"].detach().clone()  # the DC term is rotation invariant: keep it bit-exact
        out["shN"] = rotated[:, 1:]
    return out


def _shortest_axes(params: dict[str, Tensor]) -> Tensor:
    """:func:`~invrender.splat.project.shortest_axes` of ``params`` in float64, detached."""
    return shortest_axes(params["quats"].detach().double(), params["scales"])


def outward_normals(params: dict[str, Tensor]) -> Tensor:
    """Unit normal per Gaussian ``[N, 3]``: the one PRD shades with (the axis of its smallest scale,
    plus the learned residual when there is one: :func:`invrender.distill.model.gaussian_normals`),
    oriented away from the median of the centres (a sign the file must choose; see the module docstring)."""
    n = _shortest_axes(params)
    if NORMAL_RESIDUAL in params:
        n = torch.nn.functional.normalize(n + params[NORMAL_RESIDUAL].detach().double(), dim=-1)
    means = params["means"].detach().double()
    centre = means.median(dim=0).values  # [3]; robust to floaters, unlike the mean
    sign = torch.where(((means - centre) * n).sum(-1, keepdim=True) < 0, -1.0, 1.0)
    return (n * sign).float()


def _activated(params: dict[str, Tensor], name: str) -> Tensor:
    v = torch.sigmoid(params[name].detach().float())
    return v.reshape(v.shape[0], _MATERIAL_CHANNELS[name])


def write_gaussian_ply(path: Path, params: dict[str, Tensor], normalization, sh_degree: int | None = None) -> Path:
    """Write the Gaussians ``params`` (normalized frame, stored layout) as a 3DGS PLY in the
    capture frame, atomically. ``normalization`` [4, 4] maps capture -> normalized coordinates.
    ``sh_degree`` (default: from the number of ``shN`` bases) goes into a header comment. The material
    extras are written when ``params`` holds all of albedo, roughness, metallic and progress."""
    from plyfile import PlyData, PlyElement  # noqa: PLC0415

    sim = Similarity.from_matrix(normalization)
    n = params["means"].shape[0]
    k_rest = params["shN"].shape[1]
    degree = round(math.sqrt(k_rest + 1)) - 1
    if (degree + 1) ** 2 != k_rest + 1 or degree > 3:
        raise ValueError(f"shN must hold 0, 3, 8 or 15 bases per channel, got {k_rest}")
    # the file cannot claim more bands than the run holds
    sh_degree = degree if sh_degree is None else min(int(sh_degree), degree)
    cap = transform_gaussians(params, sim.inverse())
    normals = outward_normals(cap)  # [N, 3]
    shN = cap["shN"].float()  # [N, k_rest, 3]
    shN = torch.cat([shN, shN.new_zeros(n, SH_REST_BASES - k_rest, 3)], dim=1)  # [N, 15, 3]
    f_rest = shN.transpose(1, 2).reshape(n, 3 * SH_REST_BASES)  # channel-major: all R, all G, all B
    cols = [
        cap["means"].float(),
        normals,
        cap["sh0"].reshape(n, 3).float(),
        f_rest,
        cap["opacities"].reshape(n, 1).float(),
        cap["scales"].float(),
        cap["quats"].float(),
    ]
    materials = has_materials(params)
    if materials:
        cols += [_activated(params, k) for k in MATERIAL_NAMES]
    table = torch.cat(cols, dim=1).numpy().astype("<f4")  # [N, P]
    names = ply_property_names(materials)
    if table.shape[1] != len(names):
        raise AssertionError(f"{table.shape[1]} columns for {len(names)} properties")
    if not np.isfinite(table).all():
        raise ValueError(f"{path}: the Gaussians hold non-finite values; nothing written")
    rec = np.empty(n, dtype=[(name, "<f4") for name in names])
    for i, name in enumerate(names):
        rec[name] = table[:, i]
    comments = ["generated by invrender", f"sh_degree {sh_degree}"]
    buf = io.BytesIO()
    PlyData([PlyElement.describe(rec, "vertex")], text=False, byte_order="<", comments=comments).write(buf)
    return atomic_write_bytes(Path(path), buf.getvalue(), shared=True)


def read_gaussian_ply(path: Path, normalization=None) -> dict[str, Tensor]:
    """Read a 3DGS PLY (this module's, or any 3DGS-layout file) into the stored parameter layout:
    ``means`` [N, 3], ``scales`` [N, 3] log, ``quats`` [N, 4] wxyz, ``opacities`` [N] logit, ``sh0``
    [N, 1, 3], ``shN`` [N, K-1, 3] (trimmed to the header's ``sh_degree`` when it has one), plus
    the material logits ``albedo`` [N, 3], ``roughness`` / ``metallic`` / ``progress`` [N, 1]
    when the file has them, and with them ``normal_residual`` [N, 3] when its normals are not the
    Gaussians' shortest axes (a run trained with the residual normal). With ``normalization`` [4, 4] (capture -> normalized) the Gaussians are
    moved into the normalized frame, undoing what :func:`write_gaussian_ply` did. float32, CPU."""
    from plyfile import PlyData  # noqa: PLC0415

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PLY file {path} does not exist")
    try:
        ply = PlyData.read(str(path))
        v = ply["vertex"]
    except Exception as e:  # noqa: BLE001 - plyfile raises several types for a foreign file
        raise ValueError(f"{path}: not a readable PLY with a vertex element ({e})") from e
    names = {p.name for p in v.properties}
    required = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
                "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [r for r in required if r not in names]
    if missing:
        raise ValueError(f"{path}: not a 3DGS PLY (missing {', '.join(missing)})")

    def col(*keys: str) -> Tensor:
        return torch.from_numpy(np.stack([np.asarray(v[k], dtype=np.float32) for k in keys], axis=1))

    n = len(v.data)
    n_rest = sum(1 for p in v.properties if p.name.startswith("f_rest_"))
    if n_rest % 3:
        raise ValueError(f"{path}: {n_rest} f_rest properties, not a multiple of 3")
    k_rest = n_rest // 3
    rest = col(*[f"f_rest_{i}" for i in range(n_rest)]) if n_rest else torch.zeros(n, 0)
    shN = rest.reshape(n, 3, k_rest).transpose(1, 2).contiguous()  # [N, k_rest, 3]
    for c in ply.comments:
        parts = c.split()
        if len(parts) == 2 and parts[0] == "sh_degree" and parts[1].isdigit():
            shN = shN[:, : (int(parts[1]) + 1) ** 2 - 1].contiguous()
    params = {
        "means": col("x", "y", "z"),
        "scales": col("scale_0", "scale_1", "scale_2"),
        "quats": col("rot_0", "rot_1", "rot_2", "rot_3"),
        "opacities": col("opacity")[:, 0].contiguous(),
        "sh0": col("f_dc_0", "f_dc_1", "f_dc_2")[:, None, :].contiguous(),
        "shN": shN,
    }
    mat_cols = {"albedo": ("albedo_0", "albedo_1", "albedo_2"), "roughness": ("roughness",),
                "metallic": ("metallic",), "progress": ("progress",)}
    if all(k in names for keys in mat_cols.values() for k in keys):
        for name, keys in mat_cols.items():
            params[name] = torch.logit(col(*keys).double().clamp(_EPS, 1 - _EPS)).float()
        if all(k in names for k in ("nx", "ny", "nz")):
            # the residual that turns each shortest axis into the written normal (normalize(axis +
            # (n - axis)) = n), when some normal is not its axis; a normal of zero length (a file
            # from elsewhere) keeps the axis
            n, axes = col("nx", "ny", "nz").double(), _shortest_axes(params)
            ok = n.norm(dim=-1, keepdim=True) > 0.5
            if bool(((n * axes).sum(-1).abs() < 1 - 1e-4)[ok[:, 0]].any()):
                params[NORMAL_RESIDUAL] = torch.where(ok, n - axes, 0.0).float()
    if normalization is not None:
        params = transform_gaussians(params, Similarity.from_matrix(normalization))
    return params
