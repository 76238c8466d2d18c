"""Train the three presets (prd, pbr, radiance) on one capture and print the table of PRD's two
claims: prd relights better than pbr, and its novel views stay within 0.5 dB of radiance.

Stage 1 (radiance pre-training) does not depend on the preset, so by default it is trained once
and each preset resumes from its last checkpoint: ``--resume`` is bit-for-bit, so this gives the
same numbers as three full runs in a third of the stage-1 time (``--no-share-stage1`` trains each
preset from scratch).

    python scripts/compare_presets.py --data data/toybox --out runs/presets [-- extra train args]

Writes ``OUT/<preset>/`` run folders, ``OUT/presets.json`` and ``OUT/presets.md``. A preset whose
run folder already holds ``metrics.json`` is not trained again; ``--stage1-ckpt`` seeds the presets
from an existing stage-1 checkpoint (e.g. ``runs/toybox/checkpoints/ckpt_005000.pt`` of a run
trained with ``--keep-checkpoints`` large enough to keep it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

PRESETS = ("prd", "pbr", "radiance")


def _train(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "invrender.cli", "train", *args], check=True)
    return time.perf_counter() - t0


def _row(name: str, m: dict, seconds: float | None) -> str:
    def f(x, d=2):
        return "–" if x is None else f"{x:.{d}f}"

    rl = (m.get("relight_psnr") or {}).get("mean")
    rlo = (m.get("relight_psnr_obj") or {}).get("mean")
    grey = (m.get("grey_baseline_relight_psnr_obj") or {}).get("mean")
    return (f"| {name} | {f(m['nvs_psnr'])} | {f(m['nvs_psnr_obj'])} | {f(rl)} | {f(rlo)} | {f(grey)} | "
            f"{f(m.get('albedo_psnr_obj'))} | {f(m.get('normal_mae_deg'), 1)} | {f(m.get('progress_mean'), 3)} | "
            f"{'–' if seconds is None else f'{seconds / 60:.1f}'} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data/toybox"))
    ap.add_argument("--out", type=Path, default=Path("runs/presets"))
    ap.add_argument("--no-share-stage1", action="store_true", help="train stage 1 separately for each preset")
    ap.add_argument("--stage1-ckpt", type=Path, default=None, help="seed every preset from this stage-1 checkpoint")
    ap.add_argument("extra", nargs="*", help="more `invrender train` arguments (after --)")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    base = ["--data", str(a.data), "--no-progress", *a.extra]
    times: dict[str, float] = {}
    stage1_s = 0.0
    if not a.no_share_stage1:
        s1 = a.out / "stage1"
        if a.stage1_ckpt is not None:
            (s1 / "checkpoints").mkdir(parents=True, exist_ok=True)
            shutil.copy(a.stage1_ckpt, s1 / "checkpoints" / a.stage1_ckpt.name)
        elif not (s1 / "checkpoints").exists():
            # every distillation stage set to zero length: the run is exactly stage 1
            stage1_s = _train([*base, "--out", str(s1), "--distill.specular-steps", "0", "--distill.diffuse-steps", "0",
                               "--distill.joint-steps", "0", "--no-eval-at-end"])
        ckpts = sorted((s1 / "checkpoints").glob("ckpt_*.pt"))
        for preset in PRESETS:
            run = a.out / preset
            (run / "checkpoints").mkdir(parents=True, exist_ok=True)
            if not any((run / "checkpoints").glob("ckpt_*.pt")):
                shutil.copy(ckpts[-1], run / "checkpoints" / ckpts[-1].name)
    for preset in PRESETS:
        run = a.out / preset
        if (run / "metrics.json").exists():
            print(f"{run}: already trained, reusing its metrics.json")
            continue
        extra = [] if a.no_share_stage1 else ["--resume"]
        times[preset] = _train([*base, "--out", str(run), "--preset", preset, *extra]) + stage1_s
    metrics = {p: json.loads((a.out / p / "metrics.json").read_text()) for p in PRESETS}
    lines = [
        "| preset | NVS PSNR | NVS PSNR obj | relight PSNR | relight PSNR obj | grey baseline obj | albedo PSNR obj "
        "| normal MAE ° | progress | train min |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *[_row(p, metrics[p], times.get(p)) for p in PRESETS],
    ]
    table = "\n".join(lines)
    prd, pbr, rad = (metrics[p] for p in PRESETS)
    claims = (
        f"\nprd - pbr mean relight PSNR (obj): "
        f"{prd['relight_psnr_obj']['mean'] - pbr['relight_psnr_obj']['mean']:+.2f} dB (whole: "
        f"{prd['relight_psnr']['mean'] - pbr['relight_psnr']['mean']:+.2f} dB)\n"
        f"prd - radiance NVS PSNR: {prd['nvs_psnr'] - rad['nvs_psnr']:+.2f} dB (obj: "
        f"{prd['nvs_psnr_obj'] - rad['nvs_psnr_obj']:+.2f} dB)\n"
    )
    print(table + "\n" + claims)
    (a.out / "presets.md").write_text(table + "\n" + claims)
    (a.out / "presets.json").write_text(json.dumps({"times_s": times, "shared_stage1": not a.no_share_stage1,
                                                    "metrics": {p: {k: v for k, v in m.items() if k != "per_view"}
                                                                for p, m in metrics.items()}}, indent=2))


if __name__ == "__main__":
    main()
