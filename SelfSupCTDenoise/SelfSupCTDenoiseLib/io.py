"""Reading, validating and writing CT volumes through SimpleITK (NRRD, NIfTI, MHA, DICOM series).

Arrays are (z, y, x) in HU; SimpleITK applies the DICOM rescale slope/intercept on reading. Every
check raises `InputError` with what is wrong and what to do, before anything is written. Writing
goes to a temporary file next to the target and is renamed into place, so an interrupted or failed
write never leaves a half-written output, and the input is never the output.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Union

import numpy as np
import SimpleITK as sitk

from .errors import InputError

PathLike = Union[str, os.PathLike]
VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def read_volume(path: PathLike) -> sitk.Image:
    """Read a 3D CT volume from a file or a DICOM series folder and validate it."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"Input not found: {path}")
    try:
        if path.is_dir():
            image = _read_dicom_series(path)
        else:
            image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reason"
        raise InputError(f"Cannot read {path}: {first}. Supported: NRRD, NIfTI, MHA/MHD files or a "
                         "folder holding one DICOM series.") from None
    validate_image(image, str(path))
    return image


def _read_dicom_series(folder: Path) -> sitk.Image:
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputError(f"{folder} is a folder without a DICOM series. Give a volume file or the "
                         "folder of one DICOM series.")
    if len(series) > 1:
        raise InputError(f"{folder} holds {len(series)} DICOM series ({', '.join(series)}); put the one "
                         "to denoise in a folder of its own.")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]))
    return reader.Execute()


def validate_image(image: sitk.Image, name: str = "the input") -> None:
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{name} has {image.GetNumberOfComponentsPerPixel()} values per voxel (a vector, "
                         "colour or multi-echo image). SelfSupCTDenoise needs a single-channel CT volume in HU.")
    if image.GetDimension() != 3:
        kind = "2D image" if image.GetDimension() == 2 else f"{image.GetDimension()}D image"
        raise InputError(f"{name} is a {kind}. SelfSupCTDenoise needs a 3D CT volume (for a time "
                         "series, extract one 3D frame first).")
    check_ct_array(sitk.GetArrayViewFromImage(image), name)


def check_ct_array(array: np.ndarray, name: str = "the input") -> None:
    """Refuse what is not a CT volume in HU: wrong shape, NaN/inf, label maps, non-HU ranges."""
    if array.ndim != 3:
        raise InputError(f"{name} has {array.ndim} dimensions; a 3D (slices, rows, columns) volume is needed.")
    if min(array.shape[1:]) < 16:
        raise InputError(f"{name} has slices of {array.shape[2]}x{array.shape[1]} pixels; at least 16x16 is needed.")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise InputError(f"{name} contains {bad} NaN or infinite voxel(s). Fill them (e.g. with -1024 HU) first.")
    if np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.bool_):
        sample = array[:: max(1, array.shape[0] // 8)]
        values = np.unique(sample)
        if len(values) <= 32 and values.min() >= 0:
            raise InputError(f"{name} looks like a label map or segmentation ({len(values)} distinct values), "
                             "not a CT image. Choose the CT volume itself.")
    low, median, high = np.percentile(array[:: max(1, array.shape[0] // 16)], [0.5, 50, 99.5])
    if high - low < 50 or low < -4000 or high > 40000 or median > 2000 or low > 0:
        raise InputError(
            f"{name} does not look like CT in Hounsfield units (0.5%/50%/99.5% percentiles: "
            f"{low:.0f}/{median:.0f}/{high:.0f}; CT has air near -1000 HU and water at 0 HU). If these are "
            "raw stored values, apply the rescale slope/intercept first; SelfSupCTDenoise is for CT only.")


def image_like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """A SimpleITK image of `array` with the reference's exact origin, spacing and direction."""
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def same_file(a: PathLike, b: PathLike) -> bool:
    a, b = Path(a), Path(b)
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def check_output_path(output: PathLike, *inputs: PathLike) -> Path:
    output = Path(output)
    for source in inputs:
        if source is not None and same_file(output, source):
            raise InputError(f"The output {output} is the input: choose another output path (the input "
                             "is never overwritten).")
    if output.exists() and output.is_dir():
        raise InputError(f"The output {output} is a folder; give a file name ending in one of "
                         f"{', '.join(VOLUME_SUFFIXES)}.")
    if _suffix(output) not in VOLUME_SUFFIXES:
        raise InputError(f"Unsupported output type {output.name!r}: use one of {', '.join(VOLUME_SUFFIXES)}.")
    if not output.parent.exists():
        raise InputError(f"The output folder {output.parent} does not exist.")
    return output


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_volume(image: sitk.Image, path: PathLike, compress: bool = True) -> None:
    """Write atomically: a temporary file in the target folder, renamed over the target."""
    path = Path(path)
    suffix = _suffix(path)
    if suffix in (".nhdr", ".mhd"):  # header + separate data file: cannot be renamed as one
        sitk.WriteImage(image, str(path), compress)
        return
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    try:
        sitk.WriteImage(image, temp, compress)
        os.chmod(temp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
