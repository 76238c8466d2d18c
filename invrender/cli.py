"""The ``invrender`` command line: ``train | render | relight | eval`` (tyro subcommands)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

from invrender.train import TrainConfig


@dataclass
class RenderConfig:
    """Render a trained run's views to RGBA PNGs named after the views (test_000.png, r_0.png, ...)."""

    run: Path
    """Run folder written by ``invrender train``."""
    out: Path
    """Output folder for the PNGs."""
    split: Literal["train", "test"] = "test"
    backend: Literal["auto", "native", "torch", "gsplat"] = "auto"


@dataclass
class RelightConfig:
    """Render a trained run's views under a new environment map: RGBA PNGs named after the views."""

    run: Path
    """Run folder written by ``invrender train``."""
    envmap: Path
    """Equirectangular environment map (.hdr or .exr, linear, Z up, row 0 looking up)."""
    out: Path
    """Output folder for the PNGs."""
    rotation: float = 0.0
    """Rotate the map counter-clockwise about +Z (seen from above) by this many degrees."""
    intensity: float = 1.0
    """Multiply the map's radiance by this factor."""
    split: Literal["train", "test"] = "test"
    """Which views to render."""
    albedo_scale: tuple[float, float, float] | None = None
    """Per-channel albedo multiplier R G B, e.g. the ``albedo_scale`` that ``invrender eval`` wrote to metrics.json."""
    backend: Literal["auto", "native", "torch", "gsplat"] = "auto"
    """Rasterizer backend."""


@dataclass
class EvalConfig:
    """Measure a trained run on a split: novel views, albedo, relighting, normals, roughness/metallic, progress."""

    run: Path
    """Run folder written by ``invrender train``."""
    out: Path | None = None
    """metrics.json path (default: RUN/metrics.json)."""
    split: Literal["train", "test"] = "test"
    """Which views to measure (the ground-truth maps usually exist for test only)."""
    envmaps: Path | None = None
    """Folder of <env>.hdr / .exr maps for the relighting ground truth rgba_<env> (default: the dataset's envmaps/)."""
    relight: bool = True
    """Measure relighting and the grey-material baseline (the slow part; --no-relight skips it)."""
    figures: Path | None = None
    """Folder for the comparison grids and metrics.md (default: RUN/eval)."""
    backend: Literal["auto", "native", "torch", "gsplat"] = "auto"
    """Rasterizer backend."""


def _train(cfg: TrainConfig) -> None:
    from invrender.train import train  # noqa: PLC0415

    train(cfg)


def _render(cfg: RenderConfig) -> None:
    from invrender.eval import render_split  # noqa: PLC0415

    paths = render_split(cfg.run, cfg.out, cfg.split, cfg.backend)
    print(f"wrote {len(paths)} images to {cfg.out}")


def _relight(cfg: RelightConfig) -> None:
    from invrender.relight import relight_split  # noqa: PLC0415

    paths = relight_split(
        cfg.run, cfg.envmap, cfg.out, rotation_deg=cfg.rotation, intensity=cfg.intensity, split=cfg.split,
        albedo_scale=cfg.albedo_scale, backend=cfg.backend,
    )
    print(f"wrote {len(paths)} images relit by {cfg.envmap} to {cfg.out}")


def _eval(cfg: EvalConfig) -> None:
    from invrender.eval import evaluate_run, format_summary  # noqa: PLC0415

    out = cfg.out or Path(cfg.run) / "metrics.json"
    m = evaluate_run(cfg.run, out, cfg.split, cfg.backend, envmaps_dir=cfg.envmaps, relight=cfg.relight,
                     figures_dir=cfg.figures)
    print(format_summary(m))
    print(f"wrote {out}; figures and metrics.md in {m['figures']}")


COMMANDS = {
    "train": (TrainConfig, _train),
    "render": (RenderConfig, _render),
    "relight": (RelightConfig, _relight),
    "eval": (EvalConfig, _eval),
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    names = ", ".join(COMMANDS)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: invrender {{{names}}} [--help]\n\nDifferentiable inverse rendering (PRD).\n")
        for name, (cls, _) in COMMANDS.items():
            print(f"  {name:8s} {(cls.__doc__ or '').strip().splitlines()[0]}")
        sys.exit(0 if argv else 2)
    if argv[0] not in COMMANDS:
        print(f"invrender: unknown command '{argv[0]}' (choose one of: {names})", file=sys.stderr)
        sys.exit(2)
    cls, fn = COMMANDS[argv[0]]
    cfg = tyro.cli(cls, args=argv[1:], prog=f"invrender {argv[0]}")
    try:
        fn(cfg)
    except (FileNotFoundError, ValueError) as e:
        # bad inputs (missing files, malformed datasets) end with one clear line, not a traceback
        print(f"invrender {argv[0]}: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
