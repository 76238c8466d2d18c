"""The ceiling of the shading model on a capture's relighting ground truth.

Shades every test view with the *true* albedo, roughness, metallic and normal maps of the dataset
(no learning, no Gaussians) through :func:`invrender.shading.shade.shade` under each environment
map, and compares with the dataset's relit images on object pixels (GT alpha > 0.5), exactly as
``invrender eval`` does. What is left is what the model itself cannot represent: cast shadows,
inter-reflections, specular occlusion. A trained run cannot beat these figures except through the
radiance part of the PRD blend, which carries the training light only.

    python scripts/relight_ceiling.py --data data/toybox [--views-every 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main() -> None:
    from invrender.cameras import pixel_rays
    from invrender.data import load_scene
    from invrender.eval import composite_display, find_envmaps
    from invrender.metrics import psnr
    from invrender.relight import load_envmap_light
    from invrender.shading.prefilter import SpecularMips
    from invrender.shading.shade import GBuffer, shade

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data/toybox"))
    ap.add_argument("--light-resolution", type=int, default=128)
    ap.add_argument("--views-every", type=int, default=1, help="use every k-th test view")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()

    scene = load_scene(a.data, splits=("test",))
    views, gt = scene.test, scene.test.gt
    need = ("albedo", "roughness", "metallic", "normal")
    missing = [k for k in need if k not in gt]
    if missing:
        raise SystemExit(f"{a.data}: test views lack ground-truth {', '.join(missing)} maps")
    maps, note = find_envmaps(views, scene, None)
    if not maps:
        raise SystemExit(f"{a.data}: nothing to relight with: {note}")
    mips = SpecularMips(a.light_resolution)
    bg = torch.ones(3) if scene.white_background else torch.zeros(3)
    out: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        for env, path in maps.items():
            light = load_envmap_light(path, a.light_resolution)
            rec = {"psnr_obj": [], "psnr_obj_dielectric": [], "psnr_obj_metal": [], "brightness_ratio": []}
            for i in range(0, len(views), a.views_every):
                K, vm = views.Ks[i], views.viewmats[i]
                d = pixel_rays(K, views.width, views.height) @ vm[:3, :3]  # [H, W, 3] world, unnormalized
                rgba = gt[f"rgba_{env}"][i]
                ga = rgba[..., 3:]
                obj = ga[..., 0] > 0.5
                g = GBuffer(albedo=gt["albedo"][i], roughness=gt["roughness"][i], metallic=gt["metallic"][i],
                            normal=gt["normal"][i], alpha=ga)
                sh = shade(g, light, d, mips=mips)
                pred = (sh.pbr * ga + (1 - ga) * bg).clamp(0, 1)
                ref = composite_display(rgba[..., :3], ga, bg)
                rec["psnr_obj"].append(psnr(pred, ref, obj))
                metal = gt["metallic"][i][..., 0] > 0.5
                for key, sel in (("psnr_obj_dielectric", obj & ~metal), ("psnr_obj_metal", obj & metal)):
                    if int(sel.sum()) > 20:
                        rec[key].append(psnr(pred, ref, sel))
                rec["brightness_ratio"].append(float(sh.pbr_linear[obj].mean() / rgba[..., :3][obj].mean()))
            out[env] = {k: sum(v) / len(v) for k, v in rec.items() if v}
    mean = sum(v["psnr_obj"] for v in out.values()) / len(out)
    print("| env | PSNR obj | dielectric px | metal px | ours / reference brightness |")
    print("|---|---|---|---|---|")
    for env, v in out.items():
        print(f"| {env} | {v['psnr_obj']:.2f} | {v.get('psnr_obj_dielectric', float('nan')):.2f} | "
              f"{v.get('psnr_obj_metal', float('nan')):.2f} | {v['brightness_ratio']:.3f} |")
    print(f"| mean | {mean:.2f} | | | |")
    if a.json:
        a.json.write_text(json.dumps({"per_env": out, "mean_psnr_obj": mean}, indent=2))


if __name__ == "__main__":
    main()
