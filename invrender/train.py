"""Stage 1 of PRD: radiance-field Gaussian training (3DGS, Kerbl et al. 2023).

``invrender train`` builds a :class:`Trainer` from a :class:`TrainConfig`. A run folder holds
``config.json``, ``checkpoints/ckpt_XXXXXX.pt`` (written atomically), ``train_log.jsonl`` and, at
the end, ``renders/test/*.png`` and ``metrics.json``. ``--resume`` continues from the newest
checkpoint bit-for-bit: parameters, Adam moments, LR schedules, the densification state and every
random generator are restored.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from invrender.checkpoint import atomic_torch_save, atomic_write_bytes, checkpoint_path, latest_checkpoint
from invrender.checkpoint import load_checkpoint, prune_checkpoints
from invrender.color import linear_to_srgb
from invrender.distill.schedule import DistillConfig
from invrender.mesh.stage import MeshConfig
from invrender.metrics import psnr, ssim
from invrender.prior.config import PriorConfig
from invrender.splat.gaussians import PARAM_NAMES, init_gaussians, num_gaussians, random_points, render_view
from invrender.splat.strategy import DensifyStrategy


class NonFiniteError(FloatingPointError):
    """Raised when a loss or a parameter stops being finite; the message names the step."""


@dataclass
class LearningRates:
    """Adam learning rates per parameter group (3DGS defaults)."""

    means: float = 1.6e-4
    """Initial LR of the positions, times the scene extent."""
    means_final: float = 1.6e-6
    """Final LR of the positions (exponential decay over the run), times the scene extent."""
    scales: float = 5e-3
    """LR of the log-scales."""
    quats: float = 1e-3
    """LR of the (unnormalized) rotation quaternions."""
    opacities: float = 5e-2
    """LR of the opacity logits."""
    sh0: float = 2.5e-3
    """LR of the DC (view-independent) colour."""
    shN: float = 2.5e-3 / 20
    """Higher SH bands learn 20x slower than the DC term, which keeps view-dependent colour tame."""


@dataclass
class TrainConfig:
    """Train a radiance-field Gaussian scene on a capture."""

    data: Path
    """Dataset folder: NeRF-synthetic / TensoIR (transforms_*.json), nerfstudio (transforms.json) or COLMAP (sparse/0)."""
    out: Path = Path("runs/latest")
    """Run folder: config, checkpoints, renders and metrics go here."""
    steps: int = 5000
    """Stage-1 (radiance pre-training) steps, one view each; the distillation stages follow
    (``--distill.*-steps``), so a run trains ``steps + distill.steps`` steps in all."""
    preset: Literal["prd", "pbr", "radiance"] = "prd"
    """prd: learned progress map (PRD); pbr: progress held at 1 (physically based baseline);
    radiance: progress held at 0 (radiance field only). All three train the same schedule."""
    backend: Literal["auto", "native", "torch", "gsplat"] = "auto"
    """Rasterizer backend: auto = gsplat or native on CUDA, native on CPU."""
    resume: bool = False
    """Continue from the newest checkpoint in ``out`` (bit-for-bit)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train; auto = cuda when available."""
    downscale: int = 1
    """Integer image downscale factor applied on load."""
    sh_degree: int = 3
    """Maximum SH degree of the radiance colour."""
    sh_degree_interval: int = 1000
    """Raise the active SH degree by one every this many steps."""
    init: Literal["auto", "random", "points"] = "auto"
    """Initialization: SfM/init points when the dataset has them (auto), or random points in a box."""
    init_num_points: int = 20_000
    """Number of random points for random initialization."""
    init_extent: float = 0.33
    """Half side of the random-init cube as a fraction of the camera-rig radius (0.33 gives the
    +-1.5 box of NeRF-synthetic / TensoIR scenes, whose cameras sit ~4 units away)."""
    init_opacity: float = 0.1
    """Opacity of every initial Gaussian."""
    init_scale: float = 1.0
    """Initial scale as a multiple of the mean distance to the 3 nearest points."""
    background: Literal["auto", "white", "black", "random"] = "auto"
    """Background composited behind the object (auto = white for synthetic captures, black otherwise)."""
    ssim_lambda: float = 0.2
    """Weight of D-SSIM in the loss: (1 - lambda) L1 + lambda (1 - SSIM)."""
    lr: LearningRates = field(default_factory=LearningRates)
    distill: DistillConfig = field(default_factory=DistillConfig)
    """Stages 2-4 of PRD (specular, diffuse, joint): lengths, weights, learning rates."""
    mesh: MeshConfig = field(default_factory=MeshConfig)
    """Optional mesh stage after the Gaussian stages (``--mesh.enable``): extraction, UV textures trained
    with the same shading and progress, ``RUN/mesh/textured_mesh.pt``, ``RUN/metrics_mesh.json``."""
    prior: PriorConfig = field(default_factory=PriorConfig)
    """Optional StableMaterial diffusion prior on the materials (off unless ``--prior.path`` is given;
    needs ``pip install -e ".[prior]"``)."""
    strategy: DensifyStrategy = field(
        default_factory=lambda: DensifyStrategy(
            refine_start_iter=300, refine_stop_iter=4000, reset_every=1500, refine_every=100, max_gaussians=200_000
        )
    )
    """Densification schedule; defaults are 3DGS's compressed to the shorter default run."""
    seed: int = 0
    """Seeds the initialization, the view order and random backgrounds."""
    checkpoint_every: int = 1000
    """Write a checkpoint every this many steps (and at the end)."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep."""
    log_every: int = 100
    """Append loss / PSNR / Gaussian count to train_log.jsonl every this many steps."""
    eval_at_end: bool = True
    """Render the test split and write metrics.json when training ends."""
    progress: bool = True
    """Show a progress bar."""


def _jsonable(obj):
    if dataclasses.is_dataclass(obj):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA device")
    return torch.device(device)


def photometric_loss(pred: Tensor, gt: Tensor, ssim_lambda: float) -> Tensor:
    """3DGS's colour loss (1 - lambda) L1 + lambda (1 - SSIM) of images ``[H, W, 3]``."""
    l1 = (pred - gt).abs().mean()
    return (1.0 - ssim_lambda) * l1 + ssim_lambda * (1.0 - ssim(pred, gt))


def resolve_background(kind: str, white_default: bool) -> str:
    """``auto`` -> white for synthetic captures, black otherwise; other kinds unchanged."""
    if kind == "auto":
        return "white" if white_default else "black"
    return kind


def background_color(kind: str, device) -> Tensor:
    """The fixed colour of a resolved background kind; ``random`` runs are rendered and judged on white."""
    if kind == "black":
        return torch.zeros(3, device=device)
    return torch.ones(3, device=device)


class Trainer:
    def __init__(self, cfg: TrainConfig):
        from invrender.data import load_scene  # noqa: PLC0415  (keeps `import invrender.train` cheap)

        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.out = Path(cfg.out)
        self.scene = load_scene(cfg.data, downscale=cfg.downscale)
        train = self.scene.train
        self.width, self.height = train.width, train.height
        # targets live in display space, as the radiance SH do (DESIGN.md, Colour)
        self.gt_rgb = linear_to_srgb(train.images).to(self.device)  # [V, H, W, 3]
        self.gt_alpha = train.alphas.to(self.device)  # [V, H, W, 1]
        self.viewmats = train.viewmats.to(self.device)
        self.Ks = train.Ks.to(self.device)
        self.extent = float(self.scene.scene_radius)
        self.bg_kind = resolve_background(cfg.background, self.scene.white_background)
        self.rng = torch.Generator().manual_seed(cfg.seed)  # view order and random backgrounds
        self.step = 0
        self.order: list[int] = []
        self._init_params()

    # ------------------------------------------------------------------ setup
    def _init_params(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        use_points = cfg.init == "points" or (cfg.init == "auto" and self.scene.points is not None)
        if use_points:
            if self.scene.points is None:
                raise ValueError(f"--init points: dataset {cfg.data} has no init / SfM points")
            pts = self.scene.points.float()
            cols = self.scene.point_colors.float() if self.scene.point_colors is not None else torch.full_like(pts, 0.5)
        else:
            pts, cols = random_points(cfg.init_num_points, cfg.init_extent * self.extent, self.rng)
        params = init_gaussians(pts, cols, cfg.sh_degree, cfg.init_opacity, cfg.init_scale)
        self.params = {k: torch.nn.Parameter(v.data.to(self.device)) for k, v in params.items()}
        self._make_optimizers()
        self.strategy = cfg.strategy
        self.strategy_state = self.strategy.initial_state(num_gaussians(self.params), self.device)

    def _make_optimizers(self) -> None:
        lr = self.cfg.lr
        rates = {
            "means": lr.means * self.extent,
            "scales": lr.scales,
            "quats": lr.quats,
            "opacities": lr.opacities,
            "sh0": lr.sh0,
            "shN": lr.shN,
        }
        # eps 1e-15 as 3DGS: gradients of tiny Gaussians are tiny too. The fused kernel is ~4x
        # faster than the default loop on CPU and exists on CUDA too.
        self.optimizers = {
            k: torch.optim.Adam([self.params[k]], lr=rates[k], eps=1e-15, fused=True) for k in PARAM_NAMES
        }
        gamma = (lr.means_final / lr.means) ** (1.0 / max(self.cfg.steps, 1))
        self.schedulers = {"means": torch.optim.lr_scheduler.ExponentialLR(self.optimizers["means"], gamma)}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "params": {k: v.detach().cpu() for k, v in self.params.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "strategy_state": {k: v.cpu() for k, v in self.strategy_state.items()},
            "order": list(self.order),
            "rng": self.rng.get_state(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": np.random.get_state(),
            "python_rng": random.getstate(),
            "meta": self.meta(),
        }

    def meta(self) -> dict:
        """What render / eval / export need to use the run without the training config."""
        return {
            "data": str(Path(self.cfg.data).resolve()),
            "downscale": self.cfg.downscale,
            "sh_degree": self.cfg.sh_degree,
            "background": self.bg_kind,
            "format": self.scene.format,
            "normalization": self.scene.normalization.tolist(),
        }

    def load_state_dict(self, sd: dict) -> None:
        self.step = int(sd["step"])
        self.params = {k: torch.nn.Parameter(v.to(self.device)) for k, v in sd["params"].items()}
        self._make_optimizers()
        for k, o in self.optimizers.items():
            o.load_state_dict(sd["optimizers"][k])
        for k, s in self.schedulers.items():
            s.load_state_dict(sd["schedulers"][k])
        self.strategy_state = {k: v.to(self.device) for k, v in sd["strategy_state"].items()}
        self.order = list(sd["order"])
        self.rng.set_state(sd["rng"])
        torch.set_rng_state(sd["torch_rng"])
        np.random.set_state(sd["numpy_rng"])
        random.setstate(sd["python_rng"])

    def save_checkpoint(self) -> Path:
        path = checkpoint_path(self.out, self.step)
        atomic_torch_save(self.state_dict(), path)
        prune_checkpoints(self.out, self.cfg.keep_checkpoints)
        return path

    def resume(self) -> bool:
        ckpt = latest_checkpoint(self.out)
        if ckpt is None:
            return False
        self.load_state_dict(load_checkpoint(ckpt))
        return True

    # ------------------------------------------------------------------ loop
    def total_steps(self) -> int:
        return self.cfg.steps

    def _next_view(self) -> int:
        if not self.order:
            self.order = torch.randperm(len(self.viewmats), generator=self.rng).tolist()
        return self.order.pop()

    def _background(self) -> Tensor:
        if self.bg_kind == "random":
            return torch.rand(3, generator=self.rng).to(self.device)
        return background_color(self.bg_kind, self.device)

    def train_step(self) -> dict:
        cfg = self.cfg
        self.step += 1
        step = self.step
        i = self._next_view()
        bg = self._background()
        sh_degree = min(step // cfg.sh_degree_interval, cfg.sh_degree)
        out = render_view(
            self.params, self.viewmats[i], self.Ks[i], self.width, self.height, sh_degree, bg, cfg.backend
        )
        gt = self.gt_rgb[i] * self.gt_alpha[i] + bg * (1.0 - self.gt_alpha[i])  # [H, W, 3]
        loss = photometric_loss(out.rgb, gt, cfg.ssim_lambda)
        if not torch.isfinite(loss):
            raise NonFiniteError(f"step {step}: loss is {loss.item()} (view {i}); last checkpoint in {self.out}")
        loss.backward()
        self.strategy.accumulate(self.strategy_state, out.projected, self.width, self.height)
        for opt in self.optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        for s in self.schedulers.values():
            s.step()
        info = self.strategy.step_post_backward(
            self.params, self.optimizers, self.strategy_state, step, self.extent
        )
        if self.strategy.is_refine_step(step) or step % cfg.log_every == 0:
            self.check_finite()
        return {"step": step, "loss": float(loss.detach()), "psnr": psnr(out.rgb.detach(), gt), "n": num_gaussians(self.params), **info}

    def check_finite(self) -> None:
        for k, v in self.params.items():
            if not torch.isfinite(v).all():
                bad = int((~torch.isfinite(v)).sum())
                raise NonFiniteError(f"step {self.step}: parameter '{k}' has {bad} non-finite values")

    def train(self) -> None:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        if cfg.resume and self.resume():
            print(f"resumed from step {self.step} in {self.out}")
        atomic_write_bytes(self.out / "config.json", json.dumps(_jsonable(cfg), indent=2).encode())
        log = open(self.out / "train_log.jsonl", "a")
        bar = None
        if cfg.progress:
            from tqdm import tqdm  # noqa: PLC0415

            bar = tqdm(total=self.total_steps(), initial=self.step, desc="train", dynamic_ncols=True)
        t0 = time.perf_counter()
        ema_psnr = None
        try:
            while self.step < self.total_steps():
                rec = self.train_step()
                ema_psnr = rec["psnr"] if ema_psnr is None else 0.9 * ema_psnr + 0.1 * rec["psnr"]
                if bar is not None:
                    bar.update(1)
                    if self.step % 10 == 0:
                        bar.set_postfix(loss=f"{rec['loss']:.4f}", psnr=f"{ema_psnr:.2f}", gaussians=rec["n"])
                if self.step % cfg.log_every == 0:
                    rec["elapsed_s"] = time.perf_counter() - t0
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                if self.step % cfg.checkpoint_every == 0 or self.step == self.total_steps():
                    self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
            log.close()
        elapsed = time.perf_counter() - t0
        print(f"trained {self.step} steps in {elapsed:.1f} s; {num_gaussians(self.params)} Gaussians; run in {self.out}")
        if cfg.eval_at_end:
            from invrender.eval import evaluate_run, format_summary  # noqa: PLC0415

            metrics = evaluate_run(self.out, self.out / "metrics.json", backend=cfg.backend, device=self.device)
            print(format_summary(metrics))
            print(f"renders in {self.out / 'renders' / 'test'}, metrics in {self.out / 'metrics.json'}, "
                  f"figures in {metrics.get('figures')}")


def train(cfg: TrainConfig) -> Trainer:
    from invrender.distill.trainer import PRDTrainer  # noqa: PLC0415

    trainer = PRDTrainer(cfg)
    trainer.train()
    if cfg.mesh.enable:
        from invrender.mesh.stage import run_mesh_stage  # noqa: PLC0415

        mesh_cfg = dataclasses.replace(cfg.mesh, progress=cfg.mesh.progress and cfg.progress)
        summary = run_mesh_stage(cfg.out, mesh_cfg, backend=cfg.backend, resume=cfg.resume, evaluate=cfg.eval_at_end,
                                 prior=cfg.prior)
        print(format_mesh_summary(summary))
    return trainer


def format_mesh_summary(summary: dict) -> str:
    """One paragraph on the mesh stage: size, Chamfer to the ground truth, the main metrics."""
    lines = [f"mesh stage: {summary['faces']} faces, {summary['vertices']} vertices in {summary['stage_s']} s "
             f"-> {summary['mesh']}"]
    ch = summary.get("chamfer")
    if ch:
        lines.append(f"  Chamfer to {ch['gt']}: {ch['chamfer']:.4f} ({ch['chamfer_pct_diagonal']:.2f} % of the "
                     f"bounding-box diagonal; accuracy {ch['accuracy']:.4f}, completeness {ch['completeness']:.4f})")
    for k, v in (summary.get("metrics") or {}).items():
        if isinstance(v, dict):
            v = v.get("mean")
        if v is not None:
            lines.append(f"  {k}: {v:.3f}")
    return "\n".join(lines)
