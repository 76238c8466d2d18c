"""Score-distillation losses of the StableMaterial prior and the one object trainers call.

Two losses behind :meth:`MaterialPrior.loss` (``--prior.loss``):

- ``sds``: Score Distillation Sampling (DreamFusion, Poole et al. 2022, eq. 3) on the material
  latents z: x_t = sqrt(a) z + sqrt(1 - a) eps, grad = w(t) (eps_hat - eps) with w(t) = 1 - a
  (a = alpha-bar_t), eps_hat from the guided v-prediction (:func:`v_to_eps`), clipped; the loss
  0.5 mean((z - sg(z - grad))^2) has exactly grad / numel(z) as its gradient.
- ``denoise``: MaterialFusion's variant (Litman et al. 2024, sec. 4): noise z to t, run a few
  scheduler steps t, 4t/5, ..., t/5 -> 0 with CFG and no gradient, then regress: MSE between z and
  the denoised latents (masked at latent resolution) plus ``image_weight`` times the MSE between the
  rendered albedo / ORM and the decoded ones. A multi-step target is less noisy than one-step SDS.

Inputs follow MaterialFusion's call: albedo converted to sRGB, albedo and ORM multiplied by the
mask in [0, 1] (black background), the photo multiplied by the mask in [-1, 1] (grey background),
everything padded to a square and resized to ``resolution``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from invrender.color import linear_to_srgb
from invrender.prior.config import PriorConfig
from invrender.prior.stablematerial import Condition, StableMaterial, load_stablematerial


def v_to_eps(v: Tensor, x_t: Tensor, alpha_bar: Tensor) -> Tensor:
    """Noise prediction from a v-prediction (Salimans & Ho 2022): with x_t = a_t x0 + s_t eps and
    v = a_t eps - s_t x0 (a_t = sqrt(alpha_bar), s_t = sqrt(1 - alpha_bar)), eps = s_t x_t + a_t v.
    ``alpha_bar`` broadcasts against ``v`` and ``x_t`` ([B, 1, 1, 1] or a scalar)."""
    return (1.0 - alpha_bar).sqrt() * x_t + alpha_bar.sqrt() * v


def v_to_x0(v: Tensor, x_t: Tensor, alpha_bar: Tensor) -> Tensor:
    """Clean-latent prediction from a v-prediction: x0 = a_t x_t - s_t v."""
    return alpha_bar.sqrt() * x_t - (1.0 - alpha_bar).sqrt() * v


def sds_loss(
    model: StableMaterial, latents: Tensor, cond: Condition, t: Tensor, noise: Tensor, cfg_scale: float,
    grad_clip: float | None = None,
) -> Tensor:
    """Score distillation on material latents ``[B, 8, h, w]`` at integer times ``t`` [B] with
    ``noise`` like ``latents``. Returns a scalar whose gradient w.r.t. ``latents`` is
    (1 - a_t)(eps_hat - eps) / numel (see the module docstring)."""
    a = model.alphas_cumprod[t.to(model.device)].view(-1, 1, 1, 1)  # [B, 1, 1, 1]
    x_t = a.sqrt() * latents.detach() + (1.0 - a).sqrt() * noise
    v = model.predict_v(x_t, t, cond, cfg_scale)
    grad = (1.0 - a) * (v_to_eps(v, x_t, a) - noise)  # [B, 8, h, w]
    if grad_clip is not None:
        grad = grad.clamp(-grad_clip, grad_clip)
    grad = torch.nan_to_num(grad)
    target = (latents - grad).detach()
    return 0.5 * F.mse_loss(latents, target)


def denoise_timesteps(t: int, steps: int) -> list[int]:
    """MaterialFusion's schedule from ``t``: round(k t / steps) for k = steps..1, duplicates dropped."""
    ts = np.round(np.arange(steps, 0, -1) * (t / steps)).astype(np.int64)
    return sorted({int(s) for s in ts if s >= 0}, reverse=True)


@torch.no_grad()
def denoise_latents(
    model: StableMaterial, latents: Tensor, cond: Condition, t: int, noise: Tensor, cfg_scale: float, steps: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Noise ``latents`` [B, 8, h, w] to time ``t`` and denoise them with the DDPM scheduler along
    :func:`denoise_timesteps` (the last step lands on the clean estimate)."""
    sched = model.scheduler
    sched.set_timesteps(timesteps=denoise_timesteps(t, steps), device=model.device)
    x = sched.add_noise(latents, noise, torch.tensor([t], device=model.device))
    for s in sched.timesteps:
        v = model.predict_v(x, s.view(1), cond, cfg_scale)
        x = sched.step(v, s, x, generator=generator).prev_sample
    return x


def denoise_loss(
    model: StableMaterial, albedo: Tensor, orm: Tensor, mask: Tensor, cond: Condition, t: int, noise: Tensor,
    cfg_scale: float, steps: int, image_weight: float, generator: torch.Generator | None = None,
) -> Tensor:
    """MaterialFusion's loss for masked sRGB ``albedo`` and ``orm`` [B, 3, H, W] in [0, 1], ``mask`` [B, 1, H, W]."""
    latents = model.encode_materials(albedo, orm)  # [B, 8, h, w]
    target = denoise_latents(model, latents.detach(), cond, t, noise, cfg_scale, steps, generator)
    albedo_hat, orm_hat = model.decode_materials(target)  # [B, 3, H, W]
    m_lat = F.interpolate(mask, size=latents.shape[-2:], mode="area")  # [B, 1, h, w]
    loss_latent = F.mse_loss(latents * m_lat, target * m_lat)
    loss_image = F.mse_loss(albedo, albedo_hat * mask) + F.mse_loss(orm, orm_hat * mask)
    return loss_latent + image_weight * loss_image


def to_square(img: Tensor, size: int) -> Tensor:
    """``[H, W, C]`` -> ``[1, C, size, size]``: zero-padded to a centred square (the object keeps
    its aspect ratio and no pixel is cropped), then resized with antialiasing."""
    H, W, _ = img.shape
    n = max(H, W)
    top, left = (n - H) // 2, (n - W) // 2
    x = F.pad(img.permute(2, 0, 1)[None], (left, n - W - left, top, n - H - top))  # [1, C, n, n]
    if n == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=n > size)


def _resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


class MaterialPrior:
    """StableMaterial guidance for any renderer's material maps.

    Built once per run (loading the weights); :meth:`loss` takes one view's rendered maps and
    photo. ``window`` is the inclusive step range the prior acts in (None: always), over which
    ``--prior.anneal`` lowers the largest sampled time. Its own random generator draws the
    times and noises (and lives in the checkpoint), so switching the prior on leaves the
    trainer's random streams (view order, backgrounds) as they were."""

    def __init__(
        self, cfg: PriorConfig, device: torch.device | str = "cpu", window: tuple[int, int] | None = None,
        seed: int = 0, model: StableMaterial | None = None,
    ):
        if cfg.path is None and model is None:
            raise ValueError("MaterialPrior needs --prior.path (a weights folder or Hugging Face id)")
        cfg.validate()
        self.cfg = cfg
        dev = torch.device(device if cfg.device == "auto" else cfg.device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--prior.device cuda was asked for but torch sees no CUDA device")
        self.model = model if model is not None else load_stablematerial(cfg.path, dev, _resolve_dtype(cfg.dtype, dev))
        self.window = window
        self.rng = torch.Generator().manual_seed(seed + 7919)  # CPU: identical draws on every device
        self._conditions: dict = {}
        self.last_t: int | None = None

    def describe(self) -> str:
        m, c = self.model, self.cfg
        return (f"StableMaterial from {m.source} on {m.device} ({str(m.dtype).removeprefix('torch.')}), "
                f"{c.loss} loss x {c.weight} at {c.resolution} px, CFG {c.cfg_scale}")

    # ------------------------------------------------------------------ schedule
    def applies(self, step: int) -> bool:
        """Whether step ``step`` gets the prior term (inside the window, every ``cfg.every`` steps)."""
        if self.window is not None and not self.window[0] <= step <= self.window[1]:
            return False
        start = self.window[0] if self.window is not None else 0
        return (step - start) % self.cfg.every == 0

    def fraction(self, step: int) -> float:
        """Position of ``step`` in the window, 0 at its first step and 1 at its last."""
        if self.window is None or self.window[1] <= self.window[0]:
            return 0.0
        return min(max((step - self.window[0]) / (self.window[1] - self.window[0]), 0.0), 1.0)

    def time_range(self, fraction: float) -> tuple[int, int]:
        """Inclusive integer range of diffusion times sampled at ``fraction`` of the window."""
        c, T = self.cfg, self.model.num_train_timesteps
        hi = c.t_max + (c.t_max_final - c.t_max) * fraction if c.anneal else c.t_max
        lo_i = max(int(round(c.t_min * T)), 1)
        return lo_i, max(min(int(round(hi * T)), T - 1), lo_i)

    # ------------------------------------------------------------------ loss
    def condition(self, photo: Tensor, alpha: Tensor, cache_key=None) -> Condition:
        """Condition of ``photo`` [H, W, 3] (display space, [0, 1]) masked by ``alpha`` [H, W, 1];
        cached under ``cache_key`` (e.g. the view index) since a view's photo never changes."""
        if cache_key is not None and cache_key in self._conditions:
            return self._conditions[cache_key]
        m = self.model
        size = self.cfg.resolution
        p = to_square(photo.detach().float(), size).to(m.device)  # [1, 3, S, S]
        a = to_square(alpha.detach().float(), size).to(m.device)  # [1, 1, S, S]
        p = (p * 2.0 - 1.0) * a * 0.5 + 0.5  # masked in [-1, 1] as MaterialFusion does: grey background
        cond = m.encode_condition(p)
        if cache_key is not None:
            self._conditions[cache_key] = cond
        return cond

    def loss(
        self, albedo: Tensor, orm: Tensor, alpha: Tensor, photo: Tensor, fraction: float = 0.0, cache_key=None,
        photo_alpha: Tensor | None = None,
    ) -> Tensor:
        """The prior's loss for one view (a scalar on ``albedo``'s device, differentiable w.r.t.
        ``albedo`` and ``orm``; ``alpha`` and ``photo`` are treated as constants).

        albedo: [H, W, 3] linear base colour; orm: [H, W, 3] = (0, roughness, metallic);
        alpha: [H, W, 1] mask in [0, 1] (pixels where it is 0 get no gradient); photo: [H, W, 3]
        display-space photo of the same view; fraction: position in the prior's window (annealing);
        photo_alpha: [H, W, 1] the photo's own mask for the conditioning (default ``alpha``; pass it
        when ``alpha`` varies between calls with the same ``cache_key``)."""
        for name, x, c in (("albedo", albedo, 3), ("orm", orm, 3), ("alpha", alpha, 1), ("photo", photo, 3)):
            if x.ndim != 3 or x.shape[-1] != c or x.shape[:2] != albedo.shape[:2]:
                raise ValueError(f"{name} must be [H, W, {c}] like albedo {tuple(albedo.shape)}, got {tuple(x.shape)}")
        m, c = self.model, self.cfg
        cond = self.condition(photo, alpha if photo_alpha is None else photo_alpha, cache_key)
        a = alpha.detach().float().clamp(0, 1)  # [H, W, 1]
        mask = to_square(a, c.resolution).to(m.device)  # [1, 1, S, S]
        # masked before resizing: background pixels then hold 0 and get exactly no gradient
        alb = to_square(linear_to_srgb(albedo.float()) * a, c.resolution).to(m.device)  # [1, 3, S, S]
        orm_sq = to_square(orm.float().clamp(0, 1) * a, c.resolution).to(m.device)  # [1, 3, S, S]
        lo, hi = self.time_range(fraction)
        t = int(torch.randint(lo, hi + 1, (1,), generator=self.rng))
        self.last_t = t
        h = c.resolution // m.vae_factor
        noise = torch.randn(1, 8, h, h, generator=self.rng).to(m.device)  # [1, 8, h, h]
        if c.loss == "sds":
            latents = m.encode_materials(alb, orm_sq)
            out = sds_loss(m, latents, cond, torch.tensor([t]), noise, c.cfg_scale, c.grad_clip)
        else:
            out = denoise_loss(m, alb, orm_sq, mask, cond, t, noise, c.cfg_scale, c.denoise_steps, c.image_weight,
                               generator=self.rng)
        return out.to(albedo.device)

    def gaussian_loss(
        self, params: dict[str, Tensor], viewmat: Tensor, K: Tensor, width: int, height: int, photo: Tensor,
        photo_alpha: Tensor, step: int, view=None, backend: str = "auto",
    ) -> Tensor:
        """:func:`gaussian_prior_loss` with this prior (photo [H, W, 3] display space, photo_alpha [H, W, 1])."""
        return gaussian_prior_loss(self, params, viewmat, K, width, height, photo, photo_alpha, step, view, backend)

    def state_dict(self) -> dict:
        return {"rng": self.rng.get_state()}

    def load_state_dict(self, sd: dict) -> None:
        self.rng.set_state(sd["rng"])


def gaussian_material_maps(
    params: dict[str, Tensor], viewmat: Tensor, K: Tensor, width: int, height: int, backend: str = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """Albedo [H, W, 3] (linear), ORM [H, W, 3] = (0, roughness, metallic) and alpha [H, W, 1] of
    the Gaussians in one view, with gradients to the material logits only.

    The prior judges what the materials look like, not where the surface is: geometry (means,
    scales, quaternions, opacities, SH) is detached, so the compositing weights are constants
    and a material loss cannot move, grow or fade Gaussians (MaterialFusion likewise freezes the
    mesh's vertices in its prior pass). The radiance blend skips shading, which is not needed."""
    from invrender.distill.model import MATERIAL_NAMES, render_prd  # noqa: PLC0415

    p = {k: (v if k in MATERIAL_NAMES else v.detach()) for k, v in params.items()}
    out = render_prd(p, None, viewmat, K, width, height, 0, None, blend="radiance", backend=backend)
    g = out.gbuffer
    orm = torch.cat([torch.zeros_like(g.roughness), g.roughness, g.metallic], dim=-1)  # [H, W, 3]
    return g.albedo, orm, out.alpha.detach()


def gaussian_prior_loss(
    prior: MaterialPrior, params: dict[str, Tensor], viewmat: Tensor, K: Tensor, width: int, height: int,
    photo: Tensor, photo_alpha: Tensor, step: int, view=None, backend: str = "auto",
) -> Tensor:
    """The prior's loss on one training view of a Gaussian scene (what :class:`PRDTrainer` calls).

    The mask is the photo's alpha times the rendered coverage: the object as photographed, less
    the pixels the Gaussians barely cover, whose per-surface materials are ill-defined."""
    albedo, orm, alpha = gaussian_material_maps(params, viewmat, K, width, height, backend)
    mask = photo_alpha * alpha  # [H, W, 1]
    return prior.loss(albedo, orm, mask, photo, prior.fraction(step), cache_key=view, photo_alpha=photo_alpha)


def prior_window(schedule, start_stage: str) -> tuple[int, int]:
    """Inclusive steps ``(first, last)`` of a :class:`~invrender.distill.schedule.PRDSchedule` from
    the start of ``start_stage`` to the end of training."""
    from invrender.distill.schedule import STAGES  # noqa: PLC0415

    lengths = (schedule.radiance_steps, schedule.specular_steps, schedule.diffuse_steps, schedule.joint_steps)
    first = 1 + sum(lengths[: STAGES.index(start_stage)])
    return first, schedule.total
