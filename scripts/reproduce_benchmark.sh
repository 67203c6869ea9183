#!/usr/bin/env bash
# The README's benchmark table, and every row of docs/benchmark_200_steps/, with the shipped bundle, in
# one command: four parts (two protocols x two pairs of tags), two at a time on one torch thread each,
# then merged into one report. It starts by printing what the committed run of the same rows cost.
#
#   bash scripts/reproduce_benchmark.sh [OUTDIR]     # default out/benchmark; the parts go to OUTDIR/parts
#
# Needs the simulated dataset (`selfsupctdenoise simulate`, docs/DATA.md) in data/sim and the `bench`
# extra (bm3d, matplotlib). To replace the committed report, give docs/benchmark_200_steps, then run
# `python scripts/doc_numbers.py --write` so that the README's numbers follow. For a smoke run:
# DATASET (default data/sim), STEPS (default 200, the committed run's), SELFSUPCTDENOISE and PYTHON (the
# commands, default .venv/bin/selfsupctdenoise and .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-out/benchmark}"
mkdir -p "$out/parts"
read -ra run <<< "${SELFSUPCTDENOISE:-.venv/bin/selfsupctdenoise}"
read -ra python <<< "${PYTHON:-.venv/bin/python}"
"${python[@]}" scripts/doc_numbers.py --cost
# each row runs where its scope says (ceiling: clean; paper recipe, Patch-based: ndct); "one noise level"
# (the previous default) only where the README compares it, protocol clean
rows=(LDCT 'N2C (pretrained)' 'shipped default' oracle ceiling 'paper recipe' Patch-based BM3D
      'anisotropic diffusion' 'slice by slice')
part() {  # protocol, then tags
  local protocol="$1"; shift
  local extra=(); [ "$protocol" = clean ] && extra=('one noise level')
  OMP_NUM_THREADS=1 "${run[@]}" benchmark --dataset "${DATASET:-data/sim}" --protocols "$protocol" --tags "$@" \
    --steps "${STEPS:-200}" --rows "${rows[@]}" ${extra[@]+"${extra[@]}"} --json-only "$out/parts/${protocol}_$1.json" > "$out/parts/${protocol}_$1.log"
}
both() {  # the two pairs of tags of one protocol side by side; a part that fails stops the script
  part "$1" d25_hann d12_hann & local first=$!
  part "$1" d50_hann d25_ramlak & local second=$!
  wait "$first"; wait "$second"
}
both clean
both ndct
"${run[@]}" benchmark --merge "$out"/parts/clean_d25_hann.json "$out"/parts/clean_d50_hann.json \
  "$out"/parts/ndct_d25_hann.json "$out"/parts/ndct_d50_hann.json --out "$out"
