"""The StableMaterial prior with a tiny random model of the real one's shape, saved and loaded
through the real loading code: config checks, offline errors, the SDS / denoise losses (v->eps,
CFG, masking), gradients to materials only, the trainer hook and the CLI end to end, and that a
run with the prior off never imports diffusers or transformers."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers", reason="the prior's tests need the [prior] extra")
pytest.importorskip("transformers", reason="the prior's tests need the [prior] extra")

from invrender.prior.config import PriorConfig  # noqa: E402
from invrender.prior.guidance import (  # noqa: E402
    MaterialPrior, denoise_latents, denoise_timesteps, gaussian_material_maps, prior_window, sds_loss, to_square,
    v_to_eps, v_to_x0,
)
from invrender.prior.stablematerial import load_stablematerial  # noqa: E402
from invrender.prior.tiny import save_tiny_stablematerial  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RES = 32  # prior resolution in these tests: tiny VAE (factor 2) -> 16 x 16 latents


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_stablematerial(tmp_path_factory.mktemp("stable-material-tiny"))


@pytest.fixture(scope="module")
def model(tiny_dir):
    return load_stablematerial(str(tiny_dir))


def _prior(model, **kw):
    cfg = PriorConfig(path="unused", resolution=RES, **kw)
    return MaterialPrior(cfg, model=model, seed=0)


def _maps(H=24, W=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    albedo = torch.rand(H, W, 3, generator=g)
    orm = torch.cat([torch.zeros(H, W, 1), torch.rand(H, W, 2, generator=g)], dim=-1)
    photo = torch.rand(H, W, 3, generator=g)
    alpha = torch.ones(H, W, 1)
    return albedo, orm, alpha, photo


# ---------------------------------------------------------------------- loading
def test_loads_tiny_folder_and_reads_its_shapes(model):
    assert model.vae_factor == 2 and model.num_train_timesteps == 1000
    assert model.unet.config.in_channels == 12 and model.unet.config.out_channels == 8
    assert not any(p.requires_grad for p in model.unet.parameters())  # frozen


def test_missing_diffusers_names_the_extra(monkeypatch):
    from invrender.prior.stablematerial import require_prior_deps

    monkeypatch.setitem(sys.modules, "diffusers", None)  # makes `import diffusers` fail
    with pytest.raises(ImportError, match=r'pip install -e "\.\[prior\]"'):
        require_prior_deps()


def test_wrong_checkpoint_fails_clearly(tmp_path):
    bad = save_tiny_stablematerial(tmp_path / "sd", in_channels=4, prediction_type="epsilon")
    with pytest.raises(ValueError) as e:
        load_stablematerial(str(bad))
    msg = str(e.value)
    assert str(bad) in msg and "in_channels is 4, expected 12" in msg and "v_prediction" in msg


def test_offline_errors_name_what_was_tried(tmp_path, monkeypatch):
    missing = tmp_path / "no-weights-here"
    with pytest.raises(FileNotFoundError) as e:
        load_stablematerial(str(missing))
    assert str(missing) in str(e.value) and "--prior.path" in str(e.value) and "download" in str(e.value)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # an id that is not in the cache, without network
    with pytest.raises(FileNotFoundError) as e:
        load_stablematerial("thebluser/stable-material-not-cached")
    assert "'thebluser/stable-material-not-cached'" in str(e.value) and "hf download" in str(e.value)


def test_cli_missing_weights_is_one_clear_line(embedded_scene, tmp_path, capsys):
    from invrender.cli import main

    missing = tmp_path / "weights"
    with pytest.raises(SystemExit) as e:
        main(["train", "--data", str(embedded_scene), "--out", str(tmp_path / "run"), "--downscale", "4",
              "--init-num-points", "100", "--prior.path", str(missing)])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert str(missing) in err and "--prior.path" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------- pieces
def test_v_to_eps_matches_hand_computation():
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 8, 4, 4, generator=g), torch.randn(2, 8, 4, 4, generator=g)
    a = torch.tensor([0.9, 0.2]).view(2, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    v = a.sqrt() * eps - (1 - a).sqrt() * x0  # the v target (Salimans & Ho 2022)
    torch.testing.assert_close(v_to_eps(v, x_t, a), eps, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v_to_x0(v, x_t, a), x0, rtol=1e-5, atol=1e-5)


def test_sds_gradient_is_weighted_noise_residual(model):
    prior = _prior(model)
    albedo, orm, alpha, photo = _maps()
    cond = prior.condition(photo, alpha)
    z = torch.randn(1, 8, 16, 16, generator=torch.Generator().manual_seed(2)).requires_grad_()
    noise = torch.randn(1, 8, 16, 16, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([600])
    sds_loss(model, z, cond, t, noise, cfg_scale=1.0).backward()
    # by hand: x_t, one conditional UNet pass, eps = sqrt(a) v + sqrt(1 - a) x_t, w = 1 - a, mean reduction
    a = model.alphas_cumprod[600]
    x_t = a.sqrt() * z.detach() + (1 - a).sqrt() * noise
    with torch.no_grad():
        v = model.unet(torch.cat([x_t, cond.image_latents], 1), t, encoder_hidden_states=cond.embeds).sample
    eps_hat = a.sqrt() * v + (1 - a).sqrt() * x_t
    torch.testing.assert_close(z.grad, (1 - a) * (eps_hat - noise) / z.numel(), rtol=1e-4, atol=1e-9)


def test_cfg_scale_changes_the_prediction_and_one_is_conditional_only(model):
    prior = _prior(model)
    _, _, alpha, photo = _maps()
    cond = prior.condition(photo, alpha)
    x = torch.randn(1, 8, 16, 16, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([500])
    with torch.no_grad():
        v_c = model.unet(torch.cat([x, cond.image_latents], 1), t, encoder_hidden_states=cond.embeds).sample
        v_u = model.unet(torch.cat([x, torch.zeros_like(cond.image_latents)], 1), t,
                         encoder_hidden_states=torch.zeros_like(cond.embeds)).sample
    torch.testing.assert_close(model.predict_v(x, t, cond, 1.0), v_c)
    v3 = model.predict_v(x, t, cond, 3.0)
    # batched (uncond, cond) pass vs two single passes: float32 summation order only
    torch.testing.assert_close(v3, v_u + 3.0 * (v_c - v_u), rtol=1e-4, atol=1e-5)
    assert (v3 - v_c).abs().max() > 1e-3


def test_loss_shapes_masking_and_non_square_inputs(model):
    for kind in ("sds", "denoise"):
        prior = _prior(model, loss=kind, denoise_steps=2)
        albedo, orm, alpha, photo = _maps(H=24, W=20)
        alpha[:, 10:] = 0.0  # right half is background
        albedo.requires_grad_()
        orm.requires_grad_()
        loss = prior.loss(albedo, orm, alpha, photo)
        assert loss.ndim == 0 and torch.isfinite(loss)
        loss.backward()
        assert albedo.grad[:, 10:].abs().max() == 0 and orm.grad[:, 10:].abs().max() == 0, kind
        assert albedo.grad[:, :10].abs().max() > 0 and orm.grad[:, :10, 1:].abs().max() > 0, kind
    with pytest.raises(ValueError, match="orm must be"):
        prior.loss(albedo, orm[..., :2], alpha, photo)
    assert to_square(torch.ones(24, 20, 1), RES).shape == (1, 1, RES, RES)


def test_denoise_schedule_matches_materialfusion():
    assert denoise_timesteps(500, 5) == [500, 400, 300, 200, 100]
    assert denoise_timesteps(21, 5) == [21, 17, 13, 8, 4]


def test_window_every_and_annealing(model):
    from invrender.distill.schedule import DistillConfig, PRDSchedule

    sched = PRDSchedule.from_config(10, DistillConfig(specular_steps=5, diffuse_steps=5, joint_steps=5))
    assert prior_window(sched, "diffuse") == (16, 25) and prior_window(sched, "specular") == (11, 25)
    prior = MaterialPrior(PriorConfig(path="x", every=3, anneal=True, t_max=0.98, t_max_final=0.5), model=model,
                          window=(16, 25))
    assert [s for s in range(1, 26) if prior.applies(s)] == [16, 19, 22, 25]
    assert prior.time_range(prior.fraction(16)) == (20, 980) and prior.time_range(prior.fraction(25)) == (20, 500)


# ---------------------------------------------------------------------- optimization
def test_sds_steps_move_latents_toward_the_prior_prediction(model):
    prior = _prior(model)
    _, _, alpha, photo = _maps()
    cond = prior.condition(photo, alpha)
    z = torch.randn(1, 8, 16, 16, generator=torch.Generator().manual_seed(5)).requires_grad_()
    noise = torch.randn(1, 8, 16, 16, generator=torch.Generator().manual_seed(6))
    t = torch.tensor([300])
    a = model.alphas_cumprod[300]
    with torch.no_grad():  # the prior's clean estimate from the starting point
        x_t = a.sqrt() * z + (1 - a).sqrt() * noise
        x0_hat = v_to_x0(model.predict_v(x_t, t, cond, 3.0), x_t, a)
    d0 = (z.detach() - x0_hat).norm()
    opt = torch.optim.SGD([z], lr=0.5 * z.numel())  # grad = (1 - a)(eps_hat - eps) / numel = sqrt(a (1 - a)) (z - x0_hat) / numel
    for _ in range(5):
        opt.zero_grad()
        sds_loss(model, z, cond, t, noise, 3.0).backward()
        opt.step()
    assert (z.detach() - x0_hat).norm() < 0.8 * d0


def test_denoise_steps_move_material_toward_the_prior(model):
    prior = _prior(model, loss="denoise", denoise_steps=3, image_weight=5.0, t_min=0.3, t_max=0.3001)
    albedo0, orm0, alpha, photo = _maps(H=RES, W=RES)
    logits = torch.logit(albedo0.clamp(0.05, 0.95)).requires_grad_()
    state = prior.rng.get_state()
    with torch.no_grad():  # the prior's denoised albedo for the starting material (sRGB)
        from invrender.color import linear_to_srgb

        x = model.encode_materials(linear_to_srgb(torch.sigmoid(logits)).permute(2, 0, 1)[None], orm0.permute(2, 0, 1)[None])
        prior.rng.set_state(state)
        t = int(torch.randint(300, 301, (1,), generator=prior.rng))
        noise = torch.randn(1, 8, 16, 16, generator=prior.rng)
        target = model.decode_materials(denoise_latents(model, x, prior.condition(photo, alpha), t, noise, 3.0, 3,
                                                        prior.rng))[0]
    dist = lambda: (linear_to_srgb(torch.sigmoid(logits.detach())).permute(2, 0, 1)[None] - target).pow(2).mean()  # noqa: E731
    d0 = dist()
    opt = torch.optim.Adam([logits], lr=0.05)
    losses = []
    for _ in range(8):
        prior.rng.set_state(state)  # same t and noise every step: a fixed toy target
        opt.zero_grad()
        loss = prior.loss(torch.sigmoid(logits), orm0, alpha, photo)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] and dist() < 0.8 * d0


def test_gradients_reach_material_logits_not_geometry(model):
    from invrender.distill.model import material_params
    from invrender.splat.gaussians import init_gaussians

    g = torch.Generator().manual_seed(7)
    pts = (torch.rand(300, 3, generator=g) - 0.5) * 0.6
    params = dict(init_gaussians(pts, torch.rand(300, 3, generator=g), 1, 0.9, 1.0))
    params.update(material_params(300, 0.5, 0.5, 0.5, 0.5))
    params = {k: torch.nn.Parameter(v.detach().clone()) for k, v in params.items()}
    viewmat = torch.eye(4)
    viewmat[2, 3] = 2.0
    K = torch.tensor([[40.0, 0, 16], [0, 40.0, 16], [0, 0, 1]])
    albedo, orm, alpha = gaussian_material_maps(params, viewmat, K, 32, 32, backend="torch")
    assert albedo.shape == (32, 32, 3) and orm.shape == (32, 32, 3) and alpha.shape == (32, 32, 1)
    assert orm[..., 0].abs().max() == 0 and alpha.max() > 0.5
    prior = _prior(model, loss="sds")
    photo = torch.rand(32, 32, 3, generator=g)
    prior.gaussian_loss(params, viewmat, K, 32, 32, photo, torch.ones(32, 32, 1), step=1, view=0, backend="torch").backward()
    for k in ("albedo", "roughness", "metallic"):
        assert params[k].grad is not None and params[k].grad.abs().max() > 0, k
    for k in ("means", "scales", "quats", "opacities", "sh0", "shN", "progress"):
        assert params[k].grad is None or params[k].grad.abs().max() == 0, k


# ---------------------------------------------------------------------- application
def test_prior_off_imports_no_diffusers():
    code = (
        "import sys\n"
        "import invrender.train, invrender.distill.trainer, invrender.cli\n"
        "from invrender.train import TrainConfig\n"
        "import tyro\n"
        "cfg = tyro.cli(TrainConfig, args=['--data', 'data/toybox', '--steps', '5'])\n"
        "assert cfg.prior.path is None and not cfg.prior.enabled\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('diffusers', 'transformers', 'huggingface_hub')]\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_cli_train_with_prior_end_to_end(embedded_scene, tiny_dir, tmp_path):
    from invrender.cli import main
    from test_train import TINY_DISTILL  # tests/ is on sys.path (pytest's rootdir-less test modules)

    run = tmp_path / "run"
    main(["train", "--data", str(embedded_scene), "--out", str(run), "--steps", "10", "--downscale", "2",
          "--init-num-points", "1000", "--no-progress", "--no-eval-at-end", "--log-every", "1", *TINY_DISTILL,
          "--prior.path", str(tiny_dir), "--prior.resolution", str(RES), "--prior.every", "2",
          "--prior.denoise-steps", "2"])
    recs = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    with_prior = [r["step"] for r in recs if "prior" in r]
    # diffuse starts at step 16 (10 radiance + 5 specular): every other step from there to 25
    assert with_prior == [16, 18, 20, 22, 24]
    assert all(r["prior"] >= 0 for r in recs if "prior" in r) and all(r["loss"] == r["loss"] for r in recs)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["prior"]["path"] == str(tiny_dir)
