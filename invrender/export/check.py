"""Does the exported asset relight like the trained one? ``glb_roundtrip_relight`` writes the mesh
stage's GLB, reads it back twice with :func:`invrender.export.gltf.read_glb` and renders each with
the project's mesh path under the dataset's relighting maps:

- ``exported``: everything the file holds, its ``INVRENDER_materials_prd`` extension included
  (progress, radiance, radiance SH, shadowing record), rendered with the run's blend: the file as
  invrender opens it again;
- ``viewer``: the core glTF material alone (8-bit textures, occlusion texture, no progress or
  radiance), rendered as the ``pbr`` blend: what any other glTF viewer gets.

Each is compared, by its relighting PSNR on object pixels, with the trained mesh stage's own
relit renders, all against the ground truth."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import torch


@torch.no_grad()
def glb_roundtrip_relight(run_dir: Path, max_views: int | None = None, backend: str = "auto") -> dict:
    """``{"envs": [...], "trained": {env: psnr_obj, "mean"}, "exported": {...}, "viewer": {...},
    "difference_db": mean trained - mean exported, "viewer_difference_db": mean trained - mean
    viewer, "glb_bytes": size}`` over the test views (the first ``max_views``)."""
    from invrender.eval import _load_split, _Mips, composite_display, find_envmaps, load_run, render_run_view  # noqa: PLC0415
    from invrender.export.gltf import read_glb, write_glb  # noqa: PLC0415
    from invrender.export.run import run_normalization  # noqa: PLC0415
    from invrender.metrics import psnr  # noqa: PLC0415
    from invrender.relight import load_envmap_light  # noqa: PLC0415
    from invrender.train import background_color, resolve_background  # noqa: PLC0415

    run = load_run(run_dir, geometry="mesh")
    scene, views = _load_split(run, "test")
    maps, note = find_envmaps(views, scene, None)
    if not maps:
        raise ValueError(f"run {run_dir}: no relighting ground truth to compare with ({note})")
    with tempfile.TemporaryDirectory() as tmp:
        glb = write_glb(Path(tmp) / "mesh.glb", run.mesh)
        size = glb.stat().st_size
        exported = read_glb(glb, run_normalization(run.meta))
        viewer = read_glb(glb, run_normalization(run.meta), prd=False)
    # read back, the asset renders through the same run otherwise; a viewer's copy as the pbr blend
    assets = {"exported": dataclasses.replace(run, mesh=exported),
              "viewer": dataclasses.replace(run, mesh=viewer, blend="pbr")}
    bg = background_color(resolve_background(run.meta.get("background", "white"), scene.white_background), "cpu")
    n = len(views) if max_views is None else min(max_views, len(views))
    mips = _Mips()
    scores = {"trained": {}, "exported": {}, "viewer": {}}
    for env, path in maps.items():
        light = load_envmap_light(path, run.light_resolution)
        m = mips(light.resolution)
        per = {key: [] for key in scores}
        for i in range(n):
            rgba = views.gt[f"rgba_{env}"][i]
            ga = rgba[..., 3:]
            gt = composite_display(rgba[..., :3], ga, bg)
            obj = ga[..., 0] > 0.5
            for key, r in (("trained", run), *assets.items()):
                out = render_run_view(r, views, i, light, mips=m, backend=backend)
                per[key].append(psnr((out.final + (1 - out.alpha) * bg).clamp(0, 1), gt, obj))
        for key in per:
            scores[key][env] = sum(per[key]) / len(per[key])
    for key in scores:
        scores[key]["mean"] = sum(scores[key][e] for e in maps) / len(maps)
    return {"envs": list(maps), **scores, "difference_db": scores["trained"]["mean"] - scores["exported"]["mean"],
            "viewer_difference_db": scores["trained"]["mean"] - scores["viewer"]["mean"], "glb_bytes": size,
            "views": n}
