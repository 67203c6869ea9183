"""Pre-training: the denoiser f_theta (N2C, N2N or N2V), one noise model per training subject, and
the pseudo-noise calibration, written as a model bundle.

Each network is fitted by `fit`, which checkpoints every `checkpoint_every` steps into
`<bundle>.checkpoints/` and resumes from there when run again with the same output.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import __version__
from ..errors import InputError
from .bundle import Bundle, save_bundle
from .config import PROFILES
from .networks.redcnn import RedCNN
from .networks.unet import UNet
from .noise_level import soft_tissue_mask
from .normalization import Normalization
from .patches import RandomCrops
from .progress import CancelToken, PhaseTimer, ProgressCallback
from .spectrum import DEFAULT_BAND_EDGES, gains_to_match, patch_band_power

METHODS = ("n2c", "n2n", "n2v")


@dataclass(frozen=True)
class PretrainConfig:
    profile: str = "lite"
    method: str = "n2c"            # n2c: LDCT->NDCT pairs; n2n: LDCT->second LDCT draw; n2v: blind spot
    denoiser_steps: int = 3000
    noise_model_steps: int = 1500
    batch_size: int = 16
    patch_size: int = 64
    lr: float = 1e-4               # Adam (the paper's rate) with cosine decay; 1e-3 traps the zero-initialised
                                   # RED-CNN in its identity start (all ReLUs die; measured on the lite profile)
    loss: str = "l1"               # the paper's pre-training loss
    seed: int = 0
    checkpoint_every: int = 250
    calibration_patches: int = 512

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise InputError(f"Unknown profile {self.profile!r}; choose one of {', '.join(PROFILES)}.")
        if self.method not in METHODS:
            raise InputError(f"Unknown pre-training method {self.method!r}; choose one of {', '.join(METHODS)}.")
        if self.loss not in ("l1", "l2"):
            raise InputError("loss must be 'l1' or 'l2'.")


@dataclass
class Subject:
    """One training subject: LDCT and NDCT (z, y, x) in HU, optionally a second independent LDCT."""

    name: str
    ldct: np.ndarray
    ndct: np.ndarray
    ldct_b: Optional[np.ndarray] = None
    files: Dict[str, str] = field(default_factory=dict)
    licence: str = "unknown"   # of the source CT: decides whether weights trained on it may ship
    reference: bool = True     # of the reference protocol (the smooth standard kernel): calibrated on


def redistributable(licence: str) -> bool:
    """Whether weights derived from CT under `licence` may ship with the Apache-2.0 extension:
    no NonCommercial / NoDerivatives terms and a licence that is known at all."""
    text = licence.upper()
    return bool(licence) and "UNKNOWN" not in text and not any(t in text for t in ("-NC", "BY-NC", "-ND", "NONCOMMERCIAL"))


class PairSampler(RandomCrops):
    """Random rot90/flip-augmented patches of aligned arrays (all (z, y, x), same shape)."""

    def __init__(self, arrays: Sequence[Sequence[np.ndarray]], patch_size: int, generator: torch.Generator):
        # arrays[k] = the aligned arrays of subject k, e.g. (ldct, ndct)
        super().__init__(generator)
        self.arrays, self.patch_size = arrays, patch_size

    def sample(self, batch_size: int) -> List[torch.Tensor]:
        out: List[List[torch.Tensor]] = [[] for _ in self.arrays[0]]
        for _ in range(batch_size):
            group = self.arrays[self._randint(len(self.arrays))]
            z, h, w = group[0].shape
            p = min(self.patch_size, h, w)
            i, y, x = self._corner(z, h, w, p)
            k, flip = self._randint(4), self._randint(2)
            for slot, array in enumerate(group):
                patch = torch.rot90(torch.from_numpy(np.ascontiguousarray(array[i, y:y + p, x:x + p])), k)
                out[slot].append(patch.flip(-1) if flip else patch)
        return [torch.stack(items)[:, None].float() for items in out]


def fit(model: torch.nn.Module, batch_loss: Callable[[torch.nn.Module], torch.Tensor], steps: int, lr: float,
        checkpoint: Optional[Path], checkpoint_every: int, generator: torch.Generator, phase: str,
        progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> List[float]:
    """Adam + cosine decay for `steps` steps; resumes from `checkpoint` if it exists."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps), eta_min=lr * 0.01)
    losses: List[float] = []
    step = 0
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        losses, step = list(state["losses"]), int(state["step"])
    model.train()
    timer = PhaseTimer(phase, steps, progress, cancel)
    while step < steps:
        loss = batch_loss(model)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        step += 1
        if checkpoint is not None and (step % checkpoint_every == 0 or step == steps):
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                        "losses": losses, "step": step}, checkpoint)
        timer.emit(step, losses[-1])
    return losses


def _loss_fn(name: str):
    return F.l1_loss if name == "l1" else F.mse_loss


def n2v_mask(x: torch.Tensor, generator: torch.Generator, fraction: float = 0.015):
    """Noise2Void blind spots: replace a few pixels by a random neighbour; returns (masked, mask)."""
    b, _, h, w = x.shape
    mask = torch.rand(x.shape, generator=generator) < fraction
    dy = torch.randint(-2, 3, x.shape, generator=generator)
    dx = torch.randint(-2, 3, x.shape, generator=generator)
    same = (dy == 0) & (dx == 0)
    dx = torch.where(same, torch.ones_like(dx), dx)
    yy = (torch.arange(h)[:, None] + dy).clamp(0, h - 1)
    xx = (torch.arange(w)[None, :] + dx).clamp(0, w - 1)
    flat = x.reshape(b, -1)
    neighbour = torch.gather(flat, 1, (yy * w + xx).reshape(b, -1)).reshape(x.shape)
    return torch.where(mask, neighbour, x), mask


def calibration_subjects(subjects: Sequence[Subject]) -> List[Subject]:
    """The subjects of the reference protocol (all of them when none is marked)."""
    return [s for s in subjects if s.reference] or list(subjects)


def calibrate(subjects: Sequence[Subject], noise_models: Sequence[torch.nn.Module], norm: Normalization,
              patch_size: int, n_patches: int, generator: torch.Generator) -> Dict[str, Any]:
    """Measure the training noise and how the noise models' ensemble differs from it, on the training
    pairs of the reference protocol only: its texture is the smooth end of the noise estimator's family
    (engine/noise_level.py), which a mix with sharper kernels would move (measured: a bundle calibrated
    on Hann + Shepp-Logan + Hamming pairs misread Hann inputs and adapted 0.9-1.7 dB below its
    pretrained model)."""
    from .pseudo import PseudoNoiseSource

    subjects = calibration_subjects(subjects)
    sampler = PairSampler([(s.ldct, s.ldct - s.ndct) for s in subjects], patch_size, generator)
    ldct, real = sampler.sample(n_patches)
    with torch.no_grad():
        model_noise = torch.cat([m(norm.to_model(ldct)) for m in noise_models], dim=1)
    ensemble = PseudoNoiseSource("paper", {}, norm, generator=generator).ensemble(model_noise)
    real_model = norm.noise_to_model(real)
    real_power, pseudo_power = patch_band_power(real_model), patch_band_power(ensemble)
    residual = (real_model - model_noise[:, :1]) * norm.scale
    real_hu = (real_model * norm.scale).flatten().numpy()
    soft = np.stack([soft_tissue_mask(s) for s in ldct[:, 0].numpy()])
    stds = [float((s.ldct - s.ndct)[np.stack([soft_tissue_mask(x) for x in s.ldct])].std()) for s in subjects]

    def histogram(values):
        counts, edges = np.histogram(values, bins=128, range=tuple(np.percentile(values, [0.05, 99.95])))
        return {"edges": edges.tolist(), "counts": counts.tolist()}

    return {
        "amplitude": float(real_model.std() / ensemble.std()),
        "band_edges": list(DEFAULT_BAND_EDGES),
        "band_gains": gains_to_match(real_power, pseudo_power),
        "band_power_real": real_power.tolist(),
        "band_power_ensemble": pseudo_power.tolist(),
        "model_real_correlation": float(np.corrcoef(model_noise[:, 0].flatten(), real_model.flatten())[0, 1]),
        "noise_std_hu": float(real_hu.std()),
        "noise_std_soft_tissue_hu": float(np.mean(stds)),
        "residual_histogram": histogram(residual.flatten().numpy()),
        "_noise_histogram": histogram(real_hu),
        "soft_tissue_fraction": float(soft.mean()),
    }


def pretrain(subjects: Sequence[Subject], output: Path, config: PretrainConfig = PretrainConfig(),
             progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
             init_from: Optional[Path] = None) -> Bundle:
    """Pre-train a bundle at `output`. `init_from`: a bundle of the same profile whose denoiser is the
    start (a new cosine schedule of `config.denoiser_steps`): pushes a finished prior further."""
    if not subjects:
        raise InputError("Pre-training needs at least one training subject (LDCT/NDCT pair).")
    if config.method == "n2n" and any(s.ldct_b is None for s in subjects):
        raise InputError("N2N pre-training needs a second, independent LDCT of every subject (ldct_b).")
    output = Path(output)
    started = time.time()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    profile = PROFILES[config.profile]
    norm = Normalization()
    checkpoints = output.parent / f"{output.name}.checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    loss_fn = _loss_fn(config.loss)

    denoiser = RedCNN(**profile.denoiser_kwargs())
    start = None
    if init_from is not None:
        from .bundle import load_bundle

        start = load_bundle(init_from)
        if start.profile != profile:
            raise InputError(f"{init_from} is a {start.profile.name} bundle: it cannot start a {profile.name} denoiser.")
        denoiser.load_state_dict(start.build_denoiser("cpu").state_dict())
    if config.method == "n2c":
        pairs = PairSampler([(s.ldct, s.ndct) for s in subjects], config.patch_size, generator)
    elif config.method == "n2n":
        pairs = PairSampler([(s.ldct, s.ldct_b) for s in subjects] + [(s.ldct_b, s.ldct) for s in subjects],
                            config.patch_size, generator)
    else:
        pairs = PairSampler([(s.ldct,) for s in subjects], config.patch_size, generator)

    def denoiser_loss(model):
        batch = [norm.to_model(t) for t in pairs.sample(config.batch_size)]
        if config.method == "n2v":
            masked, mask = n2v_mask(batch[0], generator)
            return loss_fn(model(masked)[mask], batch[0][mask])
        return loss_fn(model(batch[0]), batch[1])

    curves = {"denoiser": fit(denoiser, denoiser_loss, config.denoiser_steps, config.lr,
                              checkpoints / "denoiser.pt", config.checkpoint_every, generator,
                              "pretrain denoiser", progress, cancel)}
    noise_models = []
    for index, subject in enumerate(subjects):
        model = UNet(**profile.noise_model_kwargs())
        sampler = PairSampler([(subject.ldct, subject.ldct - subject.ndct)], config.patch_size, generator)

        def noise_loss(net, sampler=sampler):
            ldct, noise = sampler.sample(config.batch_size)
            return loss_fn(net(norm.to_model(ldct)), norm.noise_to_model(noise))

        curves[f"noise_model_{index}"] = fit(model, noise_loss, config.noise_model_steps, config.lr,
                                             checkpoints / f"noise_model_{index}.pt", config.checkpoint_every,
                                             generator, f"pretrain noise model {index + 1}/{len(subjects)}",
                                             progress, cancel)
        noise_models.append(model.eval())
    denoiser.eval()
    calibration = calibrate(subjects, noise_models, norm, config.patch_size, config.calibration_patches, generator)
    noise_histogram = calibration.pop("_noise_histogram")
    training = {
        "engine_version": __version__, "torch": torch.__version__, "python": platform.python_version(),
        "config": asdict(config), "subjects": [{"name": s.name, "shape": list(s.ldct.shape), **s.files, "licence": s.licence,
                                                "redistributable": redistributable(s.licence)} for s in subjects],
        "elapsed_s": round(time.time() - started, 1), "date": time.strftime("%Y-%m-%d"),
        "final_losses": {k: float(np.mean(v[-50:])) for k, v in curves.items()},
    }
    if start is not None:
        previous = start.manifest["training"]
        training["init_from"] = {"name": start.manifest.get("name"), "sha256": start.sha256,
                                 "denoiser_steps": previous.get("config", {}).get("denoiser_steps"),
                                 "subjects": [s["name"] for s in previous.get("subjects", [])]}
    bundle = save_bundle(output, profile=profile, normalization=norm, denoiser_state=denoiser.state_dict(),
                         noise_model_states=[m.state_dict() for m in noise_models], calibration=calibration,
                         noise_histogram=noise_histogram, training=training, loss_curves=curves)
    import shutil

    shutil.rmtree(checkpoints, ignore_errors=True)
    return bundle


def recalibrate(path: Path, subjects: Sequence[Subject], config: PretrainConfig = PretrainConfig(),
                noise_models_from: Optional[Path] = None) -> Bundle:
    """The bundle at `path` with its calibration measured again on `subjects` (see `calibrate`); its
    denoiser is kept bit for bit, its noise models too unless `noise_models_from` names a bundle of the
    same profile whose noise models (and their loss curves) replace them. The manifest records both."""
    from .bundle import load_bundle

    def states_and_curves(bundle):
        entries = [bundle.manifest["files"]["denoiser"], *bundle.manifest["files"]["noise_models"]]
        states = [torch.load(bundle.path / e["name"], map_location="cpu", weights_only=True) for e in entries]
        curves_file = bundle.path / "loss_curves.json"
        return states, json.loads(curves_file.read_text(encoding="utf-8")) if curves_file.exists() else {}

    bundle = load_bundle(path)
    states, curves = states_and_curves(bundle)
    record: Dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "engine_version": __version__,
                              "subjects": [s.name for s in calibration_subjects(subjects)]}
    noise_source = bundle
    if noise_models_from is not None:
        noise_source = load_bundle(noise_models_from)
        if noise_source.profile != bundle.profile:
            raise InputError(f"{noise_models_from} is a {noise_source.profile.name} bundle, {path} a "
                             f"{bundle.profile.name} one: their noise models do not fit each other.")
        donor_states, donor_curves = states_and_curves(noise_source)
        states = states[:1] + donor_states[1:]
        curves = {"denoiser": curves.get("denoiser", []),
                  **{k: v for k, v in donor_curves.items() if k.startswith("noise_model")}}
        record["noise_models_from"] = {"name": noise_source.manifest.get("name"), "sha256": noise_source.sha256,
                                       "training_subjects": noise_source.manifest["training"].get("subjects")}
    generator = torch.Generator().manual_seed(config.seed)
    noise_models = [m.eval() for m in noise_source.build_noise_models("cpu")]
    calibration = calibrate(subjects, noise_models, bundle.normalization, config.patch_size,
                            config.calibration_patches, generator)
    noise_histogram = calibration.pop("_noise_histogram")
    return save_bundle(path, profile=bundle.profile, normalization=bundle.normalization, denoiser_state=states[0],
                       noise_model_states=states[1:], calibration=calibration, noise_histogram=noise_histogram,
                       training={**bundle.manifest["training"], "recalibrated": record}, loss_curves=curves or None)
