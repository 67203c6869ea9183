#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with the CPU build of torch (pinned: an
# unpinned torch may pull a multi-GB CUDA build) and this project with the extras given as $1.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[${extras}]"
