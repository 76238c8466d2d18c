"""The PRD schedule (Ye, Hou, Zhou 2024, sec. 4): explicit stages and the switches between them.

    stage 1  radiance    3DGS pre-training (the foundation's training; progress 0)
    stage 2  specular    albedo/roughness/progress/light learned, metallic held at 1,
                         final = progress * I_spec + (1 - progress) * I_raw
    stage 3  diffuse     full PBR: loss L_rgb + lambda_progress * MSE(mask, progress)
                         + lambda_light * L_light (white-light prior)
    stage 4  joint       everything together, progress' learning rate lowered

Presets (``invrender train --preset``) keep this schedule and change only the blend:
``prd`` learns the progress map, ``pbr`` holds it at 1 (the physically based baseline) and
``radiance`` at 0 (pure radiance field, trained for the same number of steps).

The schedule is a small dataclass over step counts; :meth:`PRDSchedule.stage_at` and
:meth:`PRDSchedule.switch_at` are pure functions of the step and are unit-tested.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

from invrender.distill.reflection import ReflectionConfig
from invrender.distill.visibility import AOConfig

STAGES = ("radiance", "specular", "diffuse", "joint")
PRESETS = ("prd", "pbr", "radiance")


@dataclass
class DistillConfig:
    """Stages 2-4 of PRD: lengths, initial values, loss weights and learning rates."""

    specular_steps: int = 400
    """Stage 2 length (specular distillation; metallic held at 1)."""
    diffuse_steps: int = 1200
    """Stage 3 length (full PBR with the progress and white-light terms)."""
    joint_steps: int = 400
    """Stage 4 length (joint refinement, progress learning rate lowered). The defaults fit the
    whole prd run on the embedded scene in the 15-minute budget of 2 CPU cores."""
    light_resolution: int = 128
    """Face size of the learnable environment cube map (PRD: 128)."""
    light_init: float = 0.5
    """Initial uniform radiance of the environment."""
    albedo_init: float = 0.99
    """Albedo of every Gaussian when stage 2 starts (PRD sets albedo and roughness to 0.99)."""
    roughness_init: float = 0.5
    """Roughness of every Gaussian when stage 2 starts. PRD starts from 0.99; in this schedule's
    2000 distillation steps roughness then never left the rough end (a rough lobe under a blurry
    light explains a mirror as well as a sharp one, so neither the light nor the roughness gets a
    gradient towards detail), and relighting was 2 dB worse on the embedded scene."""
    metallic_init: float = 0.02
    """Metallic every Gaussian starts stage 3 from (it is held at 1 during stage 2). Near 0: most
    surfaces are dielectric, and metallic rough surfaces look like diffuse ones under a blurry
    light, so a middling start drifted to ~0.5 on dielectrics (0.25 cost 0.7 dB of relighting on the
    embedded scene, docs/bench/distill_sweep_toybox_2026-11-28.md)."""
    metallic_from_radiance: bool = True
    """Start stage 3's metallic per Gaussian from the radiance field's view dependence
    (:func:`invrender.distill.model.view_dependence`) instead of ``metallic_init`` everywhere:
    ``metallic_init + (0.95 - metallic_init) sigmoid((v - metallic_vd_threshold) / metallic_vd_width)``.
    Started near 0, a metal whose reflections are blurred by a rough lobe looks like a diffuse
    surface and stays one (the embedded scene's copper box ended at metallic 0.02, the gold
    sphere at 0.70). On that scene, against ``metallic_init`` everywhere: relighting 23.49 /
    23.28 dB, albedo 21.84 / 21.40 dB, metallic MAE 0.164 / 0.172, roughness MAE 0.33 / 0.16."""
    metallic_vd_threshold: float = 0.30
    """View dependence at which that start is halfway (see ``metallic_from_radiance``). On the
    embedded scene the rendered view dependence is ~0.18 on dielectrics, ~0.3 on its metals;
    without ``roughness_reset``, 0.25 / 0.30 / 0.35 / 0.40 / 0.45 relit at 23.07 / 23.43 / 23.49 /
    23.43 / 23.37 dB (a lower one roughened the dielectrics); with it, 0.25 / 0.30 / 0.35 at
    23.75 / 23.78 / 23.76 dB, albedo 22.24 / 22.24 / 22.01 dB."""
    metallic_vd_width: float = 0.03
    """Softness of that switch."""
    roughness_reset: bool = True
    """At the stage-3 switch, give each Gaussian back ``roughness_init`` in proportion to how
    dielectric its metallic starts: ``r = lerp(roughness_init, r_2, s)``, ``s`` the sigmoid of
    ``metallic_from_radiance`` (0 everywhere without it, so every Gaussian restarts). Stage 2
    holds metallic at 1, so the roughness it learns is that of a metal explaining the pixel; on a
    dielectric that is a rough lobe standing in for the diffuse term (embedded scene: dielectric
    roughness 0.84 median against the truth's 0.47 without the reset, 0.59 with it; relighting
    23.49 → 23.76 dB, albedo 21.84 → 22.01 dB, roughness MAE 0.33 → 0.15)."""
    progress_init: float = 0.01
    """Initial progress (PRD: 0.01, so the radiance colour dominates at first)."""
    tonemapping: Literal["srgb", "aces"] = "srgb"
    """Tone mapping of the physically based colour before the blend."""
    lambda_progress: float = 0.02
    """Weight of MSE(object mask, progress map) in stages 3-4: pulls the progress up on the object,
    while the colour loss holds it down where physics cannot explain the pixels. PRD uses 0.08; on
    the embedded scene (before the traced reflections) 0.08 cost 1.5 dB of novel-view PSNR against
    0.01 (progress 0.87 on object pixels), 0.02 0.5 dB (progress 0.65), with the same relighting.
    With the traced reflections, 0.02 against 0.01: relighting 23.29 / 23.12 dB (pbr preset 23.22),
    novel views 36.25 / 36.54 dB (radiance preset 35.99), progress 0.69 / 0.54."""
    lambda_progress_specular: float = 0.0
    """The same term in stage 2 (PRD lets the colour loss alone decide there)."""
    lambda_pbr: float = 1.0
    """Weight of the colour loss on the physically based image alone (stages 3-4; not in PRD):
    gives the materials a signal of their own where the progress is still low."""
    lambda_light: float = 0.003
    """Weight of the white-light prior mean |l - mean_rgb(l)| over the cube map's texels (stages 3-4)."""
    lambda_light_smooth: float = 0.003
    """Weight of the total variation of the environment's log radiance (stages 2-4,
    :func:`invrender.distill.trainer.light_smoothness`). Each texel of the learned light is seen by
    few mirror pixels, and without it the light grows rings that follow the sphere's normal
    errors (total variation 0.14 against the true map's 0.06). Embedded scene, with
    ``roughness_reset``: 0 / 0.003 / 0.01 relit at 23.76 / 23.93 / 23.70 dB."""
    lambda_depth_normal: float = 0.2
    """Weight of the depth-normal consistency loss 1 - <n_rendered, n_from_depth> (stages 2-4)."""
    lambda_mesh_normal: float = 0.3
    """Weight of 1 - <n_rendered, n_mesh> (stages 2-4), where n_mesh is the normal of a mesh
    extracted from the Gaussians (TSDF fusion, as the mesh stage does) and rasterized into every
    training view when stage 2 starts and, with ``mesh_normal_rebake``, again when stage 3 does: a
    smooth, multi-view-consistent normal target. 0 turns it off. With the rebake, on the embedded
    scene: 0.3 / 0.5 / 1.0 relit at 24.99 / 24.98 / 24.48 dB, novel views 36.30 / 35.91 / 34.90 dB
    (docs/bench/distill_sweep_toybox_2026-11-28.md, eighth sweep)."""
    mesh_normal_resolution: int = 160
    """Voxels on the long side of the fusion grid of that mesh."""
    mesh_normal_smoothing: int = 3
    """Passes of neighbourhood averaging of that mesh's vertex normals
    (:func:`invrender.mesh.extract.smooth_vertex_normals`) before they are rasterized."""
    mesh_normal_rebake: bool = True
    """Extract that mesh again when stage 3 starts, from the Gaussians stage 2 has flattened and
    aligned with it. Fused from the stage-1 Gaussians, whose rendered depth on a mirror lies behind
    the surface to fake its reflections, the target was 12.8 deg off the truth on the embedded
    scene's test views (gold sphere 19.5); fused mid-stage-3 it was 7.8 deg (sphere 6.3). On that
    scene the rebake took relighting from 24.42 to 24.98 dB and albedo from 22.78 to 23.20 dB, for
    one more extraction (~15 s on 2 cores)."""
    mesh_normal_rebake_every: int = 300
    """With ``mesh_normal_rebake``, extract that mesh again every this many steps after stage 3
    starts, through stage 4 (0: only at the stage-3 switch): the normals keep improving during
    stages 3-4 and the target follows them. On the embedded scene (eighth and ninth sweeps of
    docs/bench/distill_sweep_toybox_2026-11-28.md): only at the switch, relighting 24.99 dB and
    normals 7.42 deg; again at stage 4, 25.09 dB and 7.12 deg; every 300 steps, 25.16 dB and
    7.23 deg, for ~15 s per extraction on 2 cores. The same setting cost the ``pbr`` and
    ``radiance`` presets their dielectrics' normals (pbr 7.00 -> 8.00 deg): a target fused again
    from the geometry it shapes can lock that geometry's errors in."""
    lambda_smooth_normal: float = 0.1
    """Weight of the edge-aware smoothness of the rendered normal map (stages 2-4,
    :func:`invrender.distill.trainer.edge_aware_smoothness`): neighbouring pixels' normals agree
    unless the photo has an edge between them."""
    lambda_smooth_material: float = 0.1
    """Weight of the same smoothness on the rendered roughness and metallic maps (stages 3-4):
    materials change where the photo changes, not from pixel to pixel."""
    lambda_smooth_albedo: float = 0.05
    """Weight of the same edge-aware smoothness on the rendered albedo (stages 3-4): base colour
    changes where the photo has an edge, so highlights and speckle inside a smooth region stay out
    of it. On the embedded scene (ninth sweep of docs/bench/distill_sweep_toybox_2026-11-28.md)
    0 / 0.05 / 0.1 / 0.15 / 0.3 relit at 25.16 / 25.24 / 25.24 / 24.90 / 23.02 dB, albedo 23.12 /
    23.39 / 23.53 / 22.62 / 16.13 dB, roughness MAE 0.171 / 0.210 / 0.267 / 0.324 / 0.380: the
    dielectrics roughen as their albedo flattens, and past 0.1 the base turns metallic."""
    lambda_smooth_metal_albedo: float = 0.3
    """Weight of a smoothness of the albedo on metals (stages 3-4), weighted by metallic and blind
    to the photo's edges, which on a metal are reflections that must not go into its base colour
    (embedded scene: albedo +0.5 dB, relighting +0.16 dB at 0.3; 1.0 roughened the materials)."""
    lambda_smooth_metal_normal: float = 0.0
    """Weight of the same photo-blind, metallic-weighted smoothness on the rendered normal map
    (stages 3-4): the edge-aware normal smoothness switches off at a metal's reflections, which are
    edges in the photo but not in the surface. Off: on the embedded scene 0.1 and 0.3 changed
    nothing beyond noise (relighting 23.14 / 23.11 dB against 23.12, normals 7.73 against 7.75 deg)."""
    lambda_metallic_commit: float = 0.05
    """Weight of a one-sided pull of the rendered metallic towards 1 where it is already above 0.5
    (stages 3-4, :func:`invrender.distill.trainer.metallic_commitment`). A part-metal's diffuse
    lobe adds light that its albedo then pays for: on the embedded scene the gold sphere had
    settled at metallic 0.85 and albedo 0.86 of the truth, and the copper box at 0.3. A symmetric
    push towards 0 or 1 sent those partial metals to 0 (eighth and tenth sweeps); this one leaves
    everything under 0.5 alone. Embedded scene (eleventh sweep of
    docs/bench/distill_sweep_toybox_2026-11-28.md): 0 / 0.02 / 0.03 / 0.05 / 0.1 / 0.15 / 0.3
    relit at 25.35 / 25.79 / 25.79 / 25.72 / 25.47 / 25.08 / 22.50 dB, albedo 23.82 / 24.65 /
    24.81 / 25.04 / 24.52 / 23.28 / 18.09 dB, metallic MAE 0.128 / 0.079 / 0.070 / 0.058 / 0.063 /
    0.094 / 0.366; at 0.3 the base turned metal too."""
    smooth_edge_scale: float = 10.0
    """How fast an edge in the photo switches the smoothness off: weight ``exp(-scale |dI|)`` with
    ``|dI|`` the mean absolute RGB difference (display space) of the two pixels."""
    lambda_flat: float = 0.1
    """Weight of mean(smallest scale) / mean(largest scale) over the Gaussians (stages 2-4):
    flattens them so that the shortest axis is a well-defined normal (GaussianShader, 3DGS-DR)."""
    lr_albedo: float = 2e-2
    """Adam LR of the albedo logits."""
    lr_roughness: float = 2e-2
    """Adam LR of the roughness logits."""
    lr_metallic: float = 2e-2
    """Adam LR of the metallic logits."""
    lr_normal_residual: float = 3e-3
    """Adam LR of a per-Gaussian residual added to the shortest-axis normal from stage 2 on
    (GaussianShader's residual normal; :func:`invrender.distill.model.gaussian_normals`). The axis
    is then not differentiated, so the normal terms and the shading train the residual and no longer
    turn the Gaussians, whose rotations stay fitted to the images. 0: no residual, the normal is the
    axis itself, as in PRD. Embedded scene, 2000 distillation steps from one stage-1 checkpoint (tenth
    sweep of docs/bench/distill_sweep_toybox_2026-11-28.md): 0 / 1e-3 / 3e-3 / 1e-2 / 3e-2 relit at
    25.24 / 25.30 / 25.35 / 25.07 / 24.82 dB, albedo 23.39 / 23.52 / 23.82 / 23.79 / 23.65 dB,
    normals 7.29 / 6.93 / 6.91 / 7.06 / 7.20 deg, novel views 36.08 / 36.18 / 36.39 / 36.40 / 36.40 dB."""
    lr_progress: float = 2e-2
    """Adam LR of the progress logits in stages 2-3."""
    lr_progress_joint: float = 2e-3
    """Adam LR of the progress logits in stage 4 (PRD lowers it)."""
    lr_light: float = 5e-2
    """Adam LR of the environment's log radiance. A light that learns too slowly stays a grey blur
    for the whole schedule and every reflection goes into the albedo (1e-2: relighting 1.4 dB worse
    on the embedded scene; 1e-1: the same as 5e-2)."""
    geometry_lr_scale: float = 0.5
    """Geometry and radiance SH keep learning in stages 2-4 at this fraction of their stage-1 rates."""
    bake_visibility: bool = True
    """Bake the visibility of the diffuse term (off: visibility 1 everywhere)."""
    ao: AOConfig = field(default_factory=AOConfig)
    """The baked visibility of the diffuse term (shadowing transfer, or ambient occlusion only): at
    the stage-3 switch (stage 2 has no diffuse term)."""
    reflection: ReflectionConfig = field(default_factory=ReflectionConfig)
    """Traced specular inter-reflection in stages 3-4 and when the run is rendered: the mirror
    direction is marched through the Gaussians' density, and what it meets (their diffuse colour
    under the light) replaces the sky it hides (:mod:`invrender.distill.reflection`)."""

    def __post_init__(self) -> None:
        if not self.metallic_vd_width > 0:
            raise ValueError(f"distill.metallic-vd-width must be > 0, got {self.metallic_vd_width}")
        if self.mesh_normal_rebake_every < 0:
            raise ValueError(f"distill.mesh-normal-rebake-every must be >= 0 steps (0: only at the stage-3 switch), "
                             f"got {self.mesh_normal_rebake_every}")
        if self.mesh_normal_smoothing < 0:
            raise ValueError(f"distill.mesh-normal-smoothing must be >= 0 passes, got {self.mesh_normal_smoothing}")
        if not self.lr_normal_residual >= 0:
            raise ValueError(f"distill.lr-normal-residual must be >= 0 (0: no residual normal), got {self.lr_normal_residual}")
        for f in fields(self):  # a negative weight would reward what its term penalizes
            if f.name.startswith("lambda_") and not getattr(self, f.name) >= 0:
                name = f.name.replace("_", "-")
                raise ValueError(f"distill.{name} must be >= 0 (0 turns the term off), got {getattr(self, f.name)}")

    @property
    def steps(self) -> int:
        return self.specular_steps + self.diffuse_steps + self.joint_steps


@dataclass(frozen=True)
class PRDSchedule:
    """Stage boundaries as step counts (steps are 1-based, as the trainer counts them)."""

    radiance_steps: int
    specular_steps: int
    diffuse_steps: int
    joint_steps: int

    @classmethod
    def from_config(cls, radiance_steps: int, cfg: DistillConfig) -> PRDSchedule:
        return cls(radiance_steps, cfg.specular_steps, cfg.diffuse_steps, cfg.joint_steps)

    @property
    def total(self) -> int:
        return self.radiance_steps + self.specular_steps + self.diffuse_steps + self.joint_steps

    def stage_at(self, step: int) -> str:
        """The stage that step ``step`` (1-based) trains in."""
        if step < 1:
            raise ValueError(f"steps count from 1, got {step}")
        bound = 0
        for name, length in zip(STAGES, (self.radiance_steps, self.specular_steps, self.diffuse_steps, self.joint_steps)):
            bound += length
            if step <= bound:
                return name
        return STAGES[-1]

    def switch_at(self, step: int) -> str | None:
        """The stage that starts at ``step`` when it differs from the previous step's (else None).
        Step 1 starts the first stage of non-zero length."""
        if step == 1:
            return self.stage_at(1)
        prev, cur = self.stage_at(step - 1), self.stage_at(step)
        return cur if cur != prev else None


def blend_for(preset: str, stage: str) -> str:
    """The render blend (:data:`invrender.distill.model.BLEND_MODES`) of a preset in a stage."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    if stage == "radiance" or preset == "radiance":
        return "radiance"
    if stage == "specular":
        return "specular"
    return "prd" if preset == "prd" else "pbr"


def progress_override(preset: str) -> float | None:
    """The fixed progress of a preset (None: learned)."""
    return {"prd": None, "pbr": 1.0, "radiance": 0.0}[preset]
