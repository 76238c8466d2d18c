"""Cost of one StableMaterial prior step: measured with the tiny model on this CPU, estimated for
the real model from counted FLOPs.

1. Measured: a tiny random StableMaterial (:mod:`invrender.prior.tiny`) at ``--tiny-resolution``
   64 px, whose 2-level VAE gives the same 32 x 32 latent grid as the real model at the prior's
   default 256 px. Median seconds of ``MaterialPrior.loss`` forward + backward for ``sds`` and
   ``denoise`` (conditioning cached, as in training).
2. Counted: ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add counts 2) on the tiny
   networks and on the real architecture, SD-2.1-base's UNet with 12 in / 8 out channels, SD's VAE
   and CLIP ViT-B/32, built on the ``meta`` device (no weights, no download, no memory).
3. Estimated: per-step FLOPs of the real model divided by an assumed sustained throughput
   (``--tflops``, default 400 TFLOP/s: roughly 40 % of an H100 SXM's 989 dense bf16 TFLOP/s, what
   a diffusion UNet sustains in practice; an assumption, not a measurement).

Per prior step (one view, CFG on: each UNet pass runs the unconditional and conditional branch
as a batch of 2): sds = 1 guided UNet pass + VAE encoding of albedo and ORM with backward (~3x
forward); denoise = ``steps`` guided UNet passes + the same encoding + 2 VAE decodes.

Usage:
    python scripts/bench_prior.py [--repeats 5] [--tflops 400] [--resolution 256]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from invrender.prior.config import PriorConfig  # noqa: E402
from invrender.prior.guidance import MaterialPrior  # noqa: E402
from invrender.prior.stablematerial import load_stablematerial, require_prior_deps  # noqa: E402
from invrender.prior.tiny import save_tiny_stablematerial  # noqa: E402

# stabilityai/stable-diffusion-2-1-base unet/config.json, with StableMaterial's 12 in / 8 out channels
SD21_UNET = dict(
    sample_size=64, in_channels=12, out_channels=8, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True, norm_num_groups=32,
)
SD_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
)
CLIP_B32 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                image_size=224, patch_size=32, projection_dim=512)


def cpu_matmul_rate() -> float:
    """FLOP/s of a float32 1024^3 matmul on this CPU's torch threads: the best case for the real UNet here."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    t0 = time.perf_counter()
    for _ in range(5):
        a @ b
    return 5 * 2 * 1024**3 / (time.perf_counter() - t0)


def count(fn) -> float:
    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def tiny_numbers(args) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as d:
        model = load_stablematerial(str(save_tiny_stablematerial(d)))
        S = args.tiny_resolution
        g = torch.Generator().manual_seed(0)
        albedo = torch.rand(S, S, 3, generator=g, requires_grad=True)
        orm = torch.rand(S, S, 3, generator=g, requires_grad=True)
        alpha, photo = torch.ones(S, S, 1), torch.rand(S, S, 3, generator=g)
        h = S // model.vae_factor
        cond = model.encode_condition(photo.permute(2, 0, 1)[None])
        x = torch.randn(1, 8, h, h)
        out["unet_fwd_flops"] = count(lambda: model.predict_v(x, torch.tensor([500]), cond, 1.0))
        for kind in ("sds", "denoise"):
            prior = MaterialPrior(PriorConfig(path="tiny", loss=kind, resolution=S), model=model)

            def step():
                prior.loss(albedo, orm, alpha, photo, cache_key=0).backward()

            step()  # warm-up, and caches the conditioning
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - t0)
            out[f"{kind}_s"] = statistics.median(times)
            out[f"{kind}_flops"] = count(step)
    out["latent"] = h
    return out


def real_flops(resolution: int) -> dict:
    diffusers, transformers = require_prior_deps()
    h = resolution // 8
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(**SD21_UNET)
        vae = diffusers.AutoencoderKL(**SD_VAE)
        clip = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**CLIP_B32))
        n_unet = sum(p.numel() for p in unet.parameters())
        x2 = torch.randn(2, 12, h, h)  # CFG batch: (uncond, cond)
        ctx = torch.randn(2, 1, 1024)
        img = torch.randn(1, 3, resolution, resolution)
        x512 = torch.randn(1, 12, 64, 64)
        z = torch.randn(1, 4, h, h)
        r = {
            "unet_params": n_unet,
            "unet_fwd_64": count(lambda: unet(x512, torch.tensor([500]), encoder_hidden_states=ctx[:1])),
            "unet_cfg_fwd": count(lambda: unet(x2, torch.tensor([500, 500]), encoder_hidden_states=ctx)),
            "vae_enc": count(lambda: vae.encode(img)),
            "vae_dec": count(lambda: vae.decode(z)),
            "clip": count(lambda: clip(pixel_values=torch.randn(1, 3, 224, 224))),
        }
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tiny-resolution", type=int, default=64)
    ap.add_argument("--resolution", type=int, default=256, help="prior resolution of the real-model estimate")
    ap.add_argument("--denoise-steps", type=int, default=5)
    ap.add_argument("--tflops", type=float, default=400.0, help="assumed sustained TFLOP/s of the GPU")
    args = ap.parse_args()
    torch.manual_seed(0)

    t = tiny_numbers(args)
    print(f"tiny StableMaterial on CPU ({torch.get_num_threads()} threads), {args.tiny_resolution} px -> "
          f"{t['latent']}x{t['latent']} latents, CFG on:")
    print(f"  one UNet forward (batch 1): {t['unet_fwd_flops'] / 1e9:.3f} GFLOP")
    for kind in ("sds", "denoise"):
        print(f"  {kind:8s} step (fwd + bwd): {t[f'{kind}_s'] * 1e3:8.1f} ms   {t[f'{kind}_flops'] / 1e9:7.2f} GFLOP")

    r = real_flops(args.resolution)
    h = args.resolution // 8
    enc_bwd = 2 * 3 * r["vae_enc"]  # albedo + ORM, forward and backward (backward ~ 2x forward)
    sds = r["unet_cfg_fwd"] + enc_bwd
    den = args.denoise_steps * r["unet_cfg_fwd"] + enc_bwd + 2 * r["vae_dec"]
    rate = args.tflops * 1e12
    print(f"\nreal StableMaterial (SD-2.1-base UNet 12->8, {r['unet_params'] / 1e6:.0f} M parameters), counted on meta:")
    print(f"  UNet forward at 64x64 latents (512 px, batch 1): {r['unet_fwd_64'] / 1e12:.3f} TFLOP")
    print(f"  UNet guided forward at {h}x{h} latents ({args.resolution} px, batch 2): {r['unet_cfg_fwd'] / 1e12:.3f} TFLOP")
    print(f"  VAE encode {args.resolution} px: {r['vae_enc'] / 1e12:.3f} TFLOP, decode: {r['vae_dec'] / 1e12:.3f} TFLOP; "
          f"CLIP ViT-B/32 (once per view, cached): {r['clip'] / 1e9:.1f} GFLOP")
    print(f"  sds step:     {sds / 1e12:.2f} TFLOP -> {sds / rate * 1e3:.1f} ms at an assumed {args.tflops:.0f} TFLOP/s")
    print(f"  denoise step: {den / 1e12:.2f} TFLOP -> {den / rate * 1e3:.1f} ms at an assumed {args.tflops:.0f} TFLOP/s "
          f"({args.denoise_steps} steps)")
    print("  (the assumed rate is ~40 % of an H100 SXM's dense bf16 peak; fp16 weights, batch of one view; a floor:")
    print("   at batch 2 and 32x32 latents kernel launches, not FLOPs, may dominate)")
    cpu = cpu_matmul_rate()
    print(f"  on this CPU at its float32 matmul rate ({cpu / 1e9:.0f} GFLOP/s): sds {sds / cpu:.0f} s, "
          f"denoise {den / cpu:.0f} s per step: GPU only")


if __name__ == "__main__":
    main()
