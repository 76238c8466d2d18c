"""Rendering a trained run's views and measuring them against the capture.

Protocol: images are compared in display space (sRGB), composited on the run's background (white
for synthetic captures, as papers report). Each PSNR is given twice: over the whole image and over
object pixels only (ground-truth alpha > 0.5), because a white background inflates the
whole-image figure. PSNR and SSIM are means over views. LPIPS is reported only when the ``lpips``
package and its backbone weights are already on the machine; otherwise ``lpips`` is ``null`` and
``lpips_note`` says why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from invrender.checkpoint import atomic_write_bytes, latest_checkpoint, load_checkpoint
from invrender.color import linear_to_srgb
from invrender.metrics import LPIPSUnavailable, load_lpips, lpips_score, psnr, ssim
from invrender.splat.gaussians import num_gaussians, render_view
from invrender.train import background_color, resolve_background


@dataclass
class LoadedRun:
    run_dir: Path
    step: int
    params: dict[str, Tensor]
    meta: dict


def load_run(run_dir: Path, device: str | torch.device = "cpu") -> LoadedRun:
    """The newest checkpoint of a run folder; a clear error when there is none."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"run folder {run_dir} holds no checkpoints/ckpt_*.pt (was training started?)")
    sd = load_checkpoint(ckpt)
    params = {k: v.to(device) for k, v in sd["params"].items()}
    return LoadedRun(run_dir, int(sd["step"]), params, sd["meta"])


def _load_split(run: LoadedRun, split: str, data: Path | None = None):
    from invrender.data import load_scene  # noqa: PLC0415

    scene = load_scene(data or run.meta["data"], downscale=run.meta.get("downscale", 1), splits=(split,))
    views = getattr(scene, split, None)
    if views is None:
        raise ValueError(f"split '{split}' not found in {scene.root} (choose train or test)")
    return scene, views


@torch.no_grad()
def render_views(run: LoadedRun, views, backend: str = "auto"):
    """Yield (name, premultiplied display rgb [H, W, 3], alpha [H, W, 1]) per view."""
    sh = run.meta["sh_degree"]
    for i, name in enumerate(views.names):
        out = render_view(run.params, views.viewmats[i], views.Ks[i], views.width, views.height, sh, None, backend)
        yield name, out.rgb, out.alpha


def straight_rgba(rgb: Tensor, alpha: Tensor) -> Tensor:
    """Premultiplied colour + alpha -> straight RGBA [H, W, 4] in [0, 1] (what PNG viewers expect)."""
    straight = torch.where(alpha > 1e-6, rgb / alpha.clamp(min=1e-6), torch.zeros_like(rgb))
    return torch.cat([straight.clamp(0, 1), alpha.clamp(0, 1)], dim=-1)


def render_split(run_dir: Path, out_dir: Path, split: str = "test", backend: str = "auto") -> list[Path]:
    """``invrender render``: one RGBA PNG per view, named after the view."""
    from invrender.image_io import write_png  # noqa: PLC0415

    run = load_run(run_dir)
    _, views = _load_split(run, split)
    out_dir = Path(out_dir)
    paths = []
    for name, rgb, alpha in render_views(run, views, backend):
        path = out_dir / f"{name}.png"
        write_png(path, straight_rgba(rgb, alpha).numpy())
        paths.append(path)
    return paths


def evaluate_run(
    run_dir: Path,
    out_json: Path | None,
    split: str = "test",
    backend: str = "auto",
    renders_dir: Path | None = None,
) -> dict:
    """``invrender eval``: novel-view metrics of a run on a split; writes ``out_json`` atomically
    and the renders (RGBA PNGs) under ``run_dir/renders/<split>`` unless ``renders_dir`` says otherwise."""
    from invrender.image_io import write_png  # noqa: PLC0415

    run = load_run(run_dir)
    scene, views = _load_split(run, split)
    kind = resolve_background(run.meta.get("background", "white"), scene.white_background)
    bg = background_color(kind, "cpu")
    renders_dir = Path(renders_dir) if renders_dir is not None else Path(run_dir) / "renders" / split
    try:
        lpips_model, lpips_note = load_lpips(), None
    except LPIPSUnavailable as e:
        lpips_model, lpips_note = None, str(e)

    per_view = []
    for i, (name, rgb, alpha) in enumerate(render_views(run, views, backend)):
        gt_a = views.alphas[i]  # [H, W, 1]
        gt = linear_to_srgb(views.images[i]) * gt_a + bg * (1 - gt_a)
        pred = (rgb + (1 - alpha) * bg).clamp(0, 1)
        rec = {
            "view": name,
            "psnr": psnr(pred, gt),
            "psnr_obj": psnr(pred, gt, gt_a[..., 0] > 0.5),
            "ssim": float(ssim(pred, gt)),
        }
        if lpips_model is not None:
            rec["lpips"] = lpips_score(lpips_model, pred, gt)
        per_view.append(rec)
        write_png(renders_dir / f"{name}.png", straight_rgba(rgb, alpha).numpy())

    def mean(key):
        vals = [r[key] for r in per_view if key in r and r[key] == r[key]]
        return sum(vals) / len(vals) if vals else None

    metrics = {
        "split": split,
        "step": run.step,
        "n_views": len(per_view),
        "n_gaussians": num_gaussians(run.params),
        "nvs_psnr": mean("psnr"),
        "nvs_psnr_obj": mean("psnr_obj"),
        "nvs_ssim": mean("ssim"),
        "lpips": mean("lpips"),
        "lpips_note": lpips_note,
        "per_view": per_view,
    }
    if out_json is not None:
        atomic_write_bytes(Path(out_json), json.dumps(metrics, indent=2).encode())
    return metrics
