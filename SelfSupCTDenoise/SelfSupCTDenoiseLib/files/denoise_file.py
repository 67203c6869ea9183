"""One volume file in, denoised files out: read, validate, denoise (`engine.run.denoise_array`) and
write atomically (what the CLI, the cohort tasks and the Slicer worker call)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import SimpleITK as sitk

from ..engine.bundle import load_bundle
from ..engine.config import AdaptConfig
from ..engine.progress import CancelToken, ProgressCallback, ProgressEvent
from ..engine.run import denoise_array
from ..engine.strength import cast_like_input
from ..errors import InputError
from .dicom_study import select_series
from .identity import input_identity
from .provenance_io import set_image_fields, sidecar_path, sidecar_text
from .volumes import (OutputSet, PathLike, check_folder_writable, check_output_path, image_like, read_volume,
                      remove_stale_temps, same_file, write_error)


def denoise_file(input_path: PathLike, output_path: PathLike, noise_map_path: Optional[PathLike] = None,
                 bundle_path: Optional[PathLike] = None, config: AdaptConfig = AdaptConfig(),
                 progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
                 dicom_out: bool = False, overwrite: bool = False,
                 output_dtype: Optional[str] = None, series: Optional[str] = None) -> Dict[str, Any]:
    """Read, denoise and write. Validates every path (and that its folder can be written) first.

    The output set (output, noise map, sidecar `<output>.json`) appears complete or not at all: it
    is written under temporary names, verified, and renamed into place as the last step, sidecar
    last (volumes.OutputSet); an error, a full disk or an interrupt leaves the previous files as they were.
    With `dicom_out` (the input must be a DICOM series folder) the outputs are DICOM series folders:
    new series of the same study (see dicom_out.py); a non-empty output folder is refused unless
    `overwrite`. `output_dtype` (default: the input's) lets the Slicer worker hand back its strength-1
    result unrounded ("float32"), so that the panel's blend at any strength equals this function's.
    `series` picks one series of a DICOM study folder (dicom_study.select_series); the provenance's
    "input_series" says which was read and what was left out."""
    started = time.time()
    source_series = None
    input_series = None
    if Path(input_path).is_dir():
        selection = select_series(Path(input_path), series)
        input_series = {"number": selection.series.number, "uid": selection.series.uid,
                        "description": selection.series.describe(), "left_out": selection.note() or None}
        series = selection.series.uid
    targets = [Path(p) for p in (output_path, noise_map_path) if p is not None]
    if dicom_out:
        from .dicom_out import read_source_series

        if not Path(input_path).is_dir():
            raise InputError("DICOM output needs a DICOM series folder as input.")
        source_series = read_source_series(input_path, series)
        for target in targets:
            if same_file(target, input_path) or (target.is_dir() and any(target.iterdir()) and not overwrite):
                raise InputError(f"The DICOM output folder {target} is the input or not empty; choose a new folder.")
            check_folder_writable(target.parent)
    else:
        check_output_path(output_path, input_path)
        if noise_map_path is not None:
            check_output_path(noise_map_path, input_path, output_path)
    for folder in {target.parent for target in targets}:
        remove_stale_temps(folder, started)
    if progress is not None:
        progress(ProgressEvent("loading", message=str(input_path)))
    image = read_volume(input_path, config.ct_check, series)
    identity = input_identity(input_path, image, series)  # what the resume rule compares (files/identity.py)
    bundle = load_bundle(bundle_path)
    array = sitk.GetArrayViewFromImage(image)  # read-only, no copy (`image` outlives it)
    result = denoise_array(array, bundle, config, progress, cancel, keep_full_strength=False)
    if cancel is not None:
        cancel.raise_if_cancelled()
    if progress is not None:
        progress(ProgressEvent("writing", message=str(output_path)))
    denoised = cast_like_input(result.denoised, array.dtype if output_dtype is None else output_dtype)
    info = {**result.info, "input": Path(input_path).name, "input_identity": identity}
    if input_series is not None:
        info["input_series"] = input_series
    result = None  # its float volume, unless it is `denoised` itself (float32 output)
    # One output image at a time, each dropped once staged: the input, the output and one float
    # volume (twice while it is converted and read back) are the most held at once.
    with OutputSet() as outputs:
        def stage(target: PathLike, written: sitk.Image, noise_map: bool) -> None:
            if source_series is None:
                set_image_fields(written, {**info, "output": "noise map (input - denoised)"} if noise_map else info)
                outputs.add_volume(written, target)
                return
            from .dicom_out import NOISE_MAP_SUFFIX, write_dicom_series

            suffix = {"suffix": NOISE_MAP_SUFFIX} if noise_map else {}
            try:
                write_dicom_series(written, source_series, outputs.stage(target), provenance=info, **suffix)
            except OSError as exc:
                raise write_error(Path(target), exc) from None

        stage(output_path, image_like(denoised, image), noise_map=False)
        if noise_map_path is not None:
            # what was removed from the input as written (integer outputs are rounded)
            removed = np.subtract(array, denoised, dtype=np.float32)
            denoised = None
            noise_image, removed = image_like(removed, image), None
            stage(noise_map_path, noise_image, noise_map=True)
            noise_image = None
        outputs.add_text(sidecar_path(output_path), sidecar_text(info))  # last: marks the set complete
        if cancel is not None:
            cancel.raise_if_cancelled()
        outputs.commit()
    return info
