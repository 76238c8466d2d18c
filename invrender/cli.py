"""The ``invrender`` command line: ``train | render | eval`` (tyro subcommands)."""

from __future__ import annotations

import json
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
class EvalConfig:
    """Measure a trained run on a split: PSNR (whole image and object pixels), SSIM, LPIPS when available."""

    run: Path
    """Run folder written by ``invrender train``."""
    out: Path | None = None
    """metrics.json path (default: RUN/metrics.json)."""
    split: Literal["train", "test"] = "test"
    backend: Literal["auto", "native", "torch", "gsplat"] = "auto"


def _train(cfg: TrainConfig) -> None:
    from invrender.train import train  # noqa: PLC0415

    train(cfg)


def _render(cfg: RenderConfig) -> None:
    from invrender.eval import render_split  # noqa: PLC0415

    paths = render_split(cfg.run, cfg.out, cfg.split, cfg.backend)
    print(f"wrote {len(paths)} images to {cfg.out}")


def _eval(cfg: EvalConfig) -> None:
    from invrender.eval import evaluate_run  # noqa: PLC0415

    out = cfg.out or Path(cfg.run) / "metrics.json"
    m = evaluate_run(cfg.run, out, cfg.split, cfg.backend)
    summary = {k: v for k, v in m.items() if k != "per_view"}
    print(json.dumps(summary, indent=2))
    print(f"wrote {out}")


COMMANDS = {"train": (TrainConfig, _train), "render": (RenderConfig, _render), "eval": (EvalConfig, _eval)}


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
