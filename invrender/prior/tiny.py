"""A tiny, randomly initialized StableMaterial of the real one's shape, for tests and benchmarks.

Same interfaces as the released weights (UNet 12 -> 8 channels, v-prediction, CLIP embedding
repeated twice to the cross-attention width, diffusers folder layout), a few hundred thousand
parameters instead of ~1.2 billion. It predicts nothing meaningful; it exercises the code paths.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from invrender.prior.stablematerial import CLIP_MEAN, CLIP_STD, require_prior_deps


def save_tiny_stablematerial(
    folder: str | Path,
    *,
    in_channels: int = 12,
    out_channels: int = 8,
    prediction_type: str = "v_prediction",
    projection_dim: int = 16,
    image_size: int = 32,
    seed: int = 0,
) -> Path:
    """Write a tiny StableMaterial to ``folder`` with ``save_pretrained`` and return the folder.

    The VAE has two levels (factor 2, not SD's 8); the keyword arguments exist so tests can
    write deliberately wrong checkpoints."""
    diffusers, transformers = require_prior_deps()
    folder = Path(folder)
    with torch.random.fork_rng(devices=[]):  # do not disturb the caller's random stream
        torch.manual_seed(seed)
        unet = diffusers.UNet2DConditionModel(
            sample_size=16, in_channels=in_channels, out_channels=out_channels, layers_per_block=1,
            block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=2 * projection_dim,
            attention_head_dim=8, norm_num_groups=32,
        )
        vae = diffusers.AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64), layers_per_block=1,
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
            norm_num_groups=32, sample_size=32,
        )
        clip_cfg = transformers.CLIPVisionConfig(
            hidden_size=32, intermediate_size=37, projection_dim=projection_dim, num_hidden_layers=2,
            num_attention_heads=4, image_size=image_size, patch_size=8, num_channels=3,
        )
        encoder = transformers.CLIPVisionModelWithProjection(clip_cfg)
    scheduler = diffusers.DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type=prediction_type, clip_sample=False,
    )
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    encoder.save_pretrained(folder / "image_encoder")
    scheduler.save_pretrained(folder / "scheduler")
    fe = folder / "feature_extractor"
    fe.mkdir(parents=True, exist_ok=True)
    (fe / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD),
        "size": {"shortest_edge": image_size}, "crop_size": {"height": image_size, "width": image_size},
    }, indent=2))
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableMaterialPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        "scheduler": ["diffusers", "DDPMScheduler"], "feature_extractor": ["transformers", "CLIPImageProcessor"],
    }, indent=2))
    return folder
