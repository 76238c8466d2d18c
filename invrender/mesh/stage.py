"""The mesh stage: after the Gaussian stages of PRD, extract a mesh and train its textures with the
same shading, light and progress blending.

Design (documented in the README): a *stage after the Gaussian stages*, not a separate geometry
backend from scratch. The Gaussians already hold the radiance, the materials, the learned light and
the progress; the mesh stage turns them into an asset:

1. **Extract** a watertight mesh from the trained Gaussians (:mod:`invrender.mesh.extract`: TSDF
   fusion of the rendered depth of the training views, marching cubes, cleaning, decimation) and
   unwrap it with xatlas.
2. **Bake visibility** per vertex from the Gaussians' density grid, the same kind the run's
   Gaussians apply to their diffuse term: a shadowing transfer record
   (:func:`bake_visibility_transfer` at the vertices), or ambient occlusion for runs that used it.
3. **Initialize the textures by projection**: every training view is rendered by the Gaussians
   (albedo, roughness, metallic, progress, radiance buffers) and rasterized by the mesh; each covered
   pixel adds its buffer values to the texel its UV falls in. Texels no view reached are filled by
   pull-push (averages of the coarser mips), so the atlas has no holes for bilinear or mip reads.
4. **Train the textures** (sigmoid logits, Adam) through the mesh renderer with the run's own light
   (frozen), blend mode and preset: the photometric loss of stage 1 against the photos plus
   ``lambda_distill`` times an L1 pull of the material buffers towards the Gaussians' renders, which
   keeps what the PRD stages separated (material vs light vs radiance) where a texel's few views
   cannot decide it on their own.

The result is ``RUN/mesh/textured_mesh.pt`` (:class:`TexturedMesh`, written atomically), evaluated
like the Gaussians (``RUN/metrics_mesh.json``, ``RUN/eval_mesh/``) and exported by
``invrender export --format glb|obj``. A checkpoint (``RUN/mesh/ckpt.pt``) makes it resumable.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from invrender.checkpoint import atomic_torch_save
from invrender.mesh.extract import ExtractConfig, extract_mesh, unwrap_uv, vertex_normals
from invrender.mesh.raster import fill_texture
from invrender.mesh.textured import TEXTURE_CHANNELS, TEXTURE_NAMES, TexturedMesh, mesh_path

_SPLITS = [TEXTURE_CHANNELS[k] for k in TEXTURE_NAMES]


@dataclass
class MeshConfig:
    """The optional mesh stage after the Gaussian stages (extraction, UV textures, training)."""

    enable: bool = False
    """Run the mesh stage at the end of ``invrender train`` (``invrender mesh --run RUN`` runs it on a
    finished run)."""
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    """Mesh extraction (TSDF fusion of rendered depth, marching cubes, decimation)."""
    texture_size: int = 512
    """Side of the square texture atlas (albedo, roughness, metallic, progress, radiance)."""
    steps: int = 600
    """Texture training steps (one training view each)."""
    lr: float = 0.02
    """Adam learning rate of the texture logits."""
    lambda_distill: float = 0.2
    """Weight of the L1 pull of the rendered material / progress / radiance buffers towards the
    Gaussians' renders of the same view."""
    ssim_lambda: float = 0.2
    """D-SSIM weight of the photometric loss, as in stage 1."""
    radiance_sh_degree: int = 2
    """Degree of the per-vertex SH that adds view dependence to the radiance texture (0: none)."""
    lr_sh: float = 0.01
    """Adam learning rate of the per-vertex radiance SH."""
    ao: bool = True
    """Bake per-vertex ambient visibility from the Gaussians (when the run used visibility)."""
    checkpoint_every: int = 200
    """Write RUN/mesh/ckpt.pt every this many steps (and at the end)."""
    seed: int = 0
    """Seeds the view order."""
    progress: bool = True
    """Show a progress bar."""


def _logit(x: Tensor) -> Tensor:
    x = x.clamp(1e-3, 1.0 - 1e-3)
    return torch.log(x) - torch.log1p(-x)


class MeshStage:
    """Extraction + texture training for one finished run folder (see the module docstring)."""

    def __init__(self, run_dir: Path, cfg: MeshConfig, backend: str = "auto", prior=None):
        from invrender.eval import _Mips, _load_split, load_run  # noqa: PLC0415
        from invrender.train import background_color, resolve_background  # noqa: PLC0415

        self.run_dir, self.cfg, self.backend = Path(run_dir), cfg, backend
        self.run = load_run(self.run_dir)
        if self.run.light is None or not self.run.has_materials:
            raise ValueError(f"run {self.run_dir} has no materials or light yet: the mesh stage runs after the "
                             "PRD stages (train with the default schedule first)")
        if cfg.texture_size < 8:
            raise ValueError(f"mesh.texture_size must be >= 8, got {cfg.texture_size}")
        self.scene, self.views = _load_split(self.run, "train")
        kind = resolve_background(self.run.meta.get("background", "white"), self.scene.white_background)
        self.bg = background_color("white" if kind == "random" else kind, "cpu")
        self.mips = _Mips()(self.run.light.resolution)
        self.step = 0
        self.prior = None  # StableMaterial guidance on the textures' albedo / ORM (``--prior.path``)
        if prior is not None and prior.enabled:
            from invrender.prior.guidance import MaterialPrior  # noqa: PLC0415  (diffusers: only when on)

            self.prior = MaterialPrior(prior, "cpu", window=(1, max(cfg.steps, 1)), seed=cfg.seed)
            print(f"mesh stage prior: {self.prior.describe()}, every {prior.every} steps")
        self.dir = self.run_dir / "mesh"
        self.ckpt = self.dir / "ckpt.pt"

    # ---- setup: geometry, visibility, reference buffers, initial textures
    def _reference_buffers(self) -> tuple[Tensor, Tensor]:
        """The Gaussians' renders of every training view: [V, H, W, 9] buffers in TEXTURE_NAMES order
        (per surface) and [V, H, W, 1] alpha."""
        from invrender.eval import render_run_view  # noqa: PLC0415

        bufs, alphas = [], []
        for i in range(len(self.views)):
            out = render_run_view(self.run, self.views, i, mips=self.mips, backend=self.backend)
            g = out.gbuffer
            bufs.append(torch.cat([g.albedo, g.roughness, g.metallic, g.progress, out.radiance.clamp(0, 1)], -1))
            alphas.append(out.alpha)
        return torch.stack(bufs), torch.stack(alphas)

    def _project_textures(self, v: Tensor, f: Tensor, uv: Tensor, ref: Tensor, ref_alpha: Tensor) -> Tensor:
        from invrender.mesh.raster import interpolate, rasterize  # noqa: PLC0415

        T = self.cfg.texture_size
        acc = torch.zeros(T * T, ref.shape[-1])
        wsum = torch.zeros(T * T, 1)
        for i in range(len(self.views)):
            rast = rasterize(v, f, self.views.viewmats[i], self.views.Ks[i], self.views.width, self.views.height,
                             backend=self.backend)
            puv = interpolate(uv, f, rast)  # [H, W, 2]
            ok = (rast.mask[..., 0] > 0) & (ref_alpha[i, ..., 0] > 0.5)
            tx = (puv[..., 0][ok] * T).floor().long().clamp(0, T - 1)
            ty = (puv[..., 1][ok] * T).floor().long().clamp(0, T - 1)
            idx = ty * T + tx
            acc.index_add_(0, idx, ref[i][ok])
            wsum.index_add_(0, idx, torch.ones(idx.shape[0], 1))
        return fill_texture(acc.view(T, T, -1), wsum.view(T, T, 1))

    def setup(self) -> None:
        from invrender.distill.visibility import bake_diffuse_visibility  # noqa: PLC0415
        from invrender.shading.shadowing import record_degree  # noqa: PLC0415

        cfg, run = self.cfg, self.run
        t0 = time.perf_counter()
        raw = extract_mesh(run.params, self.views, run.meta["sh_degree"], cfg.extract, self.backend)
        welded_normals = vertex_normals(raw.vertices, raw.faces)
        t_extract = time.perf_counter() - t0
        vis = None
        if cfg.ao and run.visibility is not None:
            p = run.params
            # the same kind as the run's Gaussians (a shadowing record of their degree, or ambient) and
            # the same bounce fill (runs from before it was added: none)
            vis = bake_diffuse_visibility(
                p["means"], torch.exp(p["scales"]), p["quats"], torch.sigmoid(p["opacities"]), None,
                shadow_sh_degree=record_degree(run.visibility), indirect=float(run.meta.get("ao_indirect", 0.0)),
                points=raw.vertices, point_normals=welded_normals,
            )
        v, f, uv, vmap = unwrap_uv(raw, cfg.texture_size)
        self.vertices, self.faces, self.uvs = v, f, uv
        self.normals = welded_normals[vmap]
        self.visibility = vis[vmap] if vis is not None else None
        t_unwrap = time.perf_counter() - t0 - t_extract
        self.ref, self.ref_alpha = self._reference_buffers()
        init = self._project_textures(v, f, uv, self.ref, self.ref_alpha)
        self.logits = _logit(init).requires_grad_(True)  # [T, T, 9]
        k = (cfg.radiance_sh_degree + 1) ** 2 - 1
        self.radiance_sh = torch.zeros(v.shape[0], k, 3, requires_grad=True) if k > 0 else None  # [V, K - 1, 3]
        self.opt = self._make_optimizer()
        self.info = {"faces": int(f.shape[0]), "vertices": int(v.shape[0]), "extract_s": round(t_extract, 1),
                     "unwrap_s": round(t_unwrap, 1), "setup_s": round(time.perf_counter() - t0, 1)}

    def _make_optimizer(self) -> torch.optim.Optimizer:
        groups = [{"params": [self.logits], "lr": self.cfg.lr}]
        if self.radiance_sh is not None:
            groups.append({"params": [self.radiance_sh], "lr": self.cfg.lr_sh})
        return torch.optim.Adam(groups)

    # ---- checkpointing
    def state_dict(self) -> dict:
        return {
            "step": self.step, "vertices": self.vertices, "faces": self.faces, "uvs": self.uvs,
            "normals": self.normals, "visibility": self.visibility, "logits": self.logits.detach(),
            "radiance_sh": None if self.radiance_sh is None else self.radiance_sh.detach(),
            "opt": self.opt.state_dict(), "info": self.info, "rng": torch.get_rng_state(),
            **({"prior": self.prior.state_dict()} if self.prior is not None else {}),
        }

    def load_state_dict(self, sd: dict) -> None:
        self.step = int(sd["step"])
        self.vertices, self.faces, self.uvs, self.normals = sd["vertices"], sd["faces"], sd["uvs"], sd["normals"]
        self.visibility, self.info = sd["visibility"], sd["info"]
        self.logits = sd["logits"].clone().requires_grad_(True)
        sh = sd.get("radiance_sh")
        self.radiance_sh = None if sh is None else sh.clone().requires_grad_(True)
        self.opt = self._make_optimizer()
        self.opt.load_state_dict(sd["opt"])
        torch.set_rng_state(sd["rng"])
        if self.prior is not None and "prior" in sd:
            self.prior.load_state_dict(sd["prior"])
        self.ref, self.ref_alpha = self._reference_buffers()

    def save_checkpoint(self) -> None:
        atomic_torch_save(self.state_dict(), self.ckpt)

    # ---- training
    def textures(self) -> Tensor:
        return torch.sigmoid(self.logits)  # [T, T, 9]

    def train_step(self, i: int) -> dict:
        from invrender.color import linear_to_srgb  # noqa: PLC0415
        from invrender.mesh.render import render_mesh  # noqa: PLC0415
        from invrender.train import photometric_loss  # noqa: PLC0415

        run, views = self.run, self.views
        out = render_mesh(
            self.vertices, self.faces, self.uvs, self.normals, self.textures(), run.light, views.viewmats[i],
            views.Ks[i], views.width, views.height, self.bg, visibility=self.visibility,
            radiance_sh=self.radiance_sh, blend=run.blend,
            mips=self.mips, tonemapping=run.tonemapping, material_override=run.progress_override,
            backend=self.backend,
        )
        a = views.alphas[i]
        gt = linear_to_srgb(views.images[i]) * a + self.bg * (1 - a)
        loss_rgb = photometric_loss(out.final, gt, self.cfg.ssim_lambda)
        g = out.gbuffer
        pred = torch.cat([g.albedo, g.roughness, g.metallic, g.progress, out.radiance], -1)
        both = (out.alpha * (self.ref_alpha[i] > 0.5)).expand_as(pred)
        loss_distill = ((pred - self.ref[i]).abs() * both).sum() / both.sum().clamp(min=1.0)
        loss = loss_rgb + self.cfg.lambda_distill * loss_distill
        terms = {}
        if self.prior is not None and self.prior.applies(self.step + 1):
            # the same interface as on the Gaussians: this view's albedo / ORM maps and its photo
            orm = torch.cat([torch.zeros_like(g.roughness), g.roughness, g.metallic], dim=-1)  # [H, W, 3]
            loss_prior = self.prior.loss(g.albedo, orm, out.alpha * a, linear_to_srgb(views.images[i]),
                                         fraction=self.prior.fraction(self.step + 1), cache_key=i, photo_alpha=a)
            loss = loss + self.prior.cfg.weight * loss_prior
            terms["prior"] = loss_prior.item()
        if not torch.isfinite(loss):
            from invrender.train import NonFiniteError  # noqa: PLC0415

            raise NonFiniteError(f"mesh stage step {self.step}: non-finite loss ({float(loss)})")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.step += 1
        with torch.no_grad():
            mse = ((out.final - gt) ** 2).mean()
        return {"step": self.step, "loss": loss.item(), "loss_rgb": loss_rgb.item(),
                "loss_distill": loss_distill.item(), "psnr": float(-10 * torch.log10(mse.clamp(min=1e-10))), **terms}

    def result(self) -> TexturedMesh:
        tex = self.textures().detach().split(_SPLITS, dim=-1)
        return TexturedMesh(
            vertices=self.vertices, faces=self.faces, uvs=self.uvs, normals=self.normals,
            **{k: t.contiguous() for k, t in zip(TEXTURE_NAMES, tex)},
            normalization=self.scene.normalization.float(), visibility=self.visibility,
            radiance_sh=None if self.radiance_sh is None else self.radiance_sh.detach(),
        )

    def train(self, resume: bool = False) -> TexturedMesh:
        cfg = self.cfg
        self.dir.mkdir(parents=True, exist_ok=True)
        if resume and self.ckpt.is_file():
            self.load_state_dict(torch.load(self.ckpt, map_location="cpu", weights_only=False))
            print(f"mesh stage: resumed at step {self.step} from {self.ckpt}")
        else:
            self.setup()
            print(f"mesh stage: {self.info['faces']} faces, {self.info['vertices']} vertices, "
                  f"texture {cfg.texture_size}^2 (setup {self.info['setup_s']} s)")
        g = torch.Generator().manual_seed(cfg.seed)
        order = torch.randint(len(self.views), (max(cfg.steps, 1),), generator=g)
        bar = None
        if cfg.progress:
            from tqdm import tqdm  # noqa: PLC0415

            bar = tqdm(total=cfg.steps, initial=self.step, desc="mesh", dynamic_ncols=True)
        t0 = time.perf_counter()
        with open(self.dir / "train_log.jsonl", "a") as log:
            while self.step < cfg.steps:
                rec = self.train_step(int(order[self.step]))
                if bar is not None:
                    bar.update(1)
                    if self.step % 10 == 0:
                        bar.set_postfix(loss=f"{rec['loss']:.4f}", psnr=f"{rec['psnr']:.2f}")
                if self.step % 50 == 0 or self.step == cfg.steps:
                    rec["elapsed_s"] = round(time.perf_counter() - t0, 2)
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                if self.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
        if bar is not None:
            bar.close()
        self.save_checkpoint()
        mesh = self.result()
        mesh.save(mesh_path(self.run_dir))
        self.info["train_s"] = round(time.perf_counter() - t0, 1)
        return mesh


def mesh_chamfer(data_dir: Path, mesh: TexturedMesh) -> dict | None:
    """Chamfer distance of ``mesh`` (taken to the capture frame) to the dataset's ``gt_mesh.ply`` when
    the dataset (``data_dir``) has one (synthetic captures made by ``scripts/make_synthetic.py`` do);
    else None."""
    from invrender.mesh.extract import chamfer_distance, read_ply_mesh  # noqa: PLC0415

    gt_path = Path(data_dir) / "gt_mesh.ply"
    if not gt_path.is_file():
        return None
    gt = read_ply_mesh(gt_path)
    res = chamfer_distance(mesh.vertices_capture_frame(), mesh.faces, gt.vertices, gt.faces)
    diag = float((gt.vertices.max(0).values - gt.vertices.min(0).values).norm())
    res["bbox_diagonal"] = diag
    res["chamfer_pct_diagonal"] = 100.0 * res["chamfer"] / diag
    res["gt"] = str(gt_path)
    return res


def run_mesh_stage(run_dir: Path, cfg: MeshConfig, backend: str = "auto", resume: bool = False,
                   evaluate: bool = True, prior=None) -> dict:
    """The whole stage on a finished run: train, save, measure (Chamfer + the evaluation of
    ``invrender eval --geometry mesh``, written to RUN/metrics_mesh.json). Returns the summary.
    ``prior``: a :class:`~invrender.prior.config.PriorConfig`; when enabled, the StableMaterial
    prior regularizes the textures' albedo and ORM as it does the Gaussians' materials."""
    stage = MeshStage(run_dir, cfg, backend, prior=prior)
    t0 = time.perf_counter()
    mesh = stage.train(resume=resume)
    summary = {"mesh": str(mesh_path(run_dir)), **stage.info, "stage_s": round(time.perf_counter() - t0, 1)}
    summary["chamfer"] = mesh_chamfer(stage.run.meta["data"], mesh)
    if evaluate:
        from invrender.eval import evaluate_run  # noqa: PLC0415

        metrics = evaluate_run(run_dir, Path(run_dir) / "metrics_mesh.json", backend=backend, geometry="mesh",
                               extra={"mesh_stage": summary})
        summary["metrics"] = {k: metrics.get(k) for k in ("nvs_psnr", "nvs_psnr_obj", "albedo_psnr_obj",
                                                           "relight_psnr_obj", "normal_mae_deg")}
    return summary
