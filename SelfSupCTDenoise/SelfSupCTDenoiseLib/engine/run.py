"""One denoising run on arrays: pseudo-noise, adaptation, guard, slice-wise inference, strength.

`denoise_array` works on arrays and writes nothing (what the Slicer worker, the benchmark and
`files.denoise_file` call).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import numpy as np

from ..errors import BundleError
from .arrays import all_finite, evenly_spaced, slabs
from .body import body_boxes, box_fraction
from .bundle import Bundle
from .config import AdaptConfig
from .ct_array import HU_AIR, check_ct_array, overridden_refusal, padding_mask
from .noise_level import NoiseEstimate, estimate_noise, local_level_map, soft_tissue_std
from .progress import CancelToken, ProgressCallback, ProgressEvent
from .provenance import build_provenance
from .spectrum import DEFAULT_BAND_EDGES
from .strength import strength_blend
from .target_noise import strength_for_target

#: Slices used by the guard to compare the adapted and the pretrained model.
GUARD_SLICES = 6
#: The guard falls back when the adapted model's removed-noise std (soft tissue of the guard's slices)
#: lies outside this band of the estimated input noise, and further from it than the pretrained
#: model's. Only gross failures: the removed std also counts the structure a model smooths away and
#: the estimate errs by up to ~11 % (benchmark), so a 10 % gap says nothing about which model is
#: better (a 0.1 tolerance rejected a model 2.1 dB better than the pretrained one).
GUARD_BAND = (0.5, 1.5)


def guard_rejects(removed_adapted: float, removed_pretrained: float, estimated: float) -> bool:
    """True when the adapted model removed noise grossly unlike the input's estimated noise (see
    GUARD_BAND) and the pretrained model is the safer choice, which it never is by smoothing more:
    an adapted model that removed too much gives way only to one that removes less; one that removed
    too little only to one that removes more, but no more than the estimated noise."""
    ratio_adapted, ratio_pretrained = removed_adapted / estimated, removed_pretrained / estimated
    low, high = GUARD_BAND
    if ratio_adapted > high:
        return ratio_pretrained < ratio_adapted
    return ratio_adapted < low and ratio_adapted < ratio_pretrained <= 1.0


@dataclass
class DenoiseResult:
    denoised: np.ndarray       # float32 HU at the requested strength
    full_strength: Optional[np.ndarray]  # float32 HU at strength 1 (to re-blend without adapting again);
    #                                      the same array as `denoised` at strength 1
    info: Dict[str, Any] = field(default_factory=dict)  # provenance record (provenance.py); run details in info["run"]
    input_hu: Optional[np.ndarray] = field(default=None, repr=False)  # the caller's input itself, not a copy

    @property
    def noise_map(self) -> np.ndarray:
        """float32: input - denoised (what was removed), made on each access: one volume less to keep."""
        return np.subtract(self.input_hu, self.denoised, dtype=np.float32)


#: The lowest HU the networks are given. They were trained on CT floored at -1024 HU (data.sources.HU_FLOOR)
#: plus low-dose noise, whose tail in air reaches -1090 HU at the training dose and -1270 HU at the
#: lowest simulated doses: darker values (resampled edges of the scan circle) are raised to this.
#: Not -1024 itself: cutting the noise in air there shifts the output in air (+8 HU at 50 HU noise).
NETWORK_FLOOR_HU = -1200.0


def model_view(volume_hu: np.ndarray):
    """(what the networks and every statistic see, padding mask or None): scanner padding
    (ct_array.padding_mask) becomes air, -1024 HU, and nothing lies below NETWORK_FLOOR_HU. A new array."""
    volume = np.asarray(volume_hu, dtype=np.float32)
    padding = padding_mask(volume)
    view = np.where(padding, np.float32(HU_AIR), np.maximum(volume, np.float32(NETWORK_FLOOR_HU)))
    return view, (padding if padding.any() else None)


def pseudo_noise_std(sampler, source, norm, patches: int = 64) -> float:
    """Std (HU) of the source's pseudo-noise over the soft tissue of sampled patches of the input,
    the region where the input's noise level is estimated."""
    x, aligned = sampler.sample(patches)
    z = source.draw(aligned, x.shape, x.device).numpy()[:, 0] * norm.scale
    return soft_tissue_std(norm.to_hu(x.numpy()[:, 0]), z)


def prepare_pseudo_pairs(volume: np.ndarray, bundle: Bundle, config: AdaptConfig, device, generator,
                         estimate: NoiseEstimate, progress: Optional[ProgressCallback] = None,
                         cancel: Optional[CancelToken] = None, oracle_noise: Optional[np.ndarray] = None):
    """The patch sampler and pseudo-noise source of one run (also used by the benchmark to measure
    the pseudo-noise itself). `oracle_noise` (benchmarks only): true noise (HU) independent of the
    input's, replacing the pseudo-noise: the best any pseudo-noise can do."""
    import torch

    from .adapt import PatchSampler
    from .inference import apply_slicewise
    from .pseudo import PseudoNoiseSource

    norm = bundle.normalization
    pool_index = evenly_spaced(len(volume), config.adapt_slices)
    pool_hu = model_view(volume[pool_index])[0]  # patches hold no padding, only the air it stands for
    pool = torch.from_numpy(norm.to_model(pool_hu))[:, None]
    kind = "paper" if oracle_noise is not None else config.pseudo_noise
    levelled = config.noise_level != "bundle" and np.isfinite(estimate.std_hu) and oracle_noise is None
    source = PseudoNoiseSource(kind, bundle.calibration, norm, bundle.noise_histogram,
                               config.gaussian_sigma_hu, generator, input_band_power=estimate.band_power,
                               local_level=levelled and config.noise_level == "local")
    aligned = []  # per-pixel fields cropped with the image (PseudoNoiseSource.split)
    if oracle_noise is not None:
        aligned.append(torch.from_numpy(norm.noise_to_model(oracle_noise[pool_index]).astype(np.float32))[:, None])
    elif source.needs_models:
        outputs = [apply_slicewise(n, pool_hu, config.infer_batch, phase="noise",
                                   to_input=norm.to_model, progress=progress, cancel=cancel)
                   for n in bundle.build_noise_models(device)]
        aligned.append(torch.from_numpy(np.stack(outputs, axis=1)))
    if source.local_level:
        aligned.append(torch.from_numpy(local_level_map(pool_hu))[:, None])
    sampler = PatchSampler(pool, torch.cat(aligned, dim=1) if aligned else None, config.patch_size,
                           config.augment, generator)
    if kind == "spectral":
        source.fit_spectrum(sampler.sample(128)[1])
    if levelled:  # after the map: the map moves the level, the estimate sets it
        source.level_factor = estimate.std_hu / pseudo_noise_std(sampler, source, norm)
    return sampler, source


def estimate_input_noise(volume: np.ndarray, bundle: Bundle, config: AdaptConfig) -> NoiseEstimate:
    """Noise level and texture of the input (the slices that feed the adaptation), with the
    training noise texture as the smooth end of the family (see noise_level.py). Padding counts as air."""
    return estimate_noise(model_view(volume[evenly_spaced(len(volume), config.adapt_slices)])[0],
                          bundle.calibration.get("band_power_real"),
                          bundle.calibration.get("band_edges", DEFAULT_BAND_EDGES))


def denoise_array(volume_hu: np.ndarray, bundle: Bundle,
                  config: AdaptConfig = AdaptConfig(), progress: Optional[ProgressCallback] = None,
                  cancel: Optional[CancelToken] = None, on_teacher_update=None,
                  oracle_noise: Optional[np.ndarray] = None, *, keep_full_strength: bool = True) -> DenoiseResult:
    """Denoise a (z, y, x) HU volume; nothing here writes files. See `config.AdaptConfig`.

    Runs with `config.threads` torch threads (the previous count is restored): the same input, seed,
    thread count, device and torch build give the same output. The output is always finite: a
    diverging adaptation falls back to the pretrained model, a non-finite pretrained output is an error.
    Memory: besides the input (never copied whole) one float32 volume at strength 1, two below it;
    `keep_full_strength=False` blends in place and leaves `full_strength` None (always one volume).
    Benchmark hooks: `on_teacher_update(step, model)` and `oracle_noise` (see prepare_pseudo_pairs).
    """
    from .inference import torch_threads

    with torch_threads(config.threads):
        return _denoise_array(volume_hu, bundle, config, progress, cancel, on_teacher_update,
                              oracle_noise, keep_full_strength)


def _denoise_array(volume_hu: np.ndarray, bundle: Bundle, config: AdaptConfig,
                   progress: Optional[ProgressCallback], cancel: Optional[CancelToken], on_teacher_update,
                   oracle_noise: Optional[np.ndarray], keep_full_strength: bool = True) -> DenoiseResult:
    """`denoise_array` once its thread count is set."""
    import torch

    from .adapt import adapt
    from .eta import denoised_pixels, probe
    from .inference import apply_slicewise, describe_device, mixed_precision_dtype, resolve_device

    start = time.perf_counter()
    check_ct_array(volume_hu, ct_check=config.ct_check)
    # Never copied whole: the networks, the noise estimate, the patches and the guard see model_view
    # (padding as air) of the slices they use, batch by batch; the padding is given back below.
    volume = np.asarray(volume_hu)
    device = resolve_device(config.device)
    amp_dtype = mixed_precision_dtype(device, config.mixed_precision)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    norm = bundle.normalization
    pretrained = bundle.build_denoiser(device)
    model = pretrained
    run_info: Dict[str, Any] = {"adaptation": None, "guard": None,
                                "precision": str(amp_dtype or torch.float32).replace("torch.", ""),
                                # with the check off: the refusal it overrode (None: it would have passed)
                                "ct_check": {"enabled": config.ct_check,
                                             "overridden": None if config.ct_check else overridden_refusal(volume)}}
    radius = getattr(pretrained, "receptive_radius", None)  # unknown networks see whole slices
    boxes = body_boxes(volume, radius) if config.body_only and radius is not None else None
    if boxes is not None:
        run_info["body_fraction"] = round(box_fraction(boxes, volume.shape), 3)
    guard_index = evenly_spaced(len(volume), GUARD_SLICES)
    guard_outputs: Dict[Any, np.ndarray] = {}  # model -> its output on the guard's slices
    full = None  # the output at strength 1, made once the model is chosen

    def run(net, index=None):
        """net's HU output on the slices `index`; with None on every slice, into `full`, where the
        guard's output of this model is reused (not run twice)."""
        known = guard_outputs.get(net) if index is None else None
        if known is not None:
            full[guard_index] = known
        return apply_slicewise(net, volume if index is None else volume[index], config.infer_batch, phase="infer",
                               to_input=lambda hu: norm.to_model(model_view(hu)[0]), from_output=norm.to_hu,
                               amp_dtype=amp_dtype, progress=progress, cancel=cancel,
                               out=full if index is None else None, done=guard_index if known is not None else (),
                               boxes=None if boxes is None else boxes if index is None else boxes[index],
                               views=config.views)

    def fall_back(reason: str):
        """The pretrained model, saying why (progress message and run info), guard on or off."""
        run_info["guard"] = {**(run_info["guard"] or {}), "fell_back": True, "reason": reason}
        if progress is not None:
            progress(ProgressEvent("adapt", message=f"{reason}: using the pretrained model"))
        return pretrained

    expected = probe(pretrained, config).run_seconds(config.steps, denoised_pixels(
        volume.shape, boxes, GUARD_SLICES if config.steps > 0 and config.guard else 0) * config.views)
    run_info["expected_s"] = round(expected, 1)  # what the rest of the run was expected to take
    if progress is not None:
        progress(ProgressEvent("noise", eta_s=expected, message="the time left is from this machine's speed, "
                               "measured now; estimating the input's noise level"))
    estimate = estimate_input_noise(volume, bundle, config)
    estimated_noise = estimate.std_hu
    run_info["estimated_noise_std_hu"] = estimated_noise
    run_info["estimated_noise_sharpness"] = estimate.sharpness
    if config.steps > 0:
        sampler, source = prepare_pseudo_pairs(volume, bundle, config, device, generator, estimate,
                                               progress, cancel, oracle_noise)
        model, history = adapt(pretrained, sampler, source, config, progress, cancel, amp_dtype, on_teacher_update)
        run_info["adaptation"] = {
            "final_loss": float(np.mean(history.losses[-config.period:])) if history.losses else None,
            "teacher_updates": len(history.teacher_updates),
            "final_lr": history.learning_rates[-1] if history.learning_rates else config.lr,
            "level_factor": source.level_factor,
            "diverged_at_step": history.diverged_at,
        }
        if history.diverged_at is not None:
            model = fall_back(f"adaptation diverged (non-finite loss at step {history.diverged_at})")
        elif config.guard and np.isfinite(estimated_noise):
            sample = model_view(volume[guard_index])[0]
            guard_outputs = {pretrained: run(pretrained, guard_index), model: run(model, guard_index)}
            removed_pre = soft_tissue_std(sample, sample - guard_outputs[pretrained])
            removed_adapted = soft_tissue_std(sample, sample - guard_outputs[model])
            run_info["guard"] = {"removed_std_pretrained_hu": removed_pre, "removed_std_adapted_hu": removed_adapted,
                                 "estimated_noise_std_hu": estimated_noise, "fell_back": False, "reason": None}
            if not np.isfinite(removed_adapted):  # NaN compares False: test it first
                model = fall_back("the adapted model's output is not finite")
            elif guard_rejects(removed_adapted, removed_pre, estimated_noise):
                model = fall_back("adaptation removed noise unlike the input's estimated noise")
    full = np.empty(volume.shape, dtype=np.float32)
    run(model)
    if model is not pretrained and not all_finite(full):  # checked whether or not the guard is on
        model = fall_back("the adapted model's output is not finite")
        run(model)
    if not all_finite(full):
        hint = " or turn mixed precision off" if amp_dtype == torch.float16 else ""
        raise BundleError(f"The pretrained model of bundle '{bundle.name}' gives NaN or infinite values on this "
                          f"volume: the bundle is broken; reinstall or re-create it{hint}. Nothing was written.")
    for part in slabs(full):  # the padding bit for bit, nothing removed there, at any strength
        padding = padding_mask(volume[part])
        if padding.any():
            full[part][padding] = volume[part][padding]
    strength = config.strength
    if config.target_noise is not None:  # the strength that leaves the noise asked for
        run_info["target_noise"] = strength_for_target(volume, full, config.target_noise, estimated_noise)
        strength = run_info["target_noise"]["strength"]
    if strength == 1.0:
        denoised = full
    else:
        denoised = strength_blend(volume, full, strength,
                                  out=np.empty_like(full) if keep_full_strength else full)
    info = build_provenance(parameters=config, bundle=bundle, device=describe_device(device),
                            elapsed_s=time.perf_counter() - start, run=run_info, threads=torch.get_num_threads())
    return DenoiseResult(denoised, full if keep_full_strength else None, info, volume_hu)
