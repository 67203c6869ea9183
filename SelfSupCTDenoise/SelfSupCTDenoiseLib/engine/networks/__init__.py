"""Network architectures: the RED-CNN denoiser and the U-Net noise model (one per file)."""
