"""The ``invrender`` command line: ``train | render | relight | eval | mesh | export | view`` (tyro subcommands)."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import tyro

from invrender.mesh.stage import MeshConfig
from invrender.prior.config import PriorConfig
from invrender.train import TrainConfig
from invrender.viewer.app import ViewerConfig


@dataclass
class RenderConfig:
    """Render a trained run's views to RGBA PNGs named after the views (test_000.png, r_0.png, ...)."""

    run: Path
    """Run folder written by ``invrender train``."""
    out: Path
    """Output folder for the PNGs."""
    split: Literal["train", "test"] = "test"
    backend: Literal["auto", "native", "torch", "gsplat"] = "auto"
    geometry: Literal["gaussian", "mesh"] = "gaussian"
    """Render the Gaussians or the mesh stage's textured mesh (RUN/mesh/textured_mesh.pt)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to render: auto = CUDA when available, else the CPU."""


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
    geometry: Literal["gaussian", "mesh"] = "gaussian"
    """Relight the Gaussians or the mesh stage's textured mesh."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to render: auto = CUDA when available, else the CPU."""


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
    """Folder for the comparison grids and metrics.md (default: RUN/eval, RUN/eval_mesh for the mesh)."""
    backend: Literal["auto", "native", "torch", "gsplat"] = "auto"
    """Rasterizer backend."""
    geometry: Literal["gaussian", "mesh"] = "gaussian"
    """Measure the Gaussians or the mesh stage's textured mesh (default out: RUN/metrics_mesh.json)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to render: auto = CUDA when available, else the CPU."""


@dataclass
class MeshCommandConfig:
    """Run the mesh stage on a trained run: extract a mesh, train its UV textures, measure it."""

    run: Path
    """Run folder written by ``invrender train`` (it must have reached the PRD stages)."""
    mesh: MeshConfig = field(default_factory=MeshConfig)
    """Extraction, texture size, steps and weights of the mesh stage (``--mesh.enable`` is implied)."""
    resume: bool = False
    """Continue from RUN/mesh/ckpt.pt instead of extracting again."""
    eval: bool = True
    """Measure the mesh on the test views (RUN/metrics_mesh.json, RUN/eval_mesh/) at the end."""
    backend: Literal["auto", "native", "torch", "gsplat"] = "auto"
    """Rasterizer backend (Gaussians for the extraction; the mesh uses native on CPU, nvdiffrast on CUDA)."""
    prior: PriorConfig = field(default_factory=PriorConfig)
    """Optional StableMaterial prior on the textures' albedo / ORM (``--prior.path``; ``[prior]`` extra)."""


@dataclass
class ExportConfig:
    """Export a trained run in the capture's frame: mesh (.glb, .obj), splats (.ply) or light (.hdr/.exr)."""

    run: Path
    """Run folder written by ``invrender train``."""
    format: Literal["glb", "obj", "ply", "envmap"]
    """glb / obj: the textured mesh (needs the mesh stage); ply: 3DGS splats + materials; envmap: the learned light."""
    out: Path
    """Output file: .glb, .obj (its .mtl and PNG textures go beside it), .ply, or .hdr / .exr for envmap."""
    envmap_height: int = 256
    """Rows of the equirectangular environment map (its width is twice this)."""
    up: Literal["z", "y"] = "z"
    """The capture's up axis; glb files rotate it onto glTF's +Y up (z: NeRF-synthetic / TensoIR / Blender)."""
    glb_prd: bool = True
    """glb: also write the INVRENDER_materials_prd extension (progress, radiance, SH, shadows; viewers skip it)."""


def _train(cfg: TrainConfig) -> None:
    from invrender.train import train  # noqa: PLC0415

    train(cfg)


def _render(cfg: RenderConfig) -> None:
    from invrender.eval import render_split  # noqa: PLC0415

    from invrender.train import resolve_device  # noqa: PLC0415

    paths = render_split(cfg.run, cfg.out, cfg.split, cfg.backend, geometry=cfg.geometry,
                         device=resolve_device(cfg.device))
    print(f"wrote {len(paths)} images to {cfg.out}")


def _relight(cfg: RelightConfig) -> None:
    from invrender.relight import relight_split  # noqa: PLC0415
    from invrender.train import resolve_device  # noqa: PLC0415

    paths = relight_split(
        cfg.run, cfg.envmap, cfg.out, rotation_deg=cfg.rotation, intensity=cfg.intensity, split=cfg.split,
        albedo_scale=cfg.albedo_scale, backend=cfg.backend, geometry=cfg.geometry, device=resolve_device(cfg.device),
    )
    print(f"wrote {len(paths)} images relit by {cfg.envmap} to {cfg.out}")


def _eval(cfg: EvalConfig) -> None:
    from invrender.eval import evaluate_run, format_summary  # noqa: PLC0415
    from invrender.train import resolve_device  # noqa: PLC0415

    out = cfg.out or Path(cfg.run) / ("metrics_mesh.json" if cfg.geometry == "mesh" else "metrics.json")
    m = evaluate_run(cfg.run, out, cfg.split, cfg.backend, envmaps_dir=cfg.envmaps, relight=cfg.relight,
                     figures_dir=cfg.figures, geometry=cfg.geometry, device=resolve_device(cfg.device))
    print(format_summary(m))
    print(f"wrote {out}; figures and metrics.md in {m['figures']}")


def _mesh(cfg: MeshCommandConfig) -> None:
    from invrender.mesh.stage import run_mesh_stage  # noqa: PLC0415
    from invrender.train import format_mesh_summary  # noqa: PLC0415

    summary = run_mesh_stage(cfg.run, dataclasses.replace(cfg.mesh, enable=True), backend=cfg.backend,
                             resume=cfg.resume, evaluate=cfg.eval, prior=cfg.prior)
    print(format_mesh_summary(summary))


def _export(cfg: ExportConfig) -> None:
    from invrender.export.run import export_run  # noqa: PLC0415

    paths = export_run(cfg.run, cfg.format, cfg.out, envmap_height=cfg.envmap_height, up=cfg.up,
                       glb_prd=cfg.glb_prd)
    extra = f" (+ {len(paths) - 1} files beside it)" if len(paths) > 1 else ""
    print(f"wrote {cfg.format} export to {paths[-1]}{extra}")


def _view(cfg: ViewerConfig) -> None:
    from invrender.viewer.app import run_viewer  # noqa: PLC0415

    try:
        run_viewer(cfg)
    except ImportError as e:  # the [viewer] extra is missing: say so in one line
        print(f"invrender view: error: {e}", file=sys.stderr)
        sys.exit(1)


COMMANDS = {
    "train": (TrainConfig, _train),
    "render": (RenderConfig, _render),
    "relight": (RelightConfig, _relight),
    "eval": (EvalConfig, _eval),
    "mesh": (MeshCommandConfig, _mesh),
    "export": (ExportConfig, _export),
    "view": (ViewerConfig, _view),
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
