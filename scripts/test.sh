#!/usr/bin/env bash
# README command #2: set up (if needed) and run the whole test suite (a few minutes on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/python -m pytest Testing "$@"
