"""Where a trained run's relighting loses its decibels: each G-buffer channel swapped for the truth.

Renders the run's test views (its physically based G-buffer, the evaluation's albedo scale, its
baked visibility) and relights them under every ``envmaps/<env>`` of the capture with
:func:`invrender.shading.shade.shade`, first as learned, then with the true albedo, the true
roughness and metallic, the true normals, all true materials, and everything true (our geometry's
coverage and visibility kept). Scores are ``invrender eval``'s object-pixel relighting PSNR, also
split into metal and dielectric pixels (true metallic > 0.5), with the mean brightness against the
reference and the normal error per class. A row that gains much over "learned" names the channel
to work on; "everything true" is the ceiling of the shading model on this geometry (compare
``scripts/relight_ceiling.py``, which also replaces the geometry and has no visibility). Each map
is rendered natively, so the diffuse visibility is the one the evaluation relights with (sharp
shadows and the traced bounce when the run has them). A run trained with traced reflections has
them traced here too, along each row's normals, through its Gaussians lit by each map.

The PRD blend's radiance part is left out (blend ``pbr``): relit, it only rescales the same
physically based colour, so the learned row is within a few hundredths of a dB of
``invrender eval``'s figure for runs whose progress is high and a lower bound otherwise.

    python scripts/relight_breakdown.py --run runs/toybox [--views-every 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

ROWS = {
    "learned": (),
    "true albedo": ("albedo",),
    "true roughness + metallic": ("roughness", "metallic"),
    "true normals": ("normal",),
    "true materials": ("albedo", "roughness", "metallic"),
    "everything true": ("albedo", "roughness", "metallic", "normal"),
}


def main() -> None:
    import torch.nn.functional as F

    from invrender.cameras import pixel_rays
    from invrender.distill.reflection import reflection_image, surface_points
    from invrender.eval import (
        _load_split, _Mips, albedo_alignment_scale, composite_display, find_envmaps, load_run, render_run_view,
    )
    from invrender.metrics import psnr
    from invrender.relight import load_envmap_light
    from invrender.shading.shade import shade

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a trained run folder (stages 2-4 done)")
    ap.add_argument("--views-every", type=int, default=1, help="use every k-th test view")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()

    run = load_run(a.run)
    if not run.has_materials or run.light is None:
        raise SystemExit(f"{a.run}: the run has no materials or light (train stages 2-4 first)")
    scene, views = _load_split(run, "test")
    gt = views.gt
    need = ("albedo", "roughness", "metallic", "normal")
    missing = [k for k in need if k not in gt]
    if missing:
        raise SystemExit(f"{scene.root}: test views lack ground-truth {', '.join(missing)} maps")
    maps, note = find_envmaps(views, scene, None)
    if not maps:
        raise SystemExit(f"{scene.root}: nothing to relight with: {note}")
    envs = list(maps)
    mips = _Mips()(run.light.resolution)
    lights = {e: load_envmap_light(path, run.light.resolution) for e, path in maps.items()}
    bg = torch.ones(3) if scene.white_background else torch.zeros(3)
    idx = list(range(0, len(views), a.views_every))
    scores = {r: {"all": [], "dielectric": [], "metal": [], "brightness": []} for r in ROWS}
    normal_err = {"dielectric": [], "metal": []}
    with torch.no_grad():
        # the evaluation's albedo scale, from the same views
        first = [render_run_view(run, views, i, blend="radiance") for i in idx]
        objs = [gt[f"rgba_{envs[0]}"][i][..., 3] > 0.5 for i in idx]
        pred = torch.cat([o.gbuffer.albedo[m] for o, m in zip(first, objs)])
        ref = torch.cat([gt["albedo"][i][m] for i, m in zip(idx, objs)])
        scale = albedo_alignment_scale(pred, ref)
        learned = run.light
        for env in envs:
            # the run rendered natively under the map, so that its G-buffer's diffuse visibility is
            # that map's (sharp shadows, traced bounce, as the evaluation relights)
            run.light = lights[env]
            grid = run.reflection_grid(lights[env], scale)  # a run trained with traced reflections
            for k, i in enumerate(idx):
                o = render_run_view(run, views, i, blend="pbr", mips=mips, albedo_scale=scale)
                g0, obj = o.gbuffer, objs[k]
                metal = gt["metallic"][i][..., 0] > 0.5
                classes = {"all": obj, "dielectric": obj & ~metal, "metal": obj & metal}
                if env == envs[0]:
                    cos = (F.normalize(g0.normal, dim=-1) * F.normalize(gt["normal"][i], dim=-1)).sum(-1).clamp(-1, 1)
                    ang = torch.rad2deg(torch.acos(cos))
                    for c in ("dielectric", "metal"):
                        if int(classes[c].sum()) > 20:
                            normal_err[c].append(float(ang[classes[c]].mean()))
                d = pixel_rays(views.Ks[i], views.width, views.height) @ views.viewmats[i][:3, :3]
                points = surface_points(o.depth, views.Ks[i], views.viewmats[i])
                rgba = gt[f"rgba_{env}"][i]
                ga = rgba[..., 3:]
                for row, swap in ROWS.items():
                    g = dataclasses.replace(g0, **{ch: gt[ch][i] for ch in swap})
                    if grid is not None:  # the mirror rays of this row's normals, lit by this map
                        g = dataclasses.replace(g, reflection=reflection_image(grid, points, g.normal, d, g.alpha))
                    sh = shade(g, lights[env], d, mips=mips)
                    out = (sh.pbr * ga + (1 - ga) * bg).clamp(0, 1)
                    want = composite_display(rgba[..., :3], ga, bg)
                    for c, sel in classes.items():
                        if int(sel.sum()) > 20:
                            scores[row][c].append(psnr(out, want, sel))
                    scores[row]["brightness"].append(float(sh.pbr_linear[obj].mean() / rgba[..., :3][obj].mean()))
        run.light = learned

    def mean(v):
        return sum(v) / len(v) if v else float("nan")

    table = {row: {c: mean(v) for c, v in s.items()} for row, s in scores.items()}
    print(f"run {a.run}, {len(idx)} test views x {len(envs)} maps, object pixels (blend pbr)")
    print("| G-buffer | relight PSNR obj | dielectric px | metal px | brightness / reference |")
    print("|---|---|---|---|---|")
    for row, v in table.items():
        print(f"| {row} | {v['all']:.2f} | {v['dielectric']:.2f} | {v['metal']:.2f} | {v['brightness']:.3f} |")
    ne = {c: mean(v) for c, v in normal_err.items()}
    print(f"normal error: dielectric {ne['dielectric']:.1f} deg, metal {ne['metal']:.1f} deg")
    if a.json:
        a.json.write_text(json.dumps({"rows": table, "normal_error_deg": ne, "albedo_scale": scale.tolist()}, indent=2))


if __name__ == "__main__":
    main()
