#!/usr/bin/env bash
# Sets up invrender in ./.venv on a fresh machine: the CPU build of PyTorch first (so nothing pulls
# a multi-GB CUDA build), then the package with its test/benchmark extras. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[dev]"
.venv/bin/python -c "import torch, invrender; print('invrender', invrender.__version__, 'torch', torch.__version__)"
