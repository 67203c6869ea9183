#!/bin/bash
# 1. The training sets (SOURCES: clones of the git sources, docs/DATA.md; run from the repository root):
T="d25_hann d50_hann d18_hann d25_shepplogan d50_shepplogan d35_hamming"
export SELFSUPCTDENOISE_SOURCES=SOURCES OMP_NUM_THREADS=1
selfsupctdenoise simulate --out data/sim_train --subjects ts_abdomen rt_chest --max-slices 112 --no-clean-protocol --tags $T
selfsupctdenoise simulate --out data/sim_train_git_a --subjects tcga_thca cmb_crc crlm_1006 --max-slices 16 --spread --no-clean-protocol --tags $T
selfsupctdenoise simulate --out data/sim_train_git_b --subjects rider_chest crlm_1004 --max-slices 16 --spread --no-clean-protocol --tags $T
# 2. The pre-training as it was run (out/prior/run.sh in the session). --init-from was the lite shipped before
#    2026-12-07 (manifest sha256 2f1bb9bc098c: `git show d83c329:SelfSupCTDenoise/Resources/Models/lite/...`); the result
#    ships as lite since then (manifest sha256 ad6c70bccd8c).
# The new lite prior (issue 25). Resumable: rerunning this script continues from the checkpoints.
cd /work/main
T="d25_hann d50_hann d18_hann d25_shepplogan d50_shepplogan d35_hamming"
# (waited for the simulate runs above to finish)
OMP_NUM_THREADS=2 .venv/bin/selfsupctdenoise pretrain --dataset data/sim_train data/sim_train_git_a data/sim_train_git_b \
  --subjects ts_abdomen rt_chest rider_chest crlm_1004 crlm_1006 tcga_thca --profile lite --init-from SelfSupCTDenoise/Resources/Models/lite --denoiser-steps 2500 --noise-model-steps 1 \
  --lr 1e-4 --tag $T --out out/prior/new/lite --quiet
OMP_NUM_THREADS=2 .venv/bin/selfsupctdenoise pretrain --dataset data/sim_train data/sim_train_git_a data/sim_train_git_b \
  --subjects ts_abdomen rt_chest rider_chest crlm_1004 crlm_1006 tcga_thca --profile lite --recalibrate --tag $T --noise-models-from SelfSupCTDenoise/Resources/Models/lite --out out/prior/new/lite
echo finished
# History: started with --denoiser-steps 6000 (cosine T_max 6000) at 14:08; at step 1250 (14:35) the run was
# stopped, the checkpoint's scheduler T_max set to 2500 (the chained cosine then reaches eta_min at 2500),
# and resumed with --denoiser-steps 2500: the shared CPU gave 0.83 steps/s, not the 3.5 of a quiet machine.
# then (15:06): calibration measured on the two earlier subjects only, as the shipped lite's (the noise estimator's anchor unchanged)
# OMP_NUM_THREADS=2 selfsupctdenoise pretrain --dataset data/sim_train --subjects ts_abdomen rt_chest --profile lite --recalibrate --tag $T --noise-models-from SelfSupCTDenoise/Resources/Models/lite --out out/prior/new/lite
