import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ROOT / "data" / "toybox"


def has_cuda() -> bool:
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_cuda():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def embedded_scene() -> Path:
    if not (EMBEDDED / "transforms_train.json").exists():
        pytest.fail(f"embedded scene missing at {EMBEDDED}; run scripts/make_synthetic.py")
    return EMBEDDED


# tests are sized for 2 cores; keep torch from oversubscribing them
torch.set_num_threads(min(torch.get_num_threads(), int(os.environ.get("INVRENDER_TEST_THREADS", "2"))))


@pytest.fixture(scope="session")
def tiny_prd_run(embedded_scene, tmp_path_factory) -> Path:
    """One run through all four PRD stages in 20 steps (seconds on 2 cores), shared by the tests
    that only read a run (relighting, evaluation, the viewer): numbers are poor, but every buffer,
    the light and the visibility exist."""
    from invrender.distill.schedule import DistillConfig
    from invrender.distill.visibility import AOConfig
    from invrender.train import TrainConfig, train

    out = tmp_path_factory.mktemp("tiny_prd") / "run"
    distill = DistillConfig(specular_steps=4, diffuse_steps=4, joint_steps=4, light_resolution=32, mesh_normal_resolution=24,
                            ao=AOConfig(grid_resolution=16, num_directions=4))
    train(TrainConfig(data=embedded_scene, out=out, steps=8, downscale=2, init_num_points=1500, distill=distill,
                      progress=False, eval_at_end=False, checkpoint_every=1000))
    return out
