"""The PRD trainer: stage 1 is the foundation's radiance training (:class:`invrender.train.Trainer`);
stages 2-4 (:mod:`invrender.distill.schedule`) add per-Gaussian materials and progress, a learnable
environment light and baked visibility (shadowing transfer), and train through deferred shading
(:func:`invrender.distill.model.render_prd`).

Everything a stage switch creates (materials, light, its optimizer, the visibility) lives in the
checkpoint, so ``--resume`` stays bit-for-bit across stages. Densification stops with stage 1:
the Gaussians' count and order are fixed from then on, which keeps the baked visibility valid.
"""

from __future__ import annotations

import dataclasses
import math
import time

import torch
import torch.nn.functional as F
from torch import Tensor

from invrender.distill.model import MATERIAL_NAMES, NORMAL_RESIDUAL, material_params, render_prd
from invrender.distill.schedule import PRDSchedule, blend_for, progress_override
from invrender.metrics import psnr
from invrender.shading.shadowing import DirectionalShadows
from invrender.shading.light import EnvironmentLight
from invrender.splat.gaussians import PARAM_NAMES, num_gaussians
from invrender.train import NonFiniteError, Trainer, photometric_loss


def white_light_prior(light: EnvironmentLight) -> Tensor:
    """Mean over texels of |l - mean_rgb(l)| (PRD's L_light): a colourless environment is preferred,
    so colour goes to the albedo. The mean (not PRD's sum) keeps the weight independent of the
    cube's resolution."""
    cube = light.cube()  # [6, R, R, 3]
    return (cube - cube.mean(dim=-1, keepdim=True)).abs().mean()


def light_smoothness(light: EnvironmentLight) -> Tensor:
    """Mean |difference| of the log radiance between neighbouring texels of each cube face (total
    variation; face seams left out): a texel that only a few mirror pixels see cannot take on
    whatever those pixels' errors ask of it. L1 in log space keeps a sun's edge."""
    lr = light.log_radiance  # [6, R, R, 3]
    return 0.5 * ((lr[:, 1:] - lr[:, :-1]).abs().mean() + (lr[:, :, 1:] - lr[:, :, :-1]).abs().mean())


def depth_normal_loss(normal: Tensor, depth_normal: Tensor, mask: Tensor) -> Tensor:
    """1 - cos between the rendered normal ``[H, W, 3]`` and the one from the depth map, averaged
    over ``mask`` [H, W] (bool) pixels; both sides get gradients (2DGS, Huang et al. 2024, eq. 14)."""
    if not bool(mask.any()):
        return normal.sum() * 0.0
    cos = (F.normalize(normal, dim=-1) * depth_normal).sum(-1)  # [H, W]
    return (1.0 - cos)[mask].mean()


def _neighbour_smoothness(x: Tensor, mask: Tensor, weight) -> Tensor:
    """Mean over horizontally and vertically adjacent pixel pairs, both in ``mask`` [H, W] (bool),
    of ``|x_a - x_b|`` (summed over the channels of ``x`` [H, W, C]) times ``weight(dim, n)``, the
    pairs' weights along image axis ``dim`` (pairs ``a = narrow(dim, 0, n)``, ``b = narrow(dim, 1, n)``)."""
    total = x.sum() * 0.0
    count = 0
    for dim in (0, 1):
        n = x.shape[dim] - 1
        xa, xb = x.narrow(dim, 0, n), x.narrow(dim, 1, n)
        both = mask.narrow(dim, 0, n) & mask.narrow(dim, 1, n)
        if not bool(both.any()):
            continue
        total = total + ((xa - xb).abs().sum(-1) * weight(dim, n))[both].sum()
        count += int(both.sum())
    return total / max(count, 1)


def edge_aware_smoothness(x: Tensor, image: Tensor, mask: Tensor, edge_scale: float = 10.0) -> Tensor:
    """Mean over horizontally and vertically adjacent pixel pairs, both in ``mask`` [H, W] (bool),
    of ``|x_a - x_b|`` (summed over the channels of ``x`` [H, W, C]) weighted by
    ``exp(-edge_scale * mean_rgb |image_a - image_b|)`` (``image`` [H, W, 3], the photo): a
    smoothness prior that lets the map change where the photo has an edge."""

    def weight(dim: int, n: int) -> Tensor:
        return torch.exp(-edge_scale * (image.narrow(dim, 0, n) - image.narrow(dim, 1, n)).abs().mean(-1))

    return _neighbour_smoothness(x, mask, weight)


def metal_albedo_smoothness(albedo: Tensor, metallic: Tensor, mask: Tensor) -> Tensor:
    """The same pairwise ``|albedo_a - albedo_b|`` (``albedo`` [H, W, 3]) weighted by the smaller
    metallic of the two pixels (``metallic`` [H, W, 1], not differentiated through), and *not* by
    the photo: on a metal the photo's edges are reflections, which move with the view, while its
    base colour (F0) does not, so the albedo must not copy them."""
    m = metallic.detach()[..., 0]

    def weight(dim: int, n: int) -> Tensor:
        return torch.minimum(m.narrow(dim, 0, n), m.narrow(dim, 1, n))

    return _neighbour_smoothness(albedo, mask, weight)


def metallic_commitment(metallic: Tensor, mask: Tensor, threshold: float = 0.5) -> Tensor:
    """``sum (1 - m) over the masked pixels whose metallic m`` (``metallic`` [H, W, 1]) ``is above
    threshold``, divided by the number of masked pixels: a one-sided pull that finishes what is
    already mostly metal (``mask`` [H, W] bool; which pixels count is not differentiated).
    Pixels below the threshold, dielectrics and the partly metallic alike, feel nothing."""
    sel = mask[..., None] & (metallic.detach() > threshold)
    return ((1.0 - metallic) * sel).sum() / mask.sum().clamp(min=1)


REFLECTION_INPUTS = ("means", "scales", "quats", "opacities", "albedo", "roughness", "metallic")  # what the lit grid reads


class PRDTrainer(Trainer):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.schedule = PRDSchedule.from_config(cfg.steps, cfg.distill)
        self.light: EnvironmentLight | None = None
        self.light_opt: torch.optim.Optimizer | None = None
        self.visibility: Tensor | None = None  # [N, 1] ambient or [N, 2K+1] shadowing transfer record
        self.shadows: DirectionalShadows | None = None  # sharp shadows that refine the record's share
        self._mips = None
        self.last_bake_s: float | None = None
        self.mesh_normals: Tensor | None = None  # [V, H, W, 3] target normals (0 where the mesh is absent)
        self.reflections = None  # ReflectionGrid lit by the learned light (stages 3-4), rebuilt now and then
        self._reflection_inputs: dict | None = None  # what it was built from, and the step
        self.prior = None  # StableMaterial guidance, loaded once here when --prior.path is set
        if cfg.prior.enabled:
            from invrender.prior.guidance import MaterialPrior, prior_window  # noqa: PLC0415  (diffusers: only when on)

            window = prior_window(self.schedule, cfg.prior.start_stage)
            self.prior = MaterialPrior(cfg.prior, self.device, window, seed=cfg.seed)
            self._say(f"prior: {self.prior.describe()}, steps {window[0]}-{window[1]} every {cfg.prior.every}")

    def _say(self, msg: str) -> None:
        if self.cfg.progress:
            from tqdm import tqdm  # noqa: PLC0415

            tqdm.write(msg)
        else:
            print(msg, flush=True)

    # ------------------------------------------------------------------ state
    def total_steps(self) -> int:
        return self.schedule.total

    def stage(self) -> str:
        return self.schedule.stage_at(max(self.step, 1))

    def blend(self) -> str:
        return blend_for(self.cfg.preset, self.stage())

    @property
    def mips(self):
        if self._mips is None:
            from invrender.shading.prefilter import SpecularMips  # noqa: PLC0415

            self._mips = SpecularMips(self.cfg.distill.light_resolution)
        return self._mips

    def meta(self) -> dict:
        m = super().meta()
        d = self.cfg.distill
        m.update(preset=self.cfg.preset, tonemapping=d.tonemapping, light_resolution=d.light_resolution,
                 ao_indirect=d.ao.indirect,
                 reflection=dataclasses.asdict(d.reflection) if self._traces_reflections() else None)
        if self.schedule is not None and self.step >= 1:
            m["stage"] = self.stage()
            m["blend"] = self.blend()
        return m

    def _material_rates(self, stage: str) -> dict[str, float]:
        d = self.cfg.distill
        return {
            "albedo": d.lr_albedo,
            "roughness": d.lr_roughness,
            "metallic": d.lr_metallic,
            "progress": d.lr_progress_joint if stage == "joint" else d.lr_progress,
        }

    def _make_optimizers(self) -> None:
        super()._make_optimizers()
        if "albedo" in self.params:  # resuming inside stages 2-4
            self._make_material_optimizers(self.stage())

    def _make_material_optimizers(self, stage: str) -> None:
        rates = self._material_rates(stage)
        for k in MATERIAL_NAMES:
            self.optimizers[k] = torch.optim.Adam([self.params[k]], lr=rates[k], eps=1e-15, fused=True)
        if NORMAL_RESIDUAL in self.params:
            self.optimizers[NORMAL_RESIDUAL] = torch.optim.Adam(
                [self.params[NORMAL_RESIDUAL]], lr=self.cfg.distill.lr_normal_residual, eps=1e-15, fused=True)

    def state_dict(self) -> dict:
        sd = super().state_dict()
        if self.light is not None:
            sd["light"] = {k: v.detach().cpu() for k, v in self.light.state_dict().items()}
            sd["light_opt"] = self.light_opt.state_dict()
        if self.visibility is not None:
            sd["visibility"] = self.visibility.cpu()
        if self.shadows is not None:
            sd["shadows"] = {"transmittance": self.shadows.transmittance.cpu(), "normals": self.shadows.normals.cpu()}
        if self.prior is not None:
            sd["prior"] = self.prior.state_dict()
        if self.mesh_normals is not None:
            sd["mesh_normals"] = self.mesh_normals.cpu()
        if self._reflection_inputs is not None:
            r = self._reflection_inputs
            sd["reflection_inputs"] = {"step": r["step"], "params": {k: v.cpu() for k, v in r["params"].items()},
                                       "light": {k: v.cpu() for k, v in r["light"].items()},
                                       "bounce": None if r.get("bounce") is None else r["bounce"].cpu(),
                                       "bounce_step": r.get("bounce_step")}
        return sd

    def load_state_dict(self, sd: dict) -> None:
        super().load_state_dict(sd)
        self.mesh_normals = sd["mesh_normals"].to(self.device) if "mesh_normals" in sd else None
        if "light" in sd:
            self._make_light()
            self.light.load_state_dict(sd["light"])
            self.light_opt.load_state_dict(sd["light_opt"])
        self.visibility = sd["visibility"].to(self.device) if "visibility" in sd else None
        self.shadows = DirectionalShadows(**sd["shadows"]).to(self.device) if "shadows" in sd else None
        if self.prior is not None and "prior" in sd:
            self.prior.load_state_dict(sd["prior"])
        if "reflection_inputs" in sd and self._traces_reflections():
            self._restore_reflections(sd["reflection_inputs"])

    def save_checkpoint(self):
        path = super().save_checkpoint()
        if self.light is not None and self.step == self.total_steps():
            self.export_light(self.out / "light.hdr")
        return path

    @torch.no_grad()
    def export_light(self, path) -> None:
        """The learned environment as an equirectangular .hdr (DESIGN.md convention, 512 x 256)."""
        from invrender.shading.envmap import write_hdr  # noqa: PLC0415

        write_hdr(path, self.light.to_equirect(256).cpu().numpy())

    def _make_light(self) -> None:
        d = self.cfg.distill
        self.light = EnvironmentLight(d.light_resolution, d.light_init).to(self.device)
        self.light_opt = torch.optim.Adam(self.light.parameters(), lr=d.lr_light, eps=1e-15)

    # ------------------------------------------------------------------ traced reflections
    def _traces_reflections(self) -> bool:
        return self.cfg.distill.reflection.enable and self.cfg.preset != "radiance"

    @torch.no_grad()
    def reflection_grid(self, stage: str):
        """The scene lit by the learned light for the traced reflections of stages 3-4 (None
        before, or when off), rebuilt every ``reflection.refresh_every`` steps."""
        from invrender.distill.reflection import lit_grid  # noqa: PLC0415

        cfg = self.cfg.distill.reflection
        if not self._traces_reflections() or stage not in ("diffuse", "joint"):
            return None
        if self.reflections is None or self.step - self._reflection_inputs["step"] >= cfg.refresh_every:
            # what the grid is built from is kept for the checkpoint: a resumed run rebuilds the
            # same grid instead of one from later parameters (resuming stays bit for bit)
            old = self._reflection_inputs
            gather = old is None or old.get("bounce") is None or self.step - old["bounce_step"] >= cfg.bounce_refresh_every
            self._reflection_inputs = {
                "step": self.step,
                "params": {k: self.params[k].detach().clone() for k in REFLECTION_INPUTS},
                "light": {k: v.detach().clone() for k, v in self.light.state_dict().items()},
            }
            self.reflections = lit_grid(self.params, self.visibility, self.light, cfg, bounce=gather)
            self._keep_bounce(None if gather else old)
        return self.reflections

    def _keep_bounce(self, old: dict | None) -> None:
        """Record the grid's fresh bounce (with its step) for the checkpoint, or give the grid the
        bounce of ``old`` (the inputs of an earlier build), which it was built without."""
        r, grid = self._reflection_inputs, self.reflections
        if old is None:
            r["bounce"], r["bounce_step"] = grid.bounce, r["step"]
        else:
            r["bounce"], r["bounce_step"] = old["bounce"], old["bounce_step"]
            self.reflections = dataclasses.replace(grid, bounce=old["bounce"])

    def _restore_reflections(self, saved: dict) -> None:
        from invrender.distill.reflection import lit_grid  # noqa: PLC0415

        light = EnvironmentLight(self.cfg.distill.light_resolution).to(self.device)
        light.load_state_dict(saved["light"])
        params = {k: v.to(self.device) for k, v in saved["params"].items()}
        self._reflection_inputs = {"step": int(saved["step"]), "params": params, "light": saved["light"]}
        bounce = saved.get("bounce")  # the bounce the grid had, perhaps gathered at an earlier build
        self.reflections = lit_grid(params, self.visibility, light, self.cfg.distill.reflection, bounce=False)
        if bounce is not None:
            self._keep_bounce({"bounce": bounce.to(self.device), "bounce_step": int(saved["bounce_step"])})
        else:
            self._reflection_inputs.update(bounce=None, bounce_step=None)

    # ------------------------------------------------------------------ stage switches
    def enter_stage(self, stage: str) -> None:
        d = self.cfg.distill
        if stage == "specular":
            n = num_gaussians(self.params)
            mats = material_params(n, d.albedo_init, d.roughness_init, d.metallic_init, d.progress_init, self.device)
            for k, p in mats.items():
                self.params[k] = p
            if d.lr_normal_residual > 0:  # starts at 0: the shortest axis, as stage 1 left it
                self.params[NORMAL_RESIDUAL] = torch.nn.Parameter(torch.zeros(n, 3, device=self.device))
            self._make_light()
            self._make_material_optimizers(stage)
            for k in PARAM_NAMES:
                for group in self.optimizers[k].param_groups:
                    group["lr"] *= d.geometry_lr_scale
            # stage 2 shades the specular term alone (metallic held at 1: no diffuse term to
            # shadow), so the visibility is baked once, at the stage-3 switch
            self.visibility, self.shadows, self.last_bake_s = None, None, None
            if d.lambda_mesh_normal > 0:
                self.bake_mesh_normals()
        elif stage == "diffuse":
            with torch.no_grad():
                p = min(max(d.metallic_init, 1e-4), 1 - 1e-4)
                # s: how metallic each Gaussian starts, 0 (metallic_init) to 1 (0.95)
                s = torch.zeros(self.params["metallic"].shape[0], device=self.device)
                if d.metallic_from_radiance:
                    from invrender.distill.model import view_dependence  # noqa: PLC0415

                    v = view_dependence(self.params["sh0"], self.params["shN"])
                    s = torch.sigmoid((v - d.metallic_vd_threshold) / d.metallic_vd_width)
                self.params["metallic"].copy_(torch.logit(p + (0.95 - p) * s)[:, None])
                if d.roughness_reset:
                    r0 = min(max(d.roughness_init, 1e-4), 1 - 1e-4)
                    r = torch.lerp(torch.full_like(s, r0), torch.sigmoid(self.params["roughness"][:, 0]), s)
                    self.params["roughness"].copy_(torch.logit(r.clamp(1e-4, 1 - 1e-4))[:, None])
                    self.optimizers["roughness"].state.clear()  # fresh moments for the restarted values
            self.optimizers["metallic"].state.clear()  # fresh moments for the released parameter
            self.bake_visibility()  # (the mesh normal target follows: rebakes_mesh_normals_at)
        elif stage == "joint":
            for group in self.optimizers["progress"].param_groups:
                group["lr"] = d.lr_progress_joint

    @torch.no_grad()
    def bake_visibility(self) -> None:
        """Visibility per Gaussian from the current geometry (:mod:`invrender.distill.visibility`): the
        shadowing transfer record ``[N, 2K+1]``, or with ``ao.shadow_sh_degree`` None the ambient one
        ``[N, 1]``; with a record, also the sharp shadows (``ao.shadow_directions``)."""
        from invrender.distill.visibility import bake_diffuse_visibility, bake_directional_shadows  # noqa: PLC0415

        ao_cfg = self.cfg.distill.ao
        n = num_gaussians(self.params)
        if not self.cfg.distill.bake_visibility or self.cfg.preset == "radiance":
            self.visibility = torch.ones(n, 1, device=self.device)
            self.shadows = None
            self.last_bake_s = None
            return
        t0 = time.perf_counter()
        # outward normals from the density field: right after stage 1 the Gaussians are not flat
        # yet and their shortest axes point anywhere (AO along them was ~0.4 on lit surfaces)
        p = self.params
        geometry = (p["means"], torch.exp(p["scales"]), p["quats"], torch.sigmoid(p["opacities"]))
        self.visibility = bake_diffuse_visibility(
            *geometry, None, shadow_sh_degree=ao_cfg.shadow_sh_degree, indirect=ao_cfg.indirect, **ao_cfg.bake_kwargs(),
        ).to(self.device)
        self.shadows = None
        if ao_cfg.shadow_directions > 0 and ao_cfg.shadow_sh_degree is not None:  # (they refine a record)
            kw = {k: v for k, v in ao_cfg.bake_kwargs().items() if k != "num_directions"}
            self.shadows = DirectionalShadows(*bake_directional_shadows(*geometry, num_directions=ao_cfg.shadow_directions, **kw))
        self.last_bake_s = time.perf_counter() - t0

    def rebakes_mesh_normals_at(self, step: int) -> bool:
        """Whether the mesh normal target is extracted again before ``step`` trains (after the stage
        switch, if one happens there): at stage 3's first step, then every
        ``distill.mesh_normal_rebake_every`` steps through stage 4. (The first extraction, when stage
        2 starts, belongs to that switch.)"""
        d = self.cfg.distill
        if d.lambda_mesh_normal <= 0 or not d.mesh_normal_rebake:
            return False
        since = step - (self.schedule.radiance_steps + self.schedule.specular_steps + 1)  # >= 0: stages 3-4
        every = d.mesh_normal_rebake_every
        if since == 0:
            return self.schedule.switch_at(step) == "diffuse"  # (a run without stage 3 has no such switch)
        return since > 0 and every > 0 and since % every == 0

    @torch.no_grad()
    def bake_mesh_normals(self) -> None:
        """Normals of a mesh extracted from the current Gaussians, rasterized into every training view
        ([V, H, W, 3], zero where the mesh does not cover): the target of ``lambda_mesh_normal``."""
        from types import SimpleNamespace  # noqa: PLC0415

        from invrender.mesh.extract import ExtractConfig, extract_mesh, smooth_vertex_normals, vertex_normals  # noqa: PLC0415
        from invrender.mesh.raster import interpolate, rasterize  # noqa: PLC0415

        t0 = time.perf_counter()
        views = SimpleNamespace(names=list(range(self.viewmats.shape[0])), viewmats=self.viewmats.cpu(),
                                Ks=self.Ks.cpu(), width=self.width, height=self.height)
        cfg = ExtractConfig(resolution=self.cfg.distill.mesh_normal_resolution, max_faces=0)
        params = {k: v.detach() for k, v in self.params.items()}
        mesh = extract_mesh(params, views, self.cfg.sh_degree, cfg, self.cfg.backend)
        vn = smooth_vertex_normals(vertex_normals(mesh.vertices, mesh.faces), mesh.faces,
                                   self.cfg.distill.mesh_normal_smoothing)
        maps = []
        for i in range(self.viewmats.shape[0]):
            rast = rasterize(mesh.vertices, mesh.faces, views.viewmats[i], views.Ks[i], self.width, self.height)
            maps.append(F.normalize(interpolate(vn, mesh.faces, rast), dim=-1) * rast.mask)
        self.mesh_normals = torch.stack(maps).to(self.device)
        self._say(f"mesh normals: {mesh.faces.shape[0]} faces, {time.perf_counter() - t0:.1f} s")

    # ------------------------------------------------------------------ step
    def train_step(self) -> dict:
        nxt = self.step + 1
        switch = self.schedule.switch_at(nxt)
        if switch is not None and switch != "radiance":
            t0 = time.perf_counter()
            self.enter_stage(switch)
            self._say(f"step {nxt}: stage '{switch}' begins ({time.perf_counter() - t0:.1f} s to set up"
                      + (f", visibility baked in {self.last_bake_s:.1f} s" if switch == "diffuse" and
                         self.last_bake_s is not None else "") + ")")
        stage = self.schedule.stage_at(nxt)
        if self.rebakes_mesh_normals_at(nxt):
            self.bake_mesh_normals()
        if stage == "radiance":
            rec = super().train_step()
            rec["stage"] = stage
            return rec
        return self._distill_step(stage)

    def _distill_step(self, stage: str) -> dict:
        cfg, d = self.cfg, self.cfg.distill
        self.step += 1
        step = self.step
        i = self._next_view()
        bg = self._background()
        sh_degree = min(step // cfg.sh_degree_interval, cfg.sh_degree)
        blend = blend_for(cfg.preset, stage)
        fixed = progress_override(cfg.preset)
        out = render_prd(
            self.params, self.light, self.viewmats[i], self.Ks[i], self.width, self.height, sh_degree, bg,
            blend=blend, visibility=self.visibility, mips=self.mips if blend != "radiance" else None,
            tonemapping=d.tonemapping, material_override=None if fixed is None else {"progress": fixed},
            backend=cfg.backend, reflections=self.reflection_grid(stage) if blend in ("prd", "pbr") else None,
            shadows=self.shadows,
        )
        gt_a = self.gt_alpha[i]  # [H, W, 1]
        gt = self.gt_rgb[i] * gt_a + bg * (1.0 - gt_a)
        loss_rgb = photometric_loss(out.final, gt, cfg.ssim_lambda)
        mask = (gt_a[..., 0] > 0.5) & (out.alpha.detach()[..., 0] > 0.5)
        loss_dn = depth_normal_loss(out.gbuffer.normal, out.depth_normal, mask)
        loss = loss_rgb + d.lambda_depth_normal * loss_dn
        terms = {"rgb": float(loss_rgb.detach()), "dn": float(loss_dn.detach())}
        if d.lambda_mesh_normal > 0 and self.mesh_normals is not None:
            target = self.mesh_normals[i]  # [H, W, 3]
            loss_mn = depth_normal_loss(out.gbuffer.normal, target, mask & (target.norm(dim=-1) > 0.5))
            loss = loss + d.lambda_mesh_normal * loss_mn
            terms["mesh_normal"] = float(loss_mn.detach())
        if d.lambda_smooth_normal > 0:
            loss_sn = edge_aware_smoothness(F.normalize(out.gbuffer.normal, dim=-1), gt, mask, d.smooth_edge_scale)
            loss = loss + d.lambda_smooth_normal * loss_sn
            terms["smooth_normal"] = float(loss_sn.detach())
        if d.lambda_smooth_material > 0 and stage != "specular":
            rm = torch.cat([out.gbuffer.roughness, out.gbuffer.metallic], dim=-1)
            loss_sm = edge_aware_smoothness(rm, gt, mask, d.smooth_edge_scale)
            loss = loss + d.lambda_smooth_material * loss_sm
            terms["smooth_material"] = float(loss_sm.detach())
        if d.lambda_smooth_albedo > 0 and stage != "specular":
            loss_sa = edge_aware_smoothness(out.gbuffer.albedo, gt, mask, d.smooth_edge_scale)
            loss = loss + d.lambda_smooth_albedo * loss_sa
            terms["smooth_albedo"] = float(loss_sa.detach())
        if d.lambda_smooth_metal_albedo > 0 and stage != "specular":
            loss_ma = metal_albedo_smoothness(out.gbuffer.albedo, out.gbuffer.metallic, mask)
            loss = loss + d.lambda_smooth_metal_albedo * loss_ma
            terms["smooth_metal_albedo"] = float(loss_ma.detach())
        if d.lambda_metallic_commit > 0 and stage != "specular":
            loss_mc = metallic_commitment(out.gbuffer.metallic, mask)
            loss = loss + d.lambda_metallic_commit * loss_mc
            terms["metallic_commit"] = float(loss_mc.detach())
        if d.lambda_smooth_metal_normal > 0 and stage != "specular":
            loss_mn = metal_albedo_smoothness(F.normalize(out.gbuffer.normal, dim=-1), out.gbuffer.metallic, mask)
            loss = loss + d.lambda_smooth_metal_normal * loss_mn
            terms["smooth_metal_normal"] = float(loss_mn.detach())
        if d.lambda_flat > 0:
            s = torch.exp(self.params["scales"])  # [N, 3]
            loss_flat = s.min(dim=-1).values.mean() / s.max(dim=-1).values.mean().detach()
            loss = loss + d.lambda_flat * loss_flat
            terms["flat"] = float(loss_flat.detach())
        if blend != "radiance":
            lam_p = d.lambda_progress_specular if stage == "specular" else d.lambda_progress
            if fixed is None and lam_p > 0:
                progress_map = out.gbuffer.progress * out.alpha  # [H, W, 1]
                loss_p = ((progress_map - gt_a) ** 2).mean()
                loss = loss + lam_p * loss_p
                terms["progress"] = float(loss_p.detach())
            if stage != "specular" and d.lambda_pbr > 0 and blend == "prd":
                pbr_img = out.pbr * out.alpha + (1.0 - out.alpha) * bg
                loss_pbr = photometric_loss(pbr_img, gt, cfg.ssim_lambda)
                loss = loss + d.lambda_pbr * loss_pbr
                terms["pbr"] = float(loss_pbr.detach())
            if stage != "specular" and d.lambda_light > 0:
                loss_l = white_light_prior(self.light)
                loss = loss + d.lambda_light * loss_l
                terms["light"] = float(loss_l.detach())
            if d.lambda_light_smooth > 0:
                loss_ls = light_smoothness(self.light)
                loss = loss + d.lambda_light_smooth * loss_ls
                terms["light_smooth"] = float(loss_ls.detach())
        if self.prior is not None and self.prior.applies(step):
            loss_prior = self.prior.gaussian_loss(self.params, self.viewmats[i], self.Ks[i], self.width, self.height,
                                                  self.gt_rgb[i], gt_a, step, view=i, backend=cfg.backend)
            loss = loss + cfg.prior.weight * loss_prior
            terms["prior"] = float(loss_prior.detach())
        if not torch.isfinite(loss):
            raise NonFiniteError(
                f"step {step} ({stage}): loss is {loss.item()} (view {i}, terms {terms}); last checkpoint in {self.out}"
            )
        loss.backward()
        for opt in self.optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        self.light_opt.step()
        self.light_opt.zero_grad(set_to_none=True)
        for s in self.schedulers.values():
            s.step()
        if step % cfg.log_every == 0:
            self.check_finite()
        rec = {"step": step, "stage": stage, "loss": float(loss.detach()), "psnr": psnr(out.final.detach(), gt),
               "n": num_gaussians(self.params), **terms}
        if fixed is None and blend != "radiance":
            rec["progress_mean"] = float(torch.sigmoid(self.params["progress"].detach()).mean())
        return rec

    def check_finite(self) -> None:
        super().check_finite()
        if self.light is not None and not torch.isfinite(self.light.log_radiance).all():
            raise NonFiniteError(f"step {self.step}: the environment light has non-finite texels")
