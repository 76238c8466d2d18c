"""Configuration of the StableMaterial prior. Importing this module never imports diffusers or
transformers: ``TrainConfig`` embeds :class:`PriorConfig`, and a run with the prior off must stay light."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# MaterialFusion's released single-view StableMaterial weights (Litman et al. 2024)
DEFAULT_WEIGHTS_ID = "thebluser/stable-material"


@dataclass
class PriorConfig:
    """StableMaterial diffusion prior on the rendered albedo / ORM maps (MaterialFusion, Litman et al. 2024)."""

    path: str | None = None
    """Local folder (diffusers layout: unet/ vae/ image_encoder/ scheduler/) or Hugging Face id of the
    StableMaterial weights, e.g. ``thebluser/stable-material``. None: the prior is off."""
    weight: float = 0.05
    """Weight of the prior term in the training loss (``loss += weight * prior``); MaterialFusion weighs its
    latent term 0.02-0.05."""
    every: int = 1
    """Add the prior term every this many steps (it costs a few UNet passes per use)."""
    loss: Literal["denoise", "sds"] = "denoise"
    """denoise: MaterialFusion's loss (noise to t, denoise a few steps with CFG, regress the rendered maps
    onto the result in latent and image space); sds: classic score distillation (DreamFusion)."""
    resolution: int = 256
    """Square size the rendered maps and the photo are padded and resized to (latents are 1/8 of it)."""
    cfg_scale: float = 3.0
    """Classifier-free guidance scale (1: conditional branch only)."""
    t_min: float = 0.02
    """Smallest diffusion time sampled, as a fraction of the scheduler's training steps."""
    t_max: float = 0.98
    """Largest diffusion time sampled at the start of the prior's window."""
    anneal: bool = False
    """Lower the largest sampled time linearly from ``t_max`` to ``t_max_final`` over the prior's window
    (coarse corrections first, detail later)."""
    t_max_final: float = 0.5
    """Largest sampled time at the end of the window when ``anneal`` is on."""
    denoise_steps: int = 5
    """denoise loss: scheduler steps from t down to 0 (MaterialFusion: 5, i.e. t, 4t/5, ..., t/5)."""
    image_weight: float = 2.0
    """denoise loss: weight of the decoded-image MSE relative to the latent MSE (MaterialFusion's
    lambda_rgb / lambda_latent is 2-10)."""
    grad_clip: float | None = 1.0
    """sds loss: clamp the per-latent score difference to +-this (None: no clipping)."""
    start_stage: Literal["specular", "diffuse", "joint"] = "diffuse"
    """First PRD stage the prior acts in; it stays on through the later stages. In stage 2 (specular)
    metallic is held at 1 in the render, so the prior's metallic target is only meaningful from diffuse on."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the diffusion model runs; auto = the training device."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """Precision of the diffusion model; auto = float16 on CUDA, float32 on CPU."""

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def validate(self) -> None:
        """Raise ``ValueError`` naming the option for inconsistent settings."""
        if not 0.0 <= self.t_min < self.t_max <= 1.0:
            raise ValueError(f"--prior.t-min/--prior.t-max must satisfy 0 <= t_min < t_max <= 1, got {self.t_min}, {self.t_max}")
        if self.anneal and not self.t_min < self.t_max_final <= self.t_max:
            raise ValueError(f"--prior.t-max-final must lie in (t_min, t_max], got {self.t_max_final}")
        if self.every < 1:
            raise ValueError(f"--prior.every must be >= 1, got {self.every}")
        if self.resolution < 8 or self.resolution % 8:
            raise ValueError(f"--prior.resolution must be a positive multiple of 8 (the VAE's factor), got {self.resolution}")
        if self.denoise_steps < 1:
            raise ValueError(f"--prior.denoise-steps must be >= 1, got {self.denoise_steps}")
