"""One denoising run: pseudo-noise, adaptation, guard, slice-wise inference, strength.

`denoise_array` works on arrays (what the Slicer worker and the benchmark call);
`denoise_file` adds reading, validation and atomic writing (what the CLI calls).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from .bundle import Bundle, load_bundle
from .config import AdaptConfig
from .errors import InputError
from .io import PathLike, check_ct_array, check_output_path, image_like, read_volume, same_file, write_volume
from .noise_level import NoiseEstimate, estimate_noise, soft_tissue_std
from .progress import CancelToken, ProgressCallback, ProgressEvent
from .provenance import build_provenance, set_image_fields, write_sidecar
from .quality import cast_like_input, strength_blend
from .spectrum import DEFAULT_BAND_EDGES

#: Slices used by the guard to compare the adapted and the pretrained model.
GUARD_SLICES = 6
#: The guard falls back when the adapted model's removed-noise std is further from the estimated
#: input noise than the pretrained model's by more than this fraction of the estimate.
GUARD_TOLERANCE = 0.1


@dataclass
class DenoiseResult:
    denoised: np.ndarray       # float32 HU at the requested strength
    noise_map: np.ndarray      # float32: input - denoised (what was removed)
    full_strength: np.ndarray  # float32 HU at strength 1 (to re-blend without adapting again)
    info: Dict[str, Any] = field(default_factory=dict)  # provenance record (provenance.py); run details in info["run"]


def evenly_spaced(n_total: int, n_pick: int) -> np.ndarray:
    return np.unique(np.linspace(0, n_total - 1, min(n_total, n_pick)).round().astype(int))


def pseudo_noise_std(sampler, source, norm, patches: int = 64) -> float:
    """Std (HU) of the source's pseudo-noise over the soft tissue of sampled patches of the input,
    the region where the input's noise level is estimated."""
    x, model_noise = sampler.sample(patches)
    z = source.draw(model_noise, x.shape, x.device).numpy()[:, 0] * norm.scale
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
    pool = torch.from_numpy(norm.to_model(volume[pool_index]))[:, None]
    kind = "paper" if oracle_noise is not None else config.pseudo_noise
    source = PseudoNoiseSource(kind, bundle.calibration, norm, bundle.noise_histogram,
                               config.gaussian_sigma_hu, generator, input_band_power=estimate.band_power)
    model_noise = None
    if oracle_noise is not None:
        model_noise = torch.from_numpy(norm.noise_to_model(oracle_noise[pool_index]).astype(np.float32))[:, None]
    elif source.needs_models:
        outputs = [apply_slicewise(n, volume[pool_index], config.infer_batch, phase="noise",
                                   to_input=norm.to_model, progress=progress, cancel=cancel)
                   for n in bundle.build_noise_models(device)]
        model_noise = torch.from_numpy(np.stack(outputs, axis=1))
    sampler = PatchSampler(pool, model_noise, config.patch_size, config.augment, generator)
    if kind == "spectral":
        source.fit_spectrum(sampler.sample(128)[1])
    if config.noise_level == "input" and np.isfinite(estimate.std_hu) and oracle_noise is None:
        source.level_factor = estimate.std_hu / pseudo_noise_std(sampler, source, norm)
    return sampler, source


def estimate_input_noise(volume: np.ndarray, bundle: Bundle, config: AdaptConfig) -> NoiseEstimate:
    """Noise level and texture of the input (the slices that feed the adaptation), with the
    training noise texture as the smooth end of the family (see noise_level.py)."""
    return estimate_noise(volume[evenly_spaced(len(volume), config.adapt_slices)],
                          bundle.calibration.get("band_power_real"),
                          bundle.calibration.get("band_edges", DEFAULT_BAND_EDGES))


def denoise_array(volume_hu: np.ndarray, spacing_xyz: Sequence[float], bundle: Bundle,
                  config: AdaptConfig = AdaptConfig(), progress: Optional[ProgressCallback] = None,
                  cancel: Optional[CancelToken] = None, on_teacher_update=None,
                  oracle_noise: Optional[np.ndarray] = None) -> DenoiseResult:
    """Denoise a (z, y, x) HU volume; nothing here writes files. See `config.AdaptConfig`.

    Benchmark hooks: `on_teacher_update(step, model)` and `oracle_noise` (see prepare_pseudo_pairs).
    """
    import torch

    from .adapt import adapt
    from .inference import apply_slicewise, describe_device, resolve_device

    start = time.perf_counter()
    check_ct_array(volume_hu)
    volume = np.asarray(volume_hu, dtype=np.float32)
    device = resolve_device(config.device)
    autocast = config.mixed_precision and device.type == "cuda"
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    norm = bundle.normalization
    pretrained = bundle.build_denoiser(device)
    model = pretrained
    run_info: Dict[str, Any] = {"adaptation": None, "guard": None}

    def run(net, slices, phase):
        return apply_slicewise(net, slices, config.infer_batch, phase=phase, to_input=norm.to_model,
                               from_output=norm.to_hu, autocast=autocast, progress=progress, cancel=cancel)

    if progress is not None:
        progress(ProgressEvent("noise", message="estimating the input's noise level"))
    estimate = estimate_input_noise(volume, bundle, config)
    estimated_noise = estimate.std_hu
    run_info["estimated_noise_std_hu"] = estimated_noise
    run_info["estimated_noise_sharpness"] = estimate.sharpness
    if config.steps > 0:
        sampler, source = prepare_pseudo_pairs(volume, bundle, config, device, generator, estimate,
                                               progress, cancel, oracle_noise)
        model, history = adapt(pretrained, sampler, source, config, progress, cancel, autocast, on_teacher_update)
        run_info["adaptation"] = {
            "final_loss": float(np.mean(history.losses[-config.period:])),
            "teacher_updates": len(history.teacher_updates),
            "final_lr": history.learning_rates[-1],
            "level_factor": source.level_factor,
        }
        if config.guard and np.isfinite(estimated_noise):
            guard_index = evenly_spaced(len(volume), GUARD_SLICES)
            sample = volume[guard_index]
            removed_pre = soft_tissue_std(sample, sample - run(pretrained, sample, "infer"))
            removed_adapted = soft_tissue_std(sample, sample - run(model, sample, "infer"))
            fallback = (abs(removed_adapted - estimated_noise)
                        > abs(removed_pre - estimated_noise) + GUARD_TOLERANCE * estimated_noise)
            run_info["guard"] = {"removed_std_pretrained_hu": removed_pre, "removed_std_adapted_hu": removed_adapted,
                                 "estimated_noise_std_hu": estimated_noise, "fell_back": bool(fallback)}
            if fallback:
                model = pretrained
                if progress is not None:
                    progress(ProgressEvent("adapt", config.steps, config.steps, message=(
                        "adaptation removed noise unlike the input's estimated noise: "
                        "using the pretrained model")))
    full = run(model, volume, "infer")
    denoised = strength_blend(volume, full, config.strength)
    info = build_provenance(parameters=config, bundle=bundle, device=describe_device(device),
                            elapsed_s=time.perf_counter() - start, run=run_info)
    return DenoiseResult(denoised, volume - denoised, full, info)


def denoise_file(input_path: PathLike, output_path: PathLike, noise_map_path: Optional[PathLike] = None,
                 bundle_path: Optional[PathLike] = None, config: AdaptConfig = AdaptConfig(),
                 progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
                 dicom_out: bool = False) -> Dict[str, Any]:
    """Read, denoise and write. Validates every path first; writes nothing unless the run completes.

    With `dicom_out` (the input must be a DICOM series folder) the outputs are DICOM series folders:
    new series of the same study (see dicom_out.py)."""
    source_series = None
    if dicom_out:
        from .dicom_out import read_source_series

        if not Path(input_path).is_dir():
            raise InputError("DICOM output needs a DICOM series folder as input.")
        source_series = read_source_series(input_path)
        for target in (output_path, noise_map_path):
            if target is not None and (same_file(target, input_path) or (Path(target).is_dir() and any(Path(target).iterdir()))):
                raise InputError(f"The DICOM output folder {target} is the input or not empty; choose a new folder.")
    else:
        check_output_path(output_path, input_path)
        if noise_map_path is not None:
            check_output_path(noise_map_path, input_path, output_path)
    if progress is not None:
        progress(ProgressEvent("loading", message=str(input_path)))
    image = read_volume(input_path)
    bundle = load_bundle(bundle_path)
    array = sitk.GetArrayFromImage(image)
    result = denoise_array(array, image.GetSpacing(), bundle, config, progress, cancel)
    if cancel is not None:
        cancel.raise_if_cancelled()
    if progress is not None:
        progress(ProgressEvent("writing", message=str(output_path)))
    denoised = cast_like_input(result.denoised, array.dtype)
    info = {**result.info, "input": Path(input_path).name}
    output_image = image_like(denoised, image)
    # what was removed from the input as written (integer outputs are rounded)
    noise_image = image_like(array.astype(np.float32) - denoised.astype(np.float32), image)
    if source_series is not None:
        from .dicom_out import NOISE_MAP_SUFFIX, write_dicom_series

        write_dicom_series(output_image, source_series, output_path, provenance=info)
        if noise_map_path is not None:
            write_dicom_series(noise_image, source_series, noise_map_path, suffix=NOISE_MAP_SUFFIX, provenance=info)
    else:
        set_image_fields(output_image, info)
        write_volume(output_image, output_path)
        if noise_map_path is not None:
            set_image_fields(noise_image, {**info, "output": "noise map (input - denoised)"})
            write_volume(noise_image, noise_map_path)
    write_sidecar(output_path, info)  # written last: marks the output complete (batch resume)
    return info
