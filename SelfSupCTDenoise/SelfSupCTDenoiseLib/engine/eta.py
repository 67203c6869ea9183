"""How long the rest of a run takes, from a short probe of this machine's speed as the run starts
(issue #28): a fixed table of unit costs was 2x off on another 2-core machine of the same kind.

The probe times the two kinds of work that make a run, with the run's network, device and threads,
under the machine's present load: adaptation steps (the teacher's forward, the student's forward
and backward, Adam's step on a batch of patches) and a forward through a crop of a slice, whose
time per pixel is that of a whole slice within a few per cent (one slice per forward, as the run).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .body import box_fraction
from .config import AdaptConfig
from .inference import cpu_layout

#: The side of the probe's crop (pixels): large enough to run as whole slices do, a quarter of a 512x512 one.
PROBE_SIDE = 256
#: Timed adaptation steps (after one untimed: the first step allocates and warms the caches).
PROBE_STEPS = 2
#: What the run does besides the networks, as a share of the networks' time: patch sampling and
#: pseudo-noise during the adaptation, the noise estimate, the checks and the writing (docs/SPEED.md:
#: whole run / network floor = 1.09 for 16 to 300 slices).
OVERHEAD = 0.09


@dataclass(frozen=True)
class Probe:
    step_s: float   # one adaptation step
    pixel_s: float  # one pixel of a slice through the denoiser

    def run_seconds(self, steps: int, pixels: float) -> float:
        """The rest of a run of `steps` adaptation steps and `pixels` slice pixels through the denoiser."""
        return (steps * self.step_s + pixels * self.pixel_s) * (1 + OVERHEAD)


def _timed(fn, repeats: int) -> float:
    fn()  # untimed: allocation, oneDNN's kernels
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def probe(model: torch.nn.Module, config: AdaptConfig) -> Probe:
    """Time `model`'s adaptation step (on a copy, with `config`'s batch) and its forward per pixel."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    patches = torch.rand(config.batch_size, 1, config.patch_size, config.patch_size, generator=generator).to(device)
    student = copy.deepcopy(model).train().requires_grad_(True)
    optimizer = torch.optim.Adam(student.parameters(), lr=config.lr)

    def step():
        with torch.no_grad():
            target = model(patches)
        loss = F.mse_loss(student(patches + 0.01), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    inferring = cpu_layout(model)
    crop = torch.rand(1, 1, PROBE_SIDE, PROBE_SIDE, generator=generator).to(device)
    if device.type == "cpu":
        crop = crop.contiguous(memory_format=torch.channels_last)

    def forward():
        with torch.no_grad():
            inferring(crop)
        if device.type == "cuda":
            torch.cuda.synchronize()

    step_s = _timed(step, PROBE_STEPS)
    return Probe(step_s, _timed(forward, 1) / PROBE_SIDE ** 2)


def denoised_pixels(shape, boxes, guard_slices: int) -> float:
    """Slice pixels a run puts through the denoiser: every slice's box (`boxes` None: whole slices),
    and `guard_slices` more of the mean box (the guard runs both models on its slices and the chosen
    one's output is reused)."""
    share = 1.0 if boxes is None else box_fraction(boxes, shape)
    return share * shape[-2] * shape[-1] * (shape[0] + min(guard_slices, shape[0]))
