"""Adaptive density control of 3DGS (Kerbl et al. 2023, sec. 5.2) as a small strategy with
explicit state: clone small Gaussians and split large ones where the screen-space positional
gradient is large, prune transparent and oversized ones, and periodically reset opacities.

The strategy operates on the ``params`` / ``optimizers`` dicts; all optimizer surgery goes through
:func:`update_params_and_optimizers`. The schedule (:meth:`DensifyStrategy.is_refine_step`,
:meth:`DensifyStrategy.is_reset_step`) is a pure function of the step and is unit-tested.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from invrender.splat.project import Projected, quat_to_rotmat


def update_params_and_optimizers(
    params: dict[str, nn.Parameter],
    optimizers: dict[str, torch.optim.Optimizer],
    fn: Callable[[str, Tensor], Tensor],
) -> None:
    """Replace every parameter ``p`` by ``fn(name, p)`` and each of its optimizer state tensors ``s``
    (Adam's moments) by ``fn("state:" + name, s)``; ``fn`` decides what new rows of state hold
    (zeros, so new Gaussians start with fresh moments). Adam's scalar ``step`` is kept."""
    for name in list(params.keys()):
        old = params[name]
        new = nn.Parameter(fn(name, old.data).contiguous(), requires_grad=old.requires_grad)
        params[name] = new
        opt = optimizers.get(name)
        if opt is None:
            continue
        for group in opt.param_groups:
            for i, p in enumerate(group["params"]):
                if p is not old:
                    continue
                state = opt.state.pop(p, {})
                for key, val in list(state.items()):
                    if isinstance(val, Tensor) and val.ndim > 0 and val.shape == old.shape:
                        state[key] = fn("state:" + name, val)
                group["params"][i] = new
                opt.state[new] = state


@dataclass
class DensifyStrategy:
    """Clone / split / prune / opacity-reset schedule (defaults of 3DGS, step counts scaled by
    ``invrender train``'s presets for short runs)."""

    prune_opa: float = 0.005
    """Prune Gaussians whose opacity falls below this."""
    grow_grad2d: float = 0.0002
    """Densify where the mean screen-space gradient norm (in NDC units, as 3DGS) exceeds this."""
    grow_scale3d: float = 0.01
    """Below this largest scale (times the scene extent) a Gaussian is cloned, above it split."""
    prune_scale3d: float = 0.1
    """After the first opacity reset, prune Gaussians larger than this (times the scene extent)."""
    prune_scale2d: float = 0.15
    """... and those whose screen radius exceeds this fraction of the image size."""
    refine_start_iter: int = 500
    """First step at which densification runs."""
    refine_stop_iter: int = 15_000
    """No densification from this step on."""
    refine_every: int = 100
    """Densify / prune every this many steps."""
    reset_every: int = 3000
    """Reset opacities every this many steps (0 disables)."""
    max_gaussians: int = 1_000_000
    """Never grow past this many Gaussians."""

    def is_refine_step(self, step: int) -> bool:
        """True when densify + prune runs after the optimizer step ``step`` (1-based count of done steps)."""
        return (
            self.refine_every > 0
            and self.refine_start_iter < step < self.refine_stop_iter
            and step % self.refine_every == 0
        )

    def is_reset_step(self, step: int) -> bool:
        """True when opacities are reset after step ``step`` (never at 0, never after densification stops)."""
        return self.reset_every > 0 and step > 0 and step % self.reset_every == 0 and step < self.refine_stop_iter

    def initial_state(self, n: int, device: torch.device | str = "cpu") -> dict[str, Tensor]:
        return {
            "grad2d": torch.zeros(n, device=device),  # accumulated NDC gradient norms
            "count": torch.zeros(n, device=device),  # number of views in which each Gaussian was visible
            "max_radii": torch.zeros(n, device=device),  # largest screen radius / image size seen
        }

    def accumulate(self, state: dict[str, Tensor], projected: Projected, width: int, height: int) -> None:
        """Record this view's screen-space gradients (call after ``loss.backward()``)."""
        grad = projected.means2d.grad
        if grad is None:
            return
        visible = projected.radii > 0  # [N]
        # pixel -> NDC units, so that grow_grad2d means the same at every resolution (as 3DGS)
        g = grad.detach() * grad.new_tensor([0.5 * width, 0.5 * height])
        state["grad2d"] += torch.where(visible, g.norm(dim=-1), 0.0)
        state["count"] += visible.float()
        r = projected.radii.float() / max(width, height)
        state["max_radii"] = torch.maximum(state["max_radii"], r)

    @torch.no_grad()
    def step_post_backward(
        self,
        params: dict[str, nn.Parameter],
        optimizers: dict[str, torch.optim.Optimizer],
        state: dict[str, Tensor],
        step: int,
        scene_extent: float,
    ) -> dict[str, int]:
        """Run the schedule after optimizer step ``step``; returns counts of what it did."""
        info = {"cloned": 0, "split": 0, "pruned": 0, "reset": 0}
        if self.is_refine_step(step):
            info.update(self._grow(params, optimizers, state, scene_extent))
            info["pruned"] = self._prune(params, optimizers, state, step, scene_extent)
            for k, v in self.initial_state(params["means"].shape[0], params["means"].device).items():
                state[k] = v
        if self.is_reset_step(step):
            self._reset_opacity(params, optimizers)
            info["reset"] = 1
        return info

    def _grow(self, params, optimizers, state, scene_extent) -> dict[str, int]:
        avg = state["grad2d"] / state["count"].clamp(min=1)
        high = avg > self.grow_grad2d  # [N]
        n = params["means"].shape[0]
        budget = max(self.max_gaussians - n, 0)
        max_scale = torch.exp(params["scales"]).max(dim=-1).values
        small = max_scale <= self.grow_scale3d * scene_extent
        clone = high & small
        split = high & ~small
        # respect the budget: splits add one Gaussian each, clones one each
        if int(clone.sum() + split.sum()) > budget:
            order = torch.argsort(avg, descending=True)
            allowed = torch.zeros(n, dtype=torch.bool, device=avg.device)
            allowed[order[:budget]] = True
            clone &= allowed
            split &= allowed
        n_clone, n_split = int(clone.sum()), int(split.sum())
        if n_clone:
            self._duplicate(params, optimizers, state, clone)
        if n_split:
            split = torch.cat([split, split.new_zeros(n_clone)])
            self._split(params, optimizers, state, split)
        return {"cloned": n_clone, "split": n_split}

    def _duplicate(self, params, optimizers, state, mask: Tensor) -> None:
        idx = mask.nonzero()[:, 0]

        def fn(name: str, x: Tensor) -> Tensor:
            if name.startswith("state:"):
                return torch.cat([x, torch.zeros_like(x[idx])])
            return torch.cat([x, x[idx]])

        update_params_and_optimizers(params, optimizers, fn)
        for k in state:
            state[k] = torch.cat([state[k], state[k][idx]])

    def _split(self, params, optimizers, state, mask: Tensor) -> None:
        """Replace each selected Gaussian by two samples from it, scaled down by 1.6 (3DGS)."""
        idx = mask.nonzero()[:, 0]
        keep = (~mask).nonzero()[:, 0]
        scales = torch.exp(params["scales"][idx])  # [S, 3]
        R = quat_to_rotmat(params["quats"][idx])  # [S, 3, 3]
        noise = torch.randn(2, len(idx), 3, 1).to(scales.device)  # drawn on CPU: same stream on any device
        samples = (R @ (noise * scales[..., None]))[..., 0]  # [2, S, 3]
        new_means = (params["means"][idx][None] + samples).reshape(-1, 3)
        new_scales = torch.log(scales / 1.6).repeat(2, 1)

        def fn(name: str, x: Tensor) -> Tensor:
            if name.startswith("state:"):
                return torch.cat([x[keep], torch.zeros_like(x[idx]).repeat(2, *[1] * (x.ndim - 1))])
            if name == "means":
                rep = new_means
            elif name == "scales":
                rep = new_scales
            else:
                rep = x[idx].repeat(2, *[1] * (x.ndim - 1))
            return torch.cat([x[keep], rep])

        update_params_and_optimizers(params, optimizers, fn)
        for k in state:
            state[k] = torch.cat([state[k][keep], state[k][idx].repeat(2)])

    def _prune(self, params, optimizers, state, step, scene_extent) -> int:
        prune = torch.sigmoid(params["opacities"]) < self.prune_opa
        if step > self.reset_every > 0:
            too_big = torch.exp(params["scales"]).max(dim=-1).values > self.prune_scale3d * scene_extent
            too_big |= state["max_radii"] > self.prune_scale2d
            prune |= too_big
        n = int(prune.sum())
        if n:
            keep = (~prune).nonzero()[:, 0]
            update_params_and_optimizers(params, optimizers, lambda name, x: x[keep])
            for k in state:
                state[k] = state[k][keep]
        return n

    def _reset_opacity(self, params, optimizers) -> None:
        cap = torch.logit(torch.tensor(2.0 * self.prune_opa)).item()

        def fn(name: str, x: Tensor) -> Tensor:
            if name == "opacities":
                return x.clamp(max=cap)
            if name == "state:opacities":
                return torch.zeros_like(x)
            return x

        update_params_and_optimizers(params, optimizers, fn)
