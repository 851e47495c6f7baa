#!/usr/bin/env bash
# Runs the test suite offline (no weight downloads, wandb offline), CPU only.
# Arguments go to pytest (e.g. a test path, -k EXPR, -m "not slow"); default: every test in tests/.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 WANDB_MODE=offline WANDB_SILENT=true TRANSFORMERS_OFFLINE=1
export CUDA_VISIBLE_DEVICES="" PYTHONHASHSEED=0
if [ "$#" -eq 0 ]; then
  # the whole suite: the import contracts first (docs/ARCHITECTURE.md, .importlinter)
  .venv/bin/lint-imports --no-cache
fi
exec .venv/bin/python -m pytest "$@"
