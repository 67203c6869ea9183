"""Algorithm 1 of the paper: student/teacher adaptation on pseudo-CT pairs of the input volume."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F

from .config import AdaptConfig
from .patches import RandomCrops
from .progress import CancelToken, PhaseTimer, ProgressCallback
from .pseudo import PseudoNoiseSource


class PatchSampler(RandomCrops):
    """Random, augmented patches of the pool slices and of the fields aligned with them.

    pool: (S, 1, H, W) input slices; aligned: (S, a, H, W) or None, per-pixel fields of the same
    slices (the noise models' outputs, the local noise level map; see pseudo.PseudoNoiseSource).
    Both get the same crop and the same geometric transform, so a field stays aligned with its image.
    """

    def __init__(self, pool: torch.Tensor, aligned: Optional[torch.Tensor], patch_size: int,
                 augment: str, generator: torch.Generator) -> None:
        super().__init__(generator)
        self.pool = pool
        self.stack = pool if aligned is None else torch.cat([pool, aligned], dim=1)  # cropped together
        self.patch_size, self.augment = patch_size, augment

    def sample(self, batch_size: int):
        s, _, h, w = self.pool.shape
        if self.augment == "rescale":
            # One scale per batch: crop p/scale pixels, resample to p (changes the noise texture).
            scale = 0.5 * 4.0 ** float(torch.rand(1, generator=self.generator))  # log-uniform in [0.5, 2]
            crop = max(8, min(round(self.patch_size / scale), h, w))
        else:
            crop = min(self.patch_size, h, w)
        patches = []
        for _ in range(batch_size):
            i, y, x = self._corner(s, h, w, crop)
            patch = self.stack[i, :, y:y + crop, x:x + crop]
            if self.augment == "rot90flip":
                patch = torch.rot90(patch, self._randint(4), dims=(-2, -1))
            if self._randint(2):
                patch = patch.flip(-1)
            if self._randint(2):
                patch = patch.flip(-2)
            patches.append(patch)
        batch = torch.stack(patches)
        if batch.shape[-1] != self.patch_size:
            batch = F.interpolate(batch, size=(self.patch_size, self.patch_size), mode="bilinear",
                                  align_corners=False)
        return batch[:, :1], (batch[:, 1:] if batch.shape[1] > 1 else None)


@dataclass
class AdaptHistory:
    losses: List[float] = field(default_factory=list)
    teacher_updates: List[int] = field(default_factory=list)
    learning_rates: List[float] = field(default_factory=list)
    diverged_at: Optional[int] = None  # the step whose loss was NaN or infinite; adaptation stopped there


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """Backward and step through `scaler`: a plain step when it is disabled; with float16 it scales
    the loss so small gradients survive, unscales them before the step and skips inf/NaN steps."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def adapt(denoiser: torch.nn.Module, sampler: PatchSampler, source: PseudoNoiseSource, config: AdaptConfig,
          progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
          amp_dtype: Optional[torch.dtype] = None,
          on_teacher_update: Optional[Callable[[int, torch.nn.Module], None]] = None):
    """Fine-tune a copy of `denoiser` on (Y~ + Z -> Y~) for `config.steps` steps.

    The teacher f_theta makes the targets Y~ = f_theta(X) and, with teacher updates, becomes a copy of
    the student every `config.period` steps and after the last step (so every step reaches the
    result); the result is the teacher (the student when teacher updates are off, the paper's
    ablation). Returns (model, history). The input model is not modified.
    A NaN or infinite loss stops the adaptation (`history.diverged_at`); the caller must not use the
    model then. `amp_dtype`: autocast dtype (`inference.mixed_precision_dtype`), None = float32.
    `on_teacher_update(step, teacher)` is called after each update (benchmarks: quality vs steps).
    """
    device = next(denoiser.parameters()).device
    teacher = copy.deepcopy(denoiser).eval().requires_grad_(False)
    student = copy.deepcopy(denoiser).train().requires_grad_(True)
    optimizer = torch.optim.Adam(student.parameters(), lr=config.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    autocast = dict(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=2)
    history = AdaptHistory()
    timer = PhaseTimer("adapt", config.steps, progress, cancel)
    period_losses: List[float] = []
    for step in range(1, config.steps + 1):
        x, aligned = sampler.sample(config.batch_size)
        x = x.to(device)
        aligned = aligned.to(device) if aligned is not None else None
        with torch.no_grad(), torch.autocast(**autocast):
            target = teacher(x).float()
        pseudo_ldct = target + source.draw(aligned, target.shape, device)
        with torch.autocast(**autocast):
            loss = F.mse_loss(student(pseudo_ldct).float(), target)
        if not torch.isfinite(loss):
            history.diverged_at = step
            break
        optimizer_step(loss, optimizer, scaler)
        history.losses.append(loss.item())
        history.learning_rates.append(optimizer.param_groups[0]["lr"])
        period_losses.append(history.losses[-1])
        if step % config.period == 0 or step == config.steps:
            if config.teacher_update:
                teacher.load_state_dict(student.state_dict())
                history.teacher_updates.append(step)
                if on_teacher_update is not None:
                    on_teacher_update(step, teacher)
            scheduler.step(sum(period_losses) / len(period_losses))
            period_losses = []
        timer.emit(step, history.losses[-1])
    result = teacher if config.teacher_update else student
    return result.eval().requires_grad_(False), history
