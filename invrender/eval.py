"""Rendering a trained run's views and measuring them against the capture.

Every image goes through :func:`invrender.distill.model.render_prd` with the run's own blend
(``prd``, ``pbr``, ``radiance`` or ``specular``, from the checkpoint's meta), so what is measured is
what the run shows. Runs that stopped before the materials exist (stage 1) render with blend
``radiance``; they get neutral stand-in materials (:func:`prd_params`) that the blend never looks at.

Protocol (all means are over views unless said otherwise; "object pixels" are ground-truth
alpha > 0.5, and each PSNR is given over the whole image and over object pixels only, because a
white background inflates the whole-image figure):

- **Novel views** (``nvs_*``): display space (sRGB), composited on the run's background (white for
  synthetic captures, as papers report); PSNR, SSIM, and LPIPS when the ``lpips`` package and its
  backbone weights are already on the machine (else ``lpips`` is ``null`` and ``lpips_note`` says why).
- **Albedo** (``albedo_*``): the rendered albedo is aligned to the ground truth by one scale per
  channel, ``s_c = median over the object pixels of all views of gt_c / max(pred_c, 1e-6)``
  (TensoIR's protocol: albedo is only recoverable up to the light's colour and intensity), then
  ``clamp(pred * s, 0, 1)``. Both are compared in sRGB display space, composited on the background
  with their own alpha (whole image) or on object pixels (``_obj``). The median runs on at most
  :data:`ALBEDO_SAMPLES` pixel pairs (every k-th object pixel), which bounds memory on large captures.
- **Relighting** (``relight_*``): each test view rendered under each environment map that has
  ``rgba_<env>`` ground truth, the light built from the map at the run's light resolution, with the
  albedo scale above; the ground truth (linear colour + alpha) is sRGB-encoded and composited on
  the run's background. A dict ``env -> mean over views`` plus ``mean`` over environments. For a
  radiance-only run the blend ignores the light, so its relit images equal its radiance: that is
  the honest number for such a run.
- **Grey baseline** (``grey_baseline_relight_psnr_obj``): the same relighting of the trained
  geometry with every material replaced by albedo 0.5, roughness 0.5, metallic 0, blend ``pbr``
  and no albedo scale; a floor that a material estimate should beat.
- **Geometry and materials**: ``normal_mae_deg`` (angle between the normalized rendered normal and
  the ground truth), ``roughness_mae``, ``metallic_mae`` and ``progress_mean`` (the rendered
  progress map, with the preset's fixed value where the preset holds it), over object pixels.

A metric whose ground truth or materials are missing is ``null`` and its ``*_note`` says why
(notes are ``null`` when the metric is there). Besides ``metrics.json``, :func:`evaluate_run` writes
the renders, and under ``RUN/eval/`` one comparison grid per quantity (rows: the first
:data:`GRID_VIEWS` views; columns: ground truth | ours | abs error x 4), the progress maps and
``metrics.md``, a short table of the main figures. Every file is written atomically.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from invrender.checkpoint import atomic_write_bytes, latest_checkpoint, load_checkpoint
from invrender.color import linear_to_srgb
from invrender.distill.model import MATERIAL_NAMES, PRDRender, material_params, render_prd
from invrender.metrics import LPIPSUnavailable, load_lpips, lpips_score, psnr, ssim
from invrender.shading.light import EnvironmentLight
from invrender.shading.shadowing import DirectionalShadows
from invrender.splat.gaussians import num_gaussians
from invrender.mesh.textured import TexturedMesh
from invrender.train import background_color, resolve_background

GRID_VIEWS = 3  # views shown in each comparison grid
ERROR_GAIN = 4.0  # abs error is shown x 4 in the grids
ALBEDO_SAMPLES = 1 << 22  # at most this many object pixels feed the albedo median
GREY_MATERIAL = {"albedo": 0.5, "roughness": 0.5, "metallic": 0.0, "progress": 1.0}
DEFAULT_LIGHT_RESOLUTION = 128


REFLECTION_GRIDS_KEPT = 6  # lit grids a loaded run keeps (the learned light, the relight maps, the viewer's)


@dataclass
class LoadedRun:
    run_dir: Path
    step: int
    params: dict[str, Tensor]
    """The Gaussians as stored (material logits only once stage 2 started)."""
    meta: dict
    light: EnvironmentLight | None = None
    """The learned environment (None before stage 2)."""
    visibility: Tensor | None = None  # [N, 1] ambient or [N, 2K+1] shadowing record (None before stage 2)
    blend: str = "radiance"
    """How the run renders (:data:`invrender.distill.model.BLEND_MODES`)."""
    shadows: DirectionalShadows | None = None
    """The sharp shadows it was trained with (:class:`invrender.shading.shadowing.DirectionalShadows`)."""
    mesh: TexturedMesh | None = None
    """The mesh stage's textured mesh when loaded with ``geometry="mesh"``: the run then renders it."""
    _prd_params: dict[str, Tensor] | None = field(default=None, repr=False)
    _reflection_grids: list = field(default_factory=list, repr=False)  # [(light, scale key, grid)]

    @property
    def has_materials(self) -> bool:
        return all(k in self.params for k in MATERIAL_NAMES)

    def reflection_grid(self, light: EnvironmentLight, albedo_scale: Tensor | None = None):
        """The run's Gaussians lit by ``light`` (albedo times ``albedo_scale``) for the traced
        reflections it was trained with (:mod:`invrender.distill.reflection`); None for runs
        trained without them, before stage 2, and for the mesh. Kept for the last few lights."""
        from invrender.distill.reflection import ReflectionConfig, lit_grid  # noqa: PLC0415

        cfg = self.meta.get("reflection")
        if not cfg or not self.has_materials or self.mesh is not None:
            return None
        key = None if albedo_scale is None else tuple(float(v) for v in albedo_scale.reshape(-1))
        for lt, k, grid in self._reflection_grids:
            if lt is light and k == key:
                return grid
        geometry = self._reflection_grids[0][2] if self._reflection_grids else None
        cfg = {"bounce_directions": 0, **cfg}  # runs from before the traced bounce were trained with the grey fill
        grid = lit_grid(self.params, self.visibility, light, ReflectionConfig(**cfg), albedo_scale, geometry)
        self._reflection_grids = [(light, key, grid), *self._reflection_grids][:REFLECTION_GRIDS_KEPT]
        return grid

    @property
    def light_resolution(self) -> int:
        """Face size for lights built for this run (relighting): the learned light's."""
        if self.light is not None:
            return self.light.resolution
        return int(self.meta.get("light_resolution", DEFAULT_LIGHT_RESOLUTION))

    @property
    def tonemapping(self) -> str:
        return self.meta.get("tonemapping", "srgb")

    @property
    def progress_override(self) -> dict[str, float] | None:
        """The progress the preset holds fixed (pbr: 1, radiance: 0), as the trainer renders it."""
        from invrender.distill.schedule import PRESETS, progress_override  # noqa: PLC0415

        preset = self.meta.get("preset")
        if preset not in PRESETS:
            return None
        fixed = progress_override(preset)
        return None if fixed is None else {"progress": fixed}


def load_run(run_dir: Path, device: str | torch.device = "cpu", geometry: str = "gaussian") -> LoadedRun:
    """The newest checkpoint of a run folder; a clear error when there is none. ``geometry="mesh"``
    also loads the mesh stage's ``RUN/mesh/textured_mesh.pt``, which the run then renders."""
    if geometry not in ("gaussian", "mesh"):
        raise ValueError(f"geometry must be 'gaussian' or 'mesh', got {geometry!r}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"run folder {run_dir} holds no checkpoints/ckpt_*.pt (was training started?)")
    sd = load_checkpoint(ckpt)
    params = {k: v.to(device) for k, v in sd["params"].items()}
    light = None
    if "light" in sd:
        lr = sd["light"]["log_radiance"]  # [6, R, R, 3]
        light = EnvironmentLight(lr.shape[1]).to(device)
        light.load_state_dict(sd["light"])
        light.requires_grad_(False)
    vis = sd.get("visibility")
    if vis is not None:
        vis = vis.to(device)
        if vis.shape[0] != num_gaussians(params):
            raise ValueError(
                f"checkpoint {ckpt}: visibility has {vis.shape[0]} entries for {num_gaussians(params)} Gaussians"
            )
    meta = sd["meta"]
    shadows = DirectionalShadows(**sd["shadows"]).to(device) if "shadows" in sd else None
    if shadows is not None and shadows.transmittance.shape[0] != num_gaussians(params):
        raise ValueError(f"checkpoint {ckpt}: directional shadows have {shadows.transmittance.shape[0]} entries "
                         f"for {num_gaussians(params)} Gaussians")
    run = LoadedRun(run_dir, int(sd["step"]), params, meta, light, vis, meta.get("blend", "radiance"), shadows=shadows)
    if run.blend != "radiance" and not (run.has_materials and light is not None):
        raise ValueError(f"checkpoint {ckpt}: blend '{run.blend}' but the materials or the light are missing")
    if geometry == "mesh":
        from invrender.mesh.textured import mesh_path  # noqa: PLC0415

        path = mesh_path(run_dir)
        if not path.is_file():
            raise FileNotFoundError(f"run {run_dir} has no mesh ({path} is missing); run the mesh stage: "
                                    f"invrender mesh --run {run_dir} (or train with --mesh.enable)")
        run.mesh = TexturedMesh.load(path, device)
    return run


def prd_params(run: LoadedRun) -> dict[str, Tensor]:
    """The run's parameters as :func:`render_prd` takes them. A run without materials (stage 1
    only) gets neutral ones (albedo and roughness 0.5, metallic 0, progress 0): its blend is
    ``radiance``, which ignores them, and a ``material_override`` (the grey baseline) replaces them."""
    if run.has_materials:
        return run.params
    if run._prd_params is None:
        n = num_gaussians(run.params)
        device = run.params["means"].device
        neutral = material_params(n, albedo=0.5, roughness=0.5, metallic=0.0, progress=0.0, device=device)
        run._prd_params = {**run.params, **{k: v.detach() for k, v in neutral.items()}}
    return run._prd_params


def _load_split(run: LoadedRun, split: str, data: Path | None = None, load_gt: bool = True):
    from invrender.data import load_scene  # noqa: PLC0415

    scene = load_scene(
        data or run.meta["data"], downscale=run.meta.get("downscale", 1), splits=(split,), load_gt=load_gt
    )
    views = getattr(scene, split, None)
    if views is None:
        raise ValueError(f"split '{split}' not found in {scene.root} (choose train or test)")
    return scene, views


class _Mips:
    """One :class:`SpecularMips` per light resolution, built on first use (its matrices take seconds)."""

    def __init__(self):
        self._by_res = {}

    def __call__(self, resolution: int):
        from invrender.shading.prefilter import SpecularMips  # noqa: PLC0415

        if resolution not in self._by_res:
            self._by_res[resolution] = SpecularMips(resolution)
        return self._by_res[resolution]


@torch.no_grad()
def render_run_view(
    run: LoadedRun,
    views,
    i: int,
    light: EnvironmentLight | None = None,
    *,
    blend: str | None = None,
    albedo_scale: Tensor | None = None,  # [3]
    material_override: dict[str, float] | None = None,
    mips=None,
    backend: str = "auto",
    visibility_per_pixel: bool = False,
) -> PRDRender:
    """View ``i`` of ``views`` as the run renders it: the run's blend (unless ``blend``), its learned
    light (unless ``light``), its baked visibility and tone mapping, and the preset's fixed progress.
    No background: ``final`` is premultiplied by ``alpha``. ``visibility_per_pixel``: the G-buffer
    keeps a shadowing transfer record per pixel, to be shaded under other lights
    (:func:`invrender.distill.model.render_prd`; Gaussian runs)."""
    blend = blend or run.blend
    # a new light relights the run: the learned light stays the reference of the radiance residual
    target = light if (light is not None and run.light is not None and light is not run.light) else None
    light = run.light if target is not None else (light if light is not None else run.light)
    override = dict(run.progress_override or {})
    override.update(material_override or {})
    if blend != "radiance":
        if light is None:
            raise ValueError(f"run {run.run_dir} has no environment light to render blend '{blend}' with")
        mips = mips if mips is not None else _Mips()(light.resolution)
    device = run.params["means"].device
    # a map read from disk is on the CPU: it follows the run (a module moves in place, once)
    for lt in (light, target):
        if lt is not None:
            lt.to(device)
    if albedo_scale is not None:
        albedo_scale = albedo_scale.to(device)
    if run.mesh is not None:
        from invrender.mesh.render import render_mesh_view  # noqa: PLC0415

        return render_mesh_view(
            run.mesh, light, views.viewmats[i].to(device), views.Ks[i].to(device), views.width, views.height,
            None, blend=blend, mips=mips, tonemapping=run.tonemapping, albedo_scale=albedo_scale,
            material_override=override or None, target_light=target, backend="auto" if backend == "gsplat" else backend,
        )
    # traced reflections, as trained: the scene lit by the light shaded with (and by the target);
    # not for the grey baseline, whose materials are not the run's
    refl = refl_target = None
    if blend in ("prd", "pbr") and not material_override:
        refl = run.reflection_grid(light, albedo_scale if target is None else None)
        if refl is not None and target is not None:
            refl_target = run.reflection_grid(target, albedo_scale)
    return render_prd(
        prd_params(run), light, views.viewmats[i].to(device), views.Ks[i].to(device), views.width, views.height,
        run.meta["sh_degree"], None, blend=blend, visibility=run.visibility, mips=mips,
        tonemapping=run.tonemapping, albedo_scale=albedo_scale, material_override=override or None,
        target_light=target, backend=backend, visibility_per_pixel=visibility_per_pixel,
        reflections=refl, target_reflections=refl_target, shadows=run.shadows,
    )


def on_cpu(out: PRDRender) -> PRDRender:
    """A render's images and G-buffer on the CPU, where the ground truth and the PNG writer are
    (the same object on a CPU run). The projected Gaussians are dropped."""
    if out.final.device.type == "cpu":
        return out

    def moved(obj):
        return {f.name: getattr(obj, f.name).cpu() for f in dataclasses.fields(obj)
                if isinstance(getattr(obj, f.name), Tensor)}

    return dataclasses.replace(out, gbuffer=dataclasses.replace(out.gbuffer, **moved(out.gbuffer)), projected=None,
                               **moved(out))


@torch.no_grad()
def render_views(run: LoadedRun, views, backend: str = "auto"):
    """Yield (name, premultiplied display rgb [H, W, 3], alpha [H, W, 1]) per view, on the CPU."""
    mips = _Mips()
    for i, name in enumerate(views.names):
        m = mips(run.light.resolution) if run.blend != "radiance" else None
        out = on_cpu(render_run_view(run, views, i, mips=m, backend=backend))
        yield name, out.final, out.alpha


def straight_rgba(rgb: Tensor, alpha: Tensor) -> Tensor:
    """Premultiplied colour + alpha -> straight RGBA [H, W, 4] in [0, 1] (what PNG viewers expect)."""
    straight = torch.where(alpha > 1e-6, rgb / alpha.clamp(min=1e-6), torch.zeros_like(rgb))
    return torch.cat([straight.clamp(0, 1), alpha.clamp(0, 1)], dim=-1)


def render_split(run_dir: Path, out_dir: Path, split: str = "test", backend: str = "auto",
                 geometry: str = "gaussian", device: str | torch.device = "cpu") -> list[Path]:
    """``invrender render``: one RGBA PNG per view, named after the view."""
    from invrender.image_io import write_png  # noqa: PLC0415

    run = load_run(run_dir, device, geometry=geometry)
    _, views = _load_split(run, split, load_gt=False)
    out_dir = Path(out_dir)
    paths = []
    for name, rgb, alpha in render_views(run, views, backend):
        path = out_dir / f"{name}.png"
        write_png(path, straight_rgba(rgb, alpha).numpy())
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------------------------
# measurements


def albedo_alignment_scale(pred: Tensor, gt: Tensor) -> Tensor:
    """Per-channel scale ``[3]`` aligning a predicted albedo to the ground truth (TensoIR):
    ``median(gt_c / max(pred_c, 1e-6))`` over the given object pixels ``pred``, ``gt`` ``[M, 3]`` (linear)."""
    if pred.shape != gt.shape or pred.ndim != 2 or pred.shape[-1] != 3:
        raise ValueError(
            f"albedo_alignment_scale: pred and gt must both be [M, 3], got {tuple(pred.shape)} and {tuple(gt.shape)}"
        )
    if pred.shape[0] == 0:
        raise ValueError("albedo_alignment_scale: no object pixels to align on")
    return (gt / pred.clamp(min=1e-6)).median(dim=0).values


def align_albedo(albedo: Tensor, scale: Tensor) -> Tensor:
    """``clamp(albedo * scale, 0, 1)`` for albedo ``[..., 3]`` and scale ``[3]`` (as :func:`render_prd` does)."""
    return (albedo * scale).clamp(0, 1)


def _grey3(x: Tensor) -> Tensor:
    """``[..., 1]`` -> ``[..., 3]``"""
    return x.expand(*x.shape[:-1], 3)


def _over(x: Tensor, alpha: Tensor, bg: Tensor) -> Tensor:
    """Per-surface display values ``[..., 3]`` composited with ``alpha`` ``[..., 1]`` on ``bg`` [3]."""
    return x * alpha + bg * (1 - alpha)


def composite_display(linear: Tensor, alpha: Tensor, bg: Tensor) -> Tensor:
    """Linear per-surface colour ``[..., 3]`` -> sRGB, composited with ``alpha`` ``[..., 1]`` on ``bg`` [3]."""
    return _over(linear_to_srgb(linear), alpha, bg)


def albedo_psnr(pred: Tensor, gt: Tensor, pred_alpha: Tensor, gt_alpha: Tensor, bg: Tensor) -> tuple[float, float]:
    """(whole-image, object-pixel) PSNR of an aligned albedo ``[H, W, 3]`` (linear) against the
    ground truth, both in sRGB display space composited on ``bg`` with their own alpha ``[H, W, 1]``."""
    p = composite_display(pred, pred_alpha, bg)
    g = composite_display(gt, gt_alpha, bg)
    return psnr(p, g), psnr(p, g, gt_alpha[..., 0] > 0.5)


def angular_error_deg(pred: Tensor, gt: Tensor) -> Tensor:
    """Angle in degrees ``[...]`` between normals ``[..., 3]`` (``pred`` is normalized here)."""
    cos = (F.normalize(pred, dim=-1) * F.normalize(gt, dim=-1)).sum(-1)
    return torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0)))


def _mean(vals) -> float | None:
    vals = [v for v in vals if v is not None and v == v]
    return sum(vals) / len(vals) if vals else None


def _env_dict(per_env: dict[str, list[float]]) -> dict[str, float | None]:
    out = {env: _mean(v) for env, v in per_env.items()}
    out["mean"] = _mean(list(out.values()))
    return out


def find_envmaps(views, scene, envmaps_dir: Path | None) -> tuple[dict[str, Path], str | None]:
    """Environment maps to relight with: those with ``rgba_<env>`` ground truth in ``views`` and a
    map (``<env>.hdr`` / ``.exr`` in ``envmaps_dir``, else the dataset's ``envmaps/``). Also a note
    naming what is missing (None when nothing is)."""
    envs = sorted(k[len("rgba_"):] for k in views.gt if k.startswith("rgba_"))
    if not envs:
        return {}, f"the dataset ({scene.root}) has no relit ground truth (rgba_<env>.png) for these views"
    if envmaps_dir is not None:
        envmaps_dir = Path(envmaps_dir)
        if not envmaps_dir.is_dir():
            raise FileNotFoundError(f"envmaps folder {envmaps_dir} does not exist")
        maps = {}
        for env in envs:
            for suffix in (".hdr", ".exr"):
                if (envmaps_dir / f"{env}{suffix}").is_file():
                    maps[env] = envmaps_dir / f"{env}{suffix}"
                    break
        where = envmaps_dir
    else:
        maps = {env: Path(scene.envmaps[env]) for env in envs if env in scene.envmaps}
        where = Path(scene.root) / "envmaps"
    missing = [e for e in envs if e not in maps]
    note = f"no environment map in {where} for: {', '.join(missing)}" if missing else None
    return maps, note


class _Grid:
    """Rows of (ground truth, ours) display images ``[H, W, 3]``; saved as GT | ours | |error| x 4."""

    def __init__(self):
        self.rows: list[tuple[Tensor, Tensor]] = []

    def add(self, gt: Tensor, pred: Tensor) -> None:
        if len(self.rows) < GRID_VIEWS:
            self.rows.append((gt.clamp(0, 1), pred.clamp(0, 1)))

    def image(self) -> np.ndarray:
        gap = 2
        lines = []
        for gt, pred in self.rows:
            err = ((gt - pred).abs() * ERROR_GAIN).clamp(0, 1)
            sep = torch.full((gt.shape[0], gap, 3), 0.5)
            lines.append(torch.cat([gt, sep, pred, sep, err], dim=1))
        sep = torch.full((gap, lines[0].shape[1], 3), 0.5)
        out = [lines[0]]
        for line in lines[1:]:
            out += [sep, line]
        return torch.cat(out, dim=0).numpy()


@torch.no_grad()
def evaluate_run(
    run_dir: Path,
    out_json: Path | None,
    split: str = "test",
    backend: str = "auto",
    renders_dir: Path | None = None,
    envmaps_dir: Path | None = None,
    relight: bool = True,
    figures_dir: Path | None = None,
    geometry: str = "gaussian",
    extra: dict | None = None,
    device: str | torch.device = "cpu",
) -> dict:
    """``invrender eval``: the metrics of the module docstring for a run on a split; writes
    ``out_json`` atomically, the renders (RGBA PNGs) under ``run_dir/renders/<split>`` (or
    ``renders_dir``), and the comparison grids and ``metrics.md`` under ``run_dir/eval`` (or
    ``figures_dir``). ``relight=False`` skips the relighting and the grey baseline (the slow part);
    ``envmaps_dir`` replaces the dataset's ``envmaps/`` folder. ``geometry="mesh"`` measures the mesh
    stage's textured mesh instead of the Gaussians (default folders ``renders_mesh/`` and ``eval_mesh/``);
    ``extra`` entries are added to the metrics as they are. ``device``: where the views are rendered
    (the comparisons run on the CPU)."""
    from invrender.image_io import write_png  # noqa: PLC0415
    from invrender.relight import load_envmap_light  # noqa: PLC0415

    run = load_run(run_dir, device, geometry=geometry)
    scene, views = _load_split(run, split)
    kind = resolve_background(run.meta.get("background", "white"), scene.white_background)
    bg = background_color(kind, "cpu")
    suffix = "_mesh" if geometry == "mesh" else ""
    renders_dir = Path(renders_dir) if renders_dir is not None else Path(run_dir) / f"renders{suffix}" / split
    figures_dir = Path(figures_dir) if figures_dir is not None else Path(run_dir) / f"eval{suffix}"
    try:
        lpips_model, lpips_note = load_lpips(), None
    except LPIPSUnavailable as e:
        lpips_model, lpips_note = None, str(e)
    gt = views.gt
    mips = _Mips()
    no_mats = "the run has no materials (it stopped before stage 2 of the PRD schedule)"

    def gt_note(key: str) -> str | None:
        if not run.has_materials:
            return no_mats
        if key not in gt:
            return f"the dataset ({scene.root}) has no '{key}' ground truth for the '{split}' views"
        return None

    notes = {q: gt_note(q) for q in ("albedo", "roughness", "metallic")}
    notes["normal"] = None
    if "normal" not in gt:
        notes["normal"] = f"the dataset ({scene.root}) has no 'normal' ground truth for the '{split}' views"
    notes["progress"] = None if run.has_materials else no_mats
    grids: dict[str, _Grid] = {}
    progress_maps: list[Tensor] = []

    # ---- pass 1: the run as trained (novel views, materials, normals, progress)
    per_view = []
    n_px = len(views) * views.height * views.width
    stride = max(1, math.ceil(n_px / ALBEDO_SAMPLES))
    albedo_pred, albedo_gt = [], []  # object-pixel samples [m, 3] for the alignment
    for i, name in enumerate(views.names):
        out = on_cpu(render_run_view(run, views, i, backend=backend,
                                     mips=mips(run.light_resolution) if run.blend != "radiance" else None))
        g = out.gbuffer
        gt_a = views.alphas[i]  # [H, W, 1]
        obj = gt_a[..., 0] > 0.5  # [H, W]
        gt_rgb = linear_to_srgb(views.images[i]) * gt_a + bg * (1 - gt_a)
        pred = (out.final + (1 - out.alpha) * bg).clamp(0, 1)
        rec = {"view": name, "psnr": psnr(pred, gt_rgb), "psnr_obj": psnr(pred, gt_rgb, obj),
               "ssim": float(ssim(pred, gt_rgb))}
        if lpips_model is not None:
            rec["lpips"] = lpips_score(lpips_model, pred, gt_rgb)
        grids.setdefault("rgb", _Grid()).add(gt_rgb, pred)
        write_png(renders_dir / f"{name}.png", straight_rgba(out.final, out.alpha).numpy())
        if bool(obj.any()):
            if notes["albedo"] is None:
                albedo_pred.append(g.albedo[obj][::stride])
                albedo_gt.append(gt["albedo"][i][obj][::stride])
            for q in ("roughness", "metallic"):
                if notes[q] is None:
                    rec[f"{q}_mae"] = float((getattr(g, q) - gt[q][i]).abs()[obj].mean())
                    grids.setdefault(q, _Grid()).add(_over(_grey3(gt[q][i]), gt_a, bg),
                                                     _over(_grey3(getattr(g, q)), out.alpha, bg))
            if notes["normal"] is None:
                rec["normal_mae_deg"] = float(angular_error_deg(g.normal, gt["normal"][i])[obj].mean())
                pn = (F.normalize(g.normal, dim=-1) + 1) / 2
                grids.setdefault("normal", _Grid()).add(_over((gt["normal"][i] + 1) / 2, gt_a, bg),
                                                        _over(pn, out.alpha, bg))
            if notes["progress"] is None:
                rec["progress_mean"] = float(g.progress[obj].mean())
        if notes["progress"] is None and len(progress_maps) < GRID_VIEWS:
            progress_maps.append(_grey3(g.progress * out.alpha))
        per_view.append(rec)

    def mean(key):
        return _mean([r.get(key) for r in per_view])

    # ---- albedo alignment (TensoIR)
    scale = None
    if notes["albedo"] is None and albedo_pred:
        scale = albedo_alignment_scale(torch.cat(albedo_pred), torch.cat(albedo_gt))  # [3]
    elif notes["albedo"] is None:
        notes["albedo"] = "no object pixels (ground-truth alpha > 0.5) in these views"

    # ---- relighting under each environment with ground truth, and the grey baseline
    maps, relight_note = ({}, "skipped (relight=False)") if not relight else find_envmaps(views, scene, envmaps_dir)
    lights = {env: load_envmap_light(p, run.light_resolution) for env, p in maps.items()}
    if lights and relight_note is not None:
        relight_note = f"evaluated {', '.join(lights)}; {relight_note}"
    rl = {k: {env: [] for env in lights} for k in ("psnr", "psnr_obj", "ssim", "grey")}
    albedo_rec = {"psnr": [], "psnr_obj": []}
    for i in range(len(views)):
        albedo_gb = None
        for env, light in lights.items():
            m = mips(light.resolution)
            out = on_cpu(render_run_view(run, views, i, light, albedo_scale=scale, mips=m, backend=backend))
            if albedo_gb is None:
                albedo_gb = out.gbuffer
            rgba = gt[f"rgba_{env}"][i]  # [H, W, 4] linear + alpha
            ga = rgba[..., 3:]
            g_img = composite_display(rgba[..., :3], ga, bg)
            pred = (out.final + (1 - out.alpha) * bg).clamp(0, 1)
            obj = ga[..., 0] > 0.5
            rl["psnr"][env].append(psnr(pred, g_img))
            rl["psnr_obj"][env].append(psnr(pred, g_img, obj))
            rl["ssim"][env].append(float(ssim(pred, g_img)))
            grids.setdefault(f"relight_{env}", _Grid()).add(g_img, pred)
            grey = on_cpu(render_run_view(run, views, i, light, blend="pbr", material_override=GREY_MATERIAL, mips=m,
                                          backend=backend))
            rl["grey"][env].append(psnr((grey.final + (1 - grey.alpha) * bg).clamp(0, 1), g_img, obj))
        if scale is not None:
            if albedo_gb is None:  # nothing relit: a cheap render for the aligned albedo alone
                albedo_gb = on_cpu(render_run_view(run, views, i, blend="radiance", albedo_scale=scale,
                                                   backend=backend)).gbuffer
            gt_a = views.alphas[i]
            p, po = albedo_psnr(albedo_gb.albedo, gt["albedo"][i], albedo_gb.alpha, gt_a, bg)
            albedo_rec["psnr"].append(p)
            albedo_rec["psnr_obj"].append(po)
            grids.setdefault("albedo", _Grid()).add(
                composite_display(gt["albedo"][i], gt_a, bg), composite_display(albedo_gb.albedo, albedo_gb.alpha, bg))

    has_relight = bool(lights)
    if not has_relight and relight_note is None:
        relight_note = "no environment maps to relight with"
    metrics = {
        "split": split,
        "step": run.step,
        "blend": run.blend,
        "preset": run.meta.get("preset"),
        "n_views": len(per_view),
        "geometry": geometry,
        "n_gaussians": num_gaussians(run.params),
        "n_faces": int(run.mesh.faces.shape[0]) if run.mesh is not None else None,
        "nvs_psnr": mean("psnr"),
        "nvs_psnr_obj": mean("psnr_obj"),
        "nvs_ssim": mean("ssim"),
        "lpips": mean("lpips"),
        "lpips_note": lpips_note,
        "albedo_scale": scale.tolist() if scale is not None else None,
        "albedo_psnr": _mean(albedo_rec["psnr"]) if scale is not None else None,
        "albedo_psnr_obj": _mean(albedo_rec["psnr_obj"]) if scale is not None else None,
        "albedo_note": notes["albedo"],
        "relight_envs": list(lights),
        "relight_psnr": _env_dict(rl["psnr"]) if has_relight else None,
        "relight_psnr_obj": _env_dict(rl["psnr_obj"]) if has_relight else None,
        "relight_ssim": _env_dict(rl["ssim"]) if has_relight else None,
        "relight_note": relight_note,
        "grey_baseline_relight_psnr_obj": _env_dict(rl["grey"]) if has_relight else None,
        "grey_baseline_note": None if has_relight else relight_note,
        "normal_mae_deg": mean("normal_mae_deg"),
        "normal_note": notes["normal"],
        "roughness_mae": mean("roughness_mae"),
        "roughness_note": notes["roughness"],
        "metallic_mae": mean("metallic_mae"),
        "metallic_note": notes["metallic"],
        "progress_mean": mean("progress_mean"),
        "progress_note": notes["progress"],
        "figures": str(figures_dir),
        **(extra or {}),
        "per_view": per_view,
    }

    for q, grid in grids.items():
        if grid.rows:
            write_png(figures_dir / f"{q}.png", grid.image())
    if progress_maps:
        sep = torch.full((progress_maps[0].shape[0], 2, 3), 0.5)
        row = [progress_maps[0]]
        for p in progress_maps[1:]:
            row += [sep, p]
        write_png(figures_dir / "progress.png", torch.cat(row, dim=1).numpy())
    atomic_write_bytes(figures_dir / "metrics.md", metrics_markdown(metrics, run_dir).encode())
    if out_json is not None:
        atomic_write_bytes(Path(out_json), json.dumps(metrics, indent=2).encode())
    return metrics


# ----------------------------------------------------------------------------------------------
# reports


def _f(x, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def metrics_markdown(m: dict, run_dir: Path | None = None) -> str:
    """A short markdown report of the main figures of :func:`evaluate_run`'s metrics."""
    rel = m.get("relight_psnr_obj") or {}
    envs = m.get("relight_envs") or []
    lines = [
        f"# Evaluation{f' of {run_dir}' if run_dir else ''}",
        "",
        f"Split `{m['split']}`, {m['n_views']} views, step {m['step']}, blend `{m['blend']}`, "
        f"{m['n_gaussians']} Gaussians. PSNR in dB (display space); `obj`: object pixels only.",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| novel views PSNR / PSNR obj / SSIM | {_f(m['nvs_psnr'])} / {_f(m['nvs_psnr_obj'])} / "
        f"{_f(m['nvs_ssim'], 4)} |",
        f"| albedo PSNR / PSNR obj (median-aligned) | {_f(m['albedo_psnr'])} / {_f(m['albedo_psnr_obj'])} |",
    ]
    if m.get("relight_psnr"):
        lines.append(
            f"| relighting PSNR / PSNR obj / SSIM (mean of {len(envs)}) | {_f(m['relight_psnr']['mean'])} / "
            f"{_f(rel.get('mean'))} / {_f(m['relight_ssim']['mean'], 4)} |"
        )
        grey = _f(m["grey_baseline_relight_psnr_obj"]["mean"])
        lines.append(f"| grey-material baseline, relighting PSNR obj | {grey} |")
    else:
        lines.append("| relighting | — |")
    lines += [
        f"| normal MAE (degrees) | {_f(m['normal_mae_deg'])} |",
        f"| roughness MAE / metallic MAE | {_f(m['roughness_mae'], 3)} / {_f(m['metallic_mae'], 3)} |",
        f"| mean progress on the object | {_f(m['progress_mean'], 3)} |",
    ]
    if envs:
        grey = m["grey_baseline_relight_psnr_obj"]
        lines += ["", "| environment | PSNR | PSNR obj | SSIM | grey baseline PSNR obj |", "|---|---|---|---|---|"]
        for env in envs:
            lines.append(
                f"| {env} | {_f(m['relight_psnr'][env])} | {_f(rel[env])} | {_f(m['relight_ssim'][env], 4)} | "
                f"{_f(grey[env])} |"
            )
    notes = [f"- {k[:-5]}: {v}" for k, v in m.items() if k.endswith("_note") and v]
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines) + "\n"


def format_summary(m: dict) -> str:
    """A few lines for the terminal."""
    out = [f"{m['split']}: {m['n_views']} views, step {m['step']}, blend {m['blend']}, {m['n_gaussians']} Gaussians",
           f"  novel views   PSNR {_f(m['nvs_psnr'])}  obj {_f(m['nvs_psnr_obj'])}  SSIM {_f(m['nvs_ssim'], 4)}"
           + (f"  LPIPS {_f(m['lpips'], 4)}" if m.get("lpips") is not None else "")]
    if m.get("albedo_psnr") is not None:
        s = " ".join(f"{v:.3f}" for v in m["albedo_scale"])
        out.append(f"  albedo        PSNR {_f(m['albedo_psnr'])}  obj {_f(m['albedo_psnr_obj'])}  (scale {s})")
    if m.get("relight_psnr"):
        per_env = "  ".join(f"{e} {_f(m['relight_psnr_obj'][e])}" for e in m["relight_envs"])
        out.append(f"  relighting    PSNR {_f(m['relight_psnr']['mean'])}  obj {_f(m['relight_psnr_obj']['mean'])}  "
                   f"SSIM {_f(m['relight_ssim']['mean'], 4)}  [obj: {per_env}]")
        out.append(f"  grey baseline relighting PSNR obj {_f(m['grey_baseline_relight_psnr_obj']['mean'])}")
    geo = [f"normal MAE {_f(m['normal_mae_deg'])} deg" if m.get("normal_mae_deg") is not None else None,
           f"roughness MAE {_f(m['roughness_mae'], 3)}" if m.get("roughness_mae") is not None else None,
           f"metallic MAE {_f(m['metallic_mae'], 3)}" if m.get("metallic_mae") is not None else None,
           f"progress {_f(m['progress_mean'], 3)}" if m.get("progress_mean") is not None else None]
    geo = [g for g in geo if g]
    if geo:
        out.append("  " + "  ".join(geo))
    for k, v in m.items():
        if k.endswith("_note") and v and k != "grey_baseline_note":
            out.append(f"  note ({k[:-5]}): {v}")
    return "\n".join(out)
