"""Shared pieces of the lever experiments (docs/LEVERS.md): the validation cases, reading a case of a
`simulate` dataset, and the 2.5D wrapper of the shipped 2D denoiser. Experiments, not product code."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: Subjects no shipped bundle was trained on are the test set; these validation cases choose knobs:
#: cq500_head (never in a shipped bundle's training data) and the training subjects at protocols
#: they were not trained at (d12, Ram-Lak).
VALIDATION = ("rt_chest:d12_hann,rt_chest:d25_ramlak,ts_abdomen:d25_ramlak,ts_abdomen:d12_hann,"
              "cq500_head:d25_ramlak,cq500_head:d25_hann")


def read_case(dataset: Path, case: str, protocol: str = "clean") -> Tuple[np.ndarray, np.ndarray, tuple]:
    """(ldct, reference, spacing) of 'subject:tag'."""
    import SimpleITK as sitk

    from SelfSupCTDenoiseLib.data.dataset import subject_paths

    subject, tag = case.split(":")
    ldct_path, reference_path = subject_paths(Path(dataset), subject, tag, clean=protocol == "clean")
    image = sitk.ReadImage(str(ldct_path))
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(reference_path))).astype(np.float32)
    return sitk.GetArrayFromImage(image).astype(np.float32), reference, image.GetSpacing()


class _NeighbourConv(nn.Module):
    """RED-CNN's first convolution on the centre slice plus `side` on the two neighbours that the
    wrapper hands it before each call: a 3-channel convolution without touching RedCNN.forward."""

    def __init__(self, conv: nn.Conv2d, owner: "Denoiser2p5D") -> None:
        super().__init__()
        self.conv = conv
        self.owner = [owner]  # a plain list: not a submodule (no cycle in the module tree)

    def forward(self, centre: torch.Tensor) -> torch.Tensor:
        owner = self.owner[0]
        return self.conv(centre) + F.conv2d(owner.neighbours, owner.side)


class Denoiser2p5D(nn.Module):
    """(N, 3, H, W) adjacent slices -> (N, 1, H, W) denoised centre. The neighbours' weights start at
    zero: untrained, it is exactly the 2D network."""

    def __init__(self, net2d: nn.Module) -> None:
        super().__init__()
        self.net = copy.deepcopy(net2d)
        weight = self.net.conv1.weight
        self.side = nn.Parameter(torch.zeros(weight.shape[0], 2, *weight.shape[2:]))
        self.net.conv1 = _NeighbourConv(self.net.conv1, self)
        self.neighbours = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.neighbours = x[:, 0::2]
        return self.net(x[:, 1:2])


def neighbour_stacks(volume: torch.Tensor, index, reach: int = 1) -> torch.Tensor:
    """(len(index), 2 * reach + 1, H, W) slices around each index of (S, H, W), edges repeated."""
    last = volume.shape[0] - 1
    return torch.stack([volume[[min(max(i + d, 0), last) for d in range(-reach, reach + 1)]] for i in index])
