"""``invrender export``: one trained run to one asset file, in the capture's original frame.

=========  =====================================================  ==============================
format     what                                                   needs
=========  =====================================================  ==============================
``glb``    textured mesh, glTF 2.0 binary (:mod:`.gltf`)          ``RUN/mesh/textured_mesh.pt``
``obj``    textured mesh, OBJ + MTL + PNGs (:mod:`.obj`)          ``RUN/mesh/textured_mesh.pt``
``ply``    Gaussian splats, 3DGS layout + materials (:mod:`.ply`)  any checkpoint
``envmap`` learned light, equirectangular .hdr / .exr             a checkpoint from stage 2 on
=========  =====================================================  ==============================

The output suffix is checked before anything is read, the output folder (made if missing) before
anything is written; every mistake ends in one line naming the path.
"""

from __future__ import annotations

from pathlib import Path

import torch

from invrender.export.common import prepare_output

FORMATS = ("glb", "obj", "ply", "envmap")
SUFFIXES = {"glb": (".glb",), "obj": (".obj",), "ply": (".ply",), "envmap": (".hdr", ".exr")}
WHAT = {"glb": "a glTF binary", "obj": "an OBJ mesh", "ply": "Gaussian splats", "envmap": "an environment map"}


def run_normalization(meta: dict) -> torch.Tensor:
    """The reader's normalization [4, 4] (capture -> normalized) of a run: stored in the checkpoint's
    meta by the trainer; for runs from before that, read again from the dataset (cameras only)."""
    if "normalization" in meta:
        return torch.tensor(meta["normalization"], dtype=torch.float64)
    from invrender.data import load_scene  # noqa: PLC0415

    if "data" not in meta:
        raise ValueError("the run's checkpoint records neither its normalization nor its dataset")
    return load_scene(meta["data"], splits=("train",), load_gt=False).normalization.double()


def _load_mesh(run_dir: Path):
    from invrender.mesh.textured import TexturedMesh, mesh_path  # noqa: PLC0415

    path = mesh_path(run_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"run {run_dir} has no mesh ({path} is missing); train with the mesh stage (--mesh.enable) to make one"
        )
    return TexturedMesh.load(path)


def export_run(run_dir: Path, fmt: str, out: Path, *, envmap_height: int = 256, up: str = "z",
               glb_prd: bool = True) -> list[Path]:
    """Export ``run_dir`` as ``fmt`` (one of :data:`FORMATS`) to ``out``; returns the files written
    (the main file last). ``envmap_height``: rows of the equirectangular map (width = 2 x height).
    ``up``: the capture's up axis, for glTF's +Y-up world (see :mod:`invrender.export.gltf`);
    ``glb_prd``: write the glb's ``INVRENDER_materials_prd`` extension."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r} (choose one of: {', '.join(FORMATS)})")
    run_dir, out = Path(run_dir), Path(out)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    if fmt == "envmap" and int(envmap_height) < 2:
        raise ValueError(f"--envmap-height must be at least 2, got {envmap_height}")
    if out.suffix.lower() not in SUFFIXES[fmt]:  # before any loading: the cheapest mistake to report
        raise ValueError(f"{WHAT[fmt]} must be written to a {' or '.join(SUFFIXES[fmt])} file, got {out}")
    # read everything before touching the output folder, so that a failed export leaves nothing
    # behind and an OSError in the writing below is about ``out``
    if fmt in ("glb", "obj"):
        mesh = _load_mesh(run_dir)
    else:
        from invrender.eval import load_run  # noqa: PLC0415

        run = load_run(run_dir)
        normalization = run_normalization(run.meta)
        if fmt == "envmap" and run.light is None:
            raise ValueError(
                f"run {run_dir} has no learned light (it stopped before the material stages); "
                "there is no environment map to export"
            )
    prepare_output(out, SUFFIXES[fmt], WHAT[fmt])
    try:
        if fmt == "glb":
            from invrender.export.gltf import write_glb  # noqa: PLC0415

            return [write_glb(out, mesh, up=up, prd=glb_prd)]
        if fmt == "obj":
            from invrender.export.obj import write_obj  # noqa: PLC0415

            return write_obj(out, mesh)
        if fmt == "ply":
            from invrender.export.ply import write_gaussian_ply  # noqa: PLC0415

            return [write_gaussian_ply(out, run.params, normalization, sh_degree=run.meta.get("sh_degree"))]
        from invrender.export.envmap import write_envmap  # noqa: PLC0415

        return [write_envmap(out, run.light, normalization, envmap_height)]
    except OSError as e:
        # the checks above passed but the file system still refused (read-only file in the way, disk full)
        raise ValueError(f"cannot write {out}: {e.strerror or e}") from e
