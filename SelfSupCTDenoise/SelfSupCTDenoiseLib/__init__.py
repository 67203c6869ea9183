"""SelfSupCTDenoise engine: self-supervised per-volume adaptation of a CT denoiser.

This package never imports Slicer, Qt or VTK, and importing it does not import torch
(so the Slicer module can load before torch is installed). Import submodules explicitly.
"""

import os

__version__ = "0.1.0"

# torch's OpenMP threads wait for work by sleeping instead of spinning (unless the environment says
# otherwise; it only counts before torch is imported). On a busy CPU, spinning threads take the cores
# the working ones need: measured on 2 shared cores, an adaptation step took 2.7x as long.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
