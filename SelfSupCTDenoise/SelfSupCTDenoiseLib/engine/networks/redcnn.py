"""RED-CNN (Chen et al., IEEE TMI 2017), the denoiser f_theta of the method."""

from __future__ import annotations

import torch
from torch import nn

from ..config import redcnn_receptive_radius


class RedCNN(nn.Module):
    """Residual encoder-decoder CNN: 5 valid convolutions, 5 mirrored transposed convolutions.

    Three residual shortcuts as in the reference code: input -> after the last transposed conv,
    conv2 output -> after the 3rd transposed conv, conv4 output -> after the 1st transposed conv.
    Convolutions are unpadded and the transposed ones undo them exactly, so the output has the
    input's size for any input of at least `5 * (kernel_size - 1) + 1` pixels. The reference's final
    ReLU is dropped (inputs are normalised HU, which may be negative).

    Args:
        channels: feature channels (96 in the paper: ~1.85 M parameters).
        kernel_size: odd kernel size of every layer (5 in the paper).
        identity_init: zero the last layer so the untrained network is the identity (pre-training
            then starts from the input instead of ~hundreds of HU away from it).
    """

    def __init__(self, channels: int = 96, kernel_size: int = 5, identity_init: bool = True) -> None:
        super().__init__()
        if channels < 1 or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError("channels must be >= 1 and kernel_size a positive odd number")
        c, k = channels, kernel_size
        self.kernel_size = k
        self.conv1 = nn.Conv2d(1, c, k)
        self.conv2 = nn.Conv2d(c, c, k)
        self.conv3 = nn.Conv2d(c, c, k)
        self.conv4 = nn.Conv2d(c, c, k)
        self.conv5 = nn.Conv2d(c, c, k)
        self.tconv1 = nn.ConvTranspose2d(c, c, k)
        self.tconv2 = nn.ConvTranspose2d(c, c, k)
        self.tconv3 = nn.ConvTranspose2d(c, c, k)
        self.tconv4 = nn.ConvTranspose2d(c, c, k)
        self.tconv5 = nn.ConvTranspose2d(c, 1, k)
        self.relu = nn.ReLU(inplace=True)  # on fresh outputs only: fewer full-size temporaries
        if identity_init:
            nn.init.zeros_(self.tconv5.weight)
            nn.init.zeros_(self.tconv5.bias)

    @property
    def min_size(self) -> int:
        return 5 * (self.kernel_size - 1) + 1

    @property
    def receptive_radius(self) -> int:
        """See `config.redcnn_receptive_radius`."""
        return redcnn_receptive_radius(self.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"RedCNN expects (N, 1, H, W), got {tuple(x.shape)}")
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(f"RedCNN needs images of at least {self.min_size} pixels per side")
        residual1 = x
        out = self.relu(self.conv1(x))
        out = self.relu(self.conv2(out))
        residual2 = out
        out = self.relu(self.conv3(out))
        out = self.relu(self.conv4(out))
        residual3 = out
        out = self.relu(self.conv5(out))
        # in-place sums into the transposed convolutions' own outputs (autograd needs neither)
        out = self.relu(self.tconv1(out).add_(residual3))
        out = self.relu(self.tconv2(out))
        out = self.relu(self.tconv3(out).add_(residual2))
        out = self.relu(self.tconv4(out))
        return self.tconv5(out) + residual1  # not in place: under autocast the input is float32, the output not
