"""U-Net noise model N_i: predicts the noise Z = LDCT - NDCT of one subject from the LDCT."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _DoubleConv(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """conv-ReLU x2 per level, max-pool down, bilinear upsample + skip concatenation up.

    No global residual: the output is the noise itself. Inputs of any size are padded (reflect)
    to a multiple of 2**depth and the output cropped back, so output size == input size.

    Args:
        base_channels: channels of the first level (doubled at each level down).
        depth: number of down-sampling steps.
    """

    def __init__(self, base_channels: int = 32, depth: int = 3) -> None:
        super().__init__()
        if base_channels < 1 or depth < 1:
            raise ValueError("base_channels and depth must be >= 1")
        self.depth = depth
        widths = [base_channels * 2 ** i for i in range(depth + 1)]
        self.down = nn.ModuleList([_DoubleConv(1, widths[0])] +
                                  [_DoubleConv(widths[i - 1], widths[i]) for i in range(1, depth + 1)])
        self.up = nn.ModuleList([_DoubleConv(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(depth))])
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"UNet expects (N, 1, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        multiple = 2 ** self.depth
        pad_h, pad_w = -h % multiple, -w % multiple
        if pad_h or pad_w:
            mode = "reflect" if min(h, w) > max(pad_h, pad_w) else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        skips = []
        out = x
        for i, block in enumerate(self.down):
            out = block(out if i == 0 else F.max_pool2d(out, 2))
            skips.append(out)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            out = F.interpolate(out, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            out = block(torch.cat([out, skip], dim=1))
        return self.head(out)[..., :h, :w]
