"""Loading and running StableMaterial (MaterialFusion, Litman et al. 2024), frozen.

StableMaterial is Stable Diffusion 2.1-base fine-tuned to predict a material from a photo:

- UNet input: 12 channels = 8 noisy material latents (albedo latent + ORM latent, each scaled by
  the VAE's ``scaling_factor``) + 4 latents of the conditioning photo (VAE mode, *not* scaled,
  as in Zero-1-to-3 whose pipeline it follows); output: 8 channels, v-prediction.
- Cross-attention: the CLIP image embedding (``image_embeds``, 512 for ViT-B/32) repeated twice
  along the feature axis to fill SD-2.1's 1024-wide context, one token.
- Unconditional branch (classifier-free guidance): zeroed embedding *and* zeroed photo latent.
- ORM image = (0, roughness, metallic); albedo in sRGB; all images in [-1, 1] for the VAE.

:func:`load_stablematerial` reads the weights from a diffusers-layout folder or a Hugging Face id
and checks the configs against these facts before loading any weight, so a wrong checkpoint
fails with a message instead of producing noise. diffusers / transformers are imported here
only, when the prior is switched on.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from invrender.prior.config import DEFAULT_WEIGHTS_ID

MATERIAL_LATENTS = 8  # albedo (4) + ORM (4)
IMAGE_LATENTS = 4
# OpenAI CLIP's normalization; the weights' feature_extractor/preprocessor_config.json wins when present
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_HF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def require_prior_deps():
    """Import diffusers and transformers, or raise an ``ImportError`` that names the extra."""
    try:
        import diffusers  # noqa: PLC0415
        import transformers  # noqa: PLC0415
    except ImportError as e:
        raise ImportError(
            f"the StableMaterial prior (--prior.path) needs diffusers and transformers, which are not installed "
            f"({e.name}): pip install -e \".[prior]\" (or pip install \"invrender[prior]\")"
        ) from e
    return diffusers, transformers


def how_to_get_weights() -> str:
    return (
        f"To use the StableMaterial prior offline, download the weights on a machine with network access: "
        f"`hf download {DEFAULT_WEIGHTS_ID} --local-dir stable-material` (older huggingface_hub: "
        f"`huggingface-cli download {DEFAULT_WEIGHTS_ID} --local-dir stable-material`), copy the folder here and "
        f"pass `--prior.path stable-material`"
    )


def _offline_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_weights(path: str) -> tuple[str, bool, str]:
    """``(source, local_files_only, description)`` for a folder or a Hugging Face id.

    A folder is read from disk only; an id goes through the Hugging Face cache, offline
    (cache only) when ``HF_HUB_OFFLINE`` is set. Anything else raises ``FileNotFoundError``."""
    p = Path(path).expanduser()
    if p.is_dir():
        return str(p), True, f"folder {p.resolve()}"
    if p.exists():
        raise FileNotFoundError(f"--prior.path {p.resolve()} is a file, not a weights folder. " + how_to_get_weights())
    if _HF_ID.match(path) and not path.startswith((".", "~")):
        offline = _offline_env()
        return path, offline, f"Hugging Face id '{path}'" + (" (HF_HUB_OFFLINE: local cache only)" if offline else "")
    raise FileNotFoundError(f"StableMaterial weights: no folder at {p.resolve()}. " + how_to_get_weights())


@dataclass
class Condition:
    """What StableMaterial is conditioned on, for one photo (computed once per view and cached)."""

    embeds: Tensor  # [B, 1, 2 * projection_dim] CLIP image embedding, repeated to the context width
    image_latents: Tensor  # [B, 4, h, w] VAE mode of the photo, not scaled


class StableMaterial:
    """The frozen StableMaterial networks and the few operations the losses need.

    Every method takes and returns float32 tensors in NCHW layout on :attr:`device`; the networks
    run in :attr:`dtype`. Images are in [0, 1] (the [-1, 1] mapping of the VAE happens here)."""

    def __init__(self, unet, vae, image_encoder, scheduler, image_mean, image_std, source: str):
        self.unet, self.vae, self.image_encoder, self.scheduler = unet, vae, image_encoder, scheduler
        self.source = source
        self.device = next(unet.parameters()).device
        self.dtype = next(unet.parameters()).dtype
        self.scaling_factor = float(vae.config.scaling_factor)
        self.vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)  # 8 for SD's VAE
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.alphas_cumprod = scheduler.alphas_cumprod.to(self.device, torch.float32)  # [T]
        self.clip_size = int(image_encoder.config.image_size)
        self.image_mean = torch.tensor(image_mean, device=self.device).view(1, 3, 1, 1)
        self.image_std = torch.tensor(image_std, device=self.device).view(1, 3, 1, 1)

    # ------------------------------------------------------------------ VAE
    def _encode(self, img: Tensor) -> Tensor:
        """VAE mode of ``img`` [B, 3, H, W] in [0, 1] -> [B, 4, H/f, W/f] (unscaled)."""
        x = (img * 2.0 - 1.0).to(self.dtype)
        return self.vae.encode(x).latent_dist.mode().float()

    def encode_materials(self, albedo: Tensor, orm: Tensor) -> Tensor:
        """Material latents ``[B, 8, h, w]`` (scaled) of sRGB albedo and ORM ``[B, 3, H, W]`` in [0, 1].
        Differentiable with respect to the images (the VAE's weights are frozen)."""
        return torch.cat([self._encode(albedo), self._encode(orm)], dim=1) * self.scaling_factor

    @torch.no_grad()
    def decode_materials(self, latents: Tensor) -> tuple[Tensor, Tensor]:
        """Inverse of :meth:`encode_materials`: albedo, ORM ``[B, 3, H, W]`` in [0, 1]."""
        z = (latents / self.scaling_factor).to(self.dtype)
        za, zo = z.chunk(2, dim=1)
        albedo = self.vae.decode(za).sample.float()
        orm = self.vae.decode(zo).sample.float()
        return (albedo * 0.5 + 0.5).clamp(0, 1), (orm * 0.5 + 0.5).clamp(0, 1)

    # ------------------------------------------------------------------ conditioning
    @torch.no_grad()
    def encode_condition(self, photo: Tensor) -> Condition:
        """Condition from a photo ``[B, 3, H, W]`` in [0, 1] (already masked to the object)."""
        clip_in = F.interpolate(photo, size=(self.clip_size, self.clip_size), mode="bicubic", align_corners=False,
                                antialias=True).clamp(0, 1)
        clip_in = ((clip_in - self.image_mean) / self.image_std).to(self.dtype)
        emb = self.image_encoder(pixel_values=clip_in).image_embeds.float()  # [B, P]
        # SD-2.1's context is 1024 wide and ViT-B/32's embedding 512: StableMaterial tiles it twice
        emb = emb[:, None, :].repeat(1, 1, 2)  # [B, 1, 2P]
        return Condition(embeds=emb, image_latents=self._encode(photo))

    # ------------------------------------------------------------------ UNet
    @torch.no_grad()
    def predict_v(self, x_t: Tensor, t: Tensor, cond: Condition, cfg_scale: float) -> Tensor:
        """Guided v-prediction ``[B, 8, h, w]`` for noisy material latents ``x_t`` at integer times ``t`` [B].

        ``cfg_scale == 1`` runs the conditional branch only; otherwise one batched pass of the
        unconditional (zeroed embedding and photo latent) and conditional branches,
        ``v = v_u + s (v_c - v_u)`` (Ho & Salimans 2022)."""
        t = t.to(self.device).reshape(-1).expand(x_t.shape[0])
        if cfg_scale == 1.0:
            x = torch.cat([x_t, cond.image_latents], dim=1)
            return self.unet(x.to(self.dtype), t, encoder_hidden_states=cond.embeds.to(self.dtype)).sample.float()
        img = torch.cat([torch.zeros_like(cond.image_latents), cond.image_latents])
        x = torch.cat([torch.cat([x_t, x_t]), img], dim=1)  # [2B, 12, h, w]
        emb = torch.cat([torch.zeros_like(cond.embeds), cond.embeds])
        v = self.unet(x.to(self.dtype), torch.cat([t, t]), encoder_hidden_states=emb.to(self.dtype)).sample.float()
        v_u, v_c = v.chunk(2)
        return v_u + cfg_scale * (v_c - v_u)


def _config_problems(unet_cfg: dict, vae_cfg: dict, sched_cfg: dict, clip_cfg) -> list[str]:
    problems = []
    if unet_cfg.get("in_channels") != MATERIAL_LATENTS + IMAGE_LATENTS:
        problems.append(f"unet/config.json in_channels is {unet_cfg.get('in_channels')}, expected 12 "
                        "(8 noisy material latents + 4 photo latents)")
    if unet_cfg.get("out_channels") != MATERIAL_LATENTS:
        problems.append(f"unet/config.json out_channels is {unet_cfg.get('out_channels')}, expected 8 (albedo + ORM latents)")
    if vae_cfg.get("latent_channels") != IMAGE_LATENTS:
        problems.append(f"vae/config.json latent_channels is {vae_cfg.get('latent_channels')}, expected 4")
    if sched_cfg.get("prediction_type") != "v_prediction":
        problems.append(f"scheduler/scheduler_config.json prediction_type is {sched_cfg.get('prediction_type')!r}, "
                        "expected 'v_prediction'")
    ctx = unet_cfg.get("cross_attention_dim")
    proj = getattr(clip_cfg, "projection_dim", None)
    if proj is None or ctx != 2 * proj:
        problems.append(f"unet cross_attention_dim {ctx} is not twice the image encoder's projection_dim {proj} "
                        "(StableMaterial repeats the CLIP embedding twice)")
    return problems


def _read_image_stats(source: str, local: bool, local_only: bool) -> tuple[tuple, tuple]:
    """The CLIP normalization from ``feature_extractor/preprocessor_config.json`` (CLIP's defaults if absent)."""
    try:
        if local:
            f = Path(source) / "feature_extractor" / "preprocessor_config.json"
        else:
            from huggingface_hub import hf_hub_download  # noqa: PLC0415

            f = Path(hf_hub_download(source, "preprocessor_config.json", subfolder="feature_extractor",
                                     local_files_only=local_only))
        d = json.loads(f.read_text())
        return tuple(d["image_mean"]), tuple(d["image_std"])
    except Exception:  # noqa: BLE001  (optional file; the constants are what every CLIP ViT uses)
        return CLIP_MEAN, CLIP_STD


def load_stablematerial(path: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> StableMaterial:
    """Load StableMaterial from a diffusers-layout folder (``unet/ vae/ image_encoder/ scheduler/``)
    or a Hugging Face id, verify its configs (see the module docstring) and freeze it.

    Raises ``FileNotFoundError`` naming the folder or id tried and how to get the weights,
    ``ValueError`` listing every config mismatch, ``ImportError`` naming the ``[prior]`` extra."""
    diffusers, transformers = require_prior_deps()
    source, local_only, desc = resolve_weights(path)
    local = Path(source).is_dir()
    kw = {"local_files_only": local_only}
    try:
        with warnings.catch_warnings():
            # diffusers passes a deprecated argument to huggingface_hub; its warning would break the one-line error
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks")
            unet_cfg = dict(diffusers.UNet2DConditionModel.load_config(source, subfolder="unet", **kw))
            vae_cfg = dict(diffusers.AutoencoderKL.load_config(source, subfolder="vae", **kw))
            sched_cfg = dict(diffusers.DDPMScheduler.load_config(source, subfolder="scheduler", **kw))
            clip_cfg = transformers.CLIPVisionConfig.from_pretrained(source, subfolder="image_encoder", **kw)
    except Exception as e:  # noqa: BLE001  (hub, cache and file errors come in many types; all mean "not there")
        first = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else type(e).__name__
        raise FileNotFoundError(f"could not read StableMaterial configs from {desc} ({first}). "
                                + how_to_get_weights()) from e
    problems = _config_problems(unet_cfg, vae_cfg, sched_cfg, clip_cfg)
    if problems:
        raise ValueError(f"{desc} is not a StableMaterial checkpoint: " + "; ".join(problems))
    try:
        # low_cpu_mem_usage off: it would need accelerate, and these weights fit in memory twice
        dkw = dict(kw, torch_dtype=dtype, low_cpu_mem_usage=False)
        unet = diffusers.UNet2DConditionModel.from_pretrained(source, subfolder="unet", **dkw)
        vae = diffusers.AutoencoderKL.from_pretrained(source, subfolder="vae", **dkw)
        enc = transformers.CLIPVisionModelWithProjection.from_pretrained(source, subfolder="image_encoder", **kw)
    except (OSError, EnvironmentError) as e:
        raise FileNotFoundError(f"could not load StableMaterial weights from {desc} ({e}). " + how_to_get_weights()) from e
    # DDPM whatever the checkpoint shipped (often DDIM): MaterialFusion's loss needs custom
    # timesteps in set_timesteps, and the noise schedule (betas) is all that is taken from it
    scheduler = diffusers.DDPMScheduler.from_config(sched_cfg)
    mean, std = _read_image_stats(source, local, local_only)
    enc.to(dtype=dtype)  # the diffusers models were loaded in dtype already
    for m in (unet, vae, enc):
        m.requires_grad_(False)
        m.eval()
        m.to(device)
    return StableMaterial(unet, vae, enc, scheduler, mean, std, source=desc)
