#!/usr/bin/env python
"""Fit the two-tap specular table shipped as ``invrender/shading/specular_taps.json``.

Per (n.v, roughness) cell, the blend g_k, roughness r_k and weight w_k of two prefiltered lookups
whose lobes sum closest (L2) to the true lobe D V (n.l); see :mod:`invrender.shading.specular_taps`
for the model and the fitting order. Deterministic (one thread, fixed order, fixed starts); ~10 s
on one core.

    python scripts/fit_specular_taps.py              # rewrite the shipped table
    python scripts/fit_specular_taps.py --out /tmp/taps.json --verbose
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from invrender.shading import specular_taps as S  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=S.TABLE_PATH, help="where to write the table (JSON)")
    ap.add_argument("--verbose", action="store_true", help="print every cell's fit")
    args = ap.parse_args()
    torch.set_num_threads(1)  # deterministic reductions
    t0 = time.perf_counter()
    table, err = S.fit_table(log=print if args.verbose else None)
    S.save_table(table, err, args.out)
    # the single dominant-direction lookup, for comparison
    single = torch.zeros_like(err)
    for i, r in enumerate(S.roughness_nodes().tolist()):
        s = float(S.dominant_blend(torch.tensor(r)))
        for j, nv in enumerate(S.nv_nodes().tolist()):
            single[i, j] = S.lobe_error(S.Quadrature(nv), r, [s, r, s, r, 0.5])
    print(f"fitted {err.numel()} cells in {time.perf_counter() - t0:.1f} s -> {args.out}")
    print(f"relative lobe error: two taps mean {float(err.mean()):.3f} max {float(err.max()):.3f}; "
          f"single dominant-direction lookup mean {float(single.mean()):.3f} max {float(single.max()):.3f}")


if __name__ == "__main__":
    main()
