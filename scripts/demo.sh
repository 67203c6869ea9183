#!/usr/bin/env bash
# README command #1: set up (if needed) and run the main job on the embedded default: the shipped
# sample LDCT volume, denoised with the shipped model bundle (adaptation included; the CPU profile on
# a CPU). Writes out/demo/: denoised and noise-map NRRDs, a side-by-side PNG; prints PSNR/SSIM.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh demo
.venv/bin/selfsupctdenoise demo --out out/demo "$@"
