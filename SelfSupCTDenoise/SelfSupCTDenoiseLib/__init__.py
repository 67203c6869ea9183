"""SelfSupCTDenoise engine: self-supervised per-volume adaptation of a CT denoiser.

This package never imports Slicer, Qt or VTK, and importing it does not import torch
(so the Slicer module can load before torch is installed). Import submodules explicitly.
"""

__version__ = "0.1.0"
