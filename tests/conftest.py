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
