"""The densification schedule and the optimizer surgery it relies on."""

import torch

from invrender.splat.gaussians import init_gaussians
from invrender.splat.project import Projected
from invrender.splat.strategy import DensifyStrategy, update_params_and_optimizers


def _scene(n=10):
    torch.manual_seed(0)
    params = init_gaussians(torch.rand(n, 3), torch.rand(n, 3), sh_degree=1)
    opts = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    # one step so Adam has moments to carry over
    sum((p**2).sum() for p in params.values()).backward()
    for o in opts.values():
        o.step()
    return params, opts


def test_schedule_switches():
    s = DensifyStrategy(refine_start_iter=500, refine_stop_iter=1500, refine_every=100, reset_every=1000)
    refine = [t for t in range(0, 3001) if s.is_refine_step(t)]
    assert refine[0] == 600 and refine[-1] == 1400 and len(refine) == 9
    resets = [t for t in range(0, 3001) if s.is_reset_step(t)]
    assert resets == [1000]  # never at step 0, never after densification stops
    assert not DensifyStrategy(reset_every=0).is_reset_step(3000)


def test_surgery_keeps_moments_and_zeroes_new_rows():
    params, opts = _scene()
    old_avg = opts["means"].state[params["means"]]["exp_avg"].clone()
    idx = torch.tensor([0, 3])

    def fn(name, x):
        if name.startswith("state:"):
            return torch.cat([x, torch.zeros_like(x[idx])])
        return torch.cat([x, x[idx]])

    update_params_and_optimizers(params, opts, fn)
    assert params["means"].shape[0] == 12
    st = opts["means"].state[params["means"]]
    torch.testing.assert_close(st["exp_avg"][:10], old_avg)
    assert (st["exp_avg"][10:] == 0).all()
    assert opts["means"].param_groups[0]["params"][0] is params["means"]
    # the optimizer still steps the new tensor
    params["means"].grad = torch.ones_like(params["means"])
    before = params["means"].detach().clone()
    opts["means"].step()
    assert not torch.equal(before, params["means"].detach())


def _fake_projection(params, grad_scale):
    n = params["means"].shape[0]
    m2 = torch.zeros(n, 2, requires_grad=True)
    m2.grad = torch.full((n, 2), grad_scale)
    return Projected(m2, torch.ones(n, 3), torch.ones(n), torch.full((n,), 3, dtype=torch.int32))


def test_clone_split_prune_and_reset():
    params, opts = _scene(10)
    s = DensifyStrategy(refine_start_iter=0, refine_stop_iter=1000, refine_every=10, reset_every=20, grow_scale3d=0.01)
    state = s.initial_state(10)
    with torch.no_grad():
        params["scales"][:5] = torch.log(torch.tensor(0.001))  # small -> cloned
        params["scales"][5:] = torch.log(torch.tensor(0.05))  # large -> split
        params["opacities"][9] = torch.logit(torch.tensor(0.001))  # transparent -> pruned
    s.accumulate(state, _fake_projection(params, 1.0), 64, 64)
    info = s.step_post_backward(params, opts, state, step=10, scene_extent=1.0)
    assert info["cloned"] == 5 and info["split"] == 5
    # 10 + 5 clones + 5 splits (each split replaces one by two) - the 2 transparent halves of #9
    assert params["means"].shape[0] == 10 + 5 + 5 - 2 and info["pruned"] == 2
    assert all(p.shape[0] == 18 for p in params.values())
    assert state["grad2d"].shape[0] == 18 and (state["grad2d"] == 0).all()
    # split children are 1.6x smaller than their parent
    assert torch.allclose(torch.exp(params["scales"][-1]), torch.tensor(0.05 / 1.6))
    s.step_post_backward(params, opts, state, step=20, scene_extent=1.0)
    assert (torch.sigmoid(params["opacities"]) <= 2 * s.prune_opa + 1e-6).all()


def test_no_growth_without_gradient_and_budget_respected():
    params, opts = _scene(10)
    s = DensifyStrategy(refine_start_iter=0, refine_every=10, max_gaussians=12)
    state = s.initial_state(10)
    s.accumulate(state, _fake_projection(params, 0.0), 64, 64)
    assert s.step_post_backward(params, opts, state, 10, 1.0)["cloned"] == 0
    s.accumulate(state, _fake_projection(params, 1.0), 64, 64)
    s.step_post_backward(params, opts, state, 20, 1.0)
    assert params["means"].shape[0] <= 12 + 10  # splits add at most one each, budget caps the count
