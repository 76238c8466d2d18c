"""Relighting PSNR of the exported GLB against the trained mesh stage's own renders.

    python scripts/export_roundtrip.py --run runs/toybox [--max-views 24] [--out result.json]

Writes the run's mesh as GLB, reads it back with ``invrender.export.gltf.read_glb`` (8-bit textures,
no progress / radiance / baked visibility: only what a glTF viewer gets), relights the test views
under every map with ground truth, and prints both object-pixel PSNRs and their difference (the
issue's target: within 1.5 dB).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from invrender.export.check import glb_roundtrip_relight


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="run folder with a mesh stage (RUN/mesh/textured_mesh.pt)")
    ap.add_argument("--max-views", type=int, default=None, help="use only the first N test views")
    ap.add_argument("--out", type=Path, default=None, help="also write the result as JSON here")
    args = ap.parse_args()
    res = glb_roundtrip_relight(args.run, args.max_views)
    print(f"relight PSNR, object pixels, {res['views']} test views ({res['glb_bytes'] / 1e6:.1f} MB GLB)")
    print(f"{'map':10s} {'trained mesh':>13s} {'exported GLB':>13s}")
    for env in res["envs"] + ["mean"]:
        print(f"{env:10s} {res['trained'][env]:13.2f} {res['exported'][env]:13.2f}")
    print(f"difference (trained - exported): {res['difference_db']:+.2f} dB (target: within 1.5 dB)")
    if args.out:
        args.out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
