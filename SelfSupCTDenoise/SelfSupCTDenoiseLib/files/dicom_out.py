"""Write a denoised volume (or its noise map) as a new DICOM CT series of the input's study.

When the input was a DICOM series, each output slice starts from the header of the source slice
at the same position (patient, study, frame of reference, acquisition and CT attributes carry
over) and then changes what must change: new SeriesInstanceUID and SOPInstanceUIDs, ImageType
DERIVED\\SECONDARY, SeriesDescription "<original> denoised (research)", DerivationDescription,
a reference to the source slice, and geometry (ImagePositionPatient, ImageOrientationPatient,
PixelSpacing) from the SimpleITK image itself. Private tags, icons, overlays and pixel-padding
values are dropped. Files are written with pydicom.

Equipment, as DICOM defines it: the General Equipment attributes name the equipment that produced
the instance, so Manufacturer / ManufacturerModelName / SoftwareVersions are this software's, and
the source's (the scanner: StationName, DeviceSerialNumber, ...) move into a Contributing Equipment
item with purpose "Acquisition Equipment" (DCM 109101; "Processing Equipment" when the source was
itself derived), followed by an item for this software (DCM 109102, with ContributionDateTime and
the derivation text). DerivationCodeSequence: "Smoothing" (DCM 113087, the closest CID 7203 code
for denoising), plus "Pixel by pixel subtraction" (113062) for a noise map.

Pixel values (int16 storage, HU = stored * RescaleSlope + RescaleIntercept):
- integer-valued data within the int16 range: slope 1, intercept 0, exact;
- otherwise: slope = the smallest power of two >= (max - min + 1) / 65534 (at least 1/256), an
  integer intercept at the middle of the range; the round-trip error is at most slope / 2, i.e.
  <= 1/32 HU for a CT range of 4096 HU and <= 0.5 HU for any range below 65533 HU.
The output folder appears complete or not at all: it is written in a temporary folder next to it
and renamed into place.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, List, Mapping, Optional, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .. import __version__
from ..engine.arrays import round_into
from ..engine.provenance import applied_strength
from ..errors import InputError
from .dicom_study import select_series

PathLike = Union[str, os.PathLike]

DENOISED_SUFFIX = "denoised (research)"
NOISE_MAP_SUFFIX = "noise map (research)"
#: Series numbers of the outputs: the source's plus these offsets (a common convention for derived series).
DENOISED_SERIES_OFFSET = 1000
NOISE_MAP_SERIES_OFFSET = 2000
#: Window (centre, width) HU for a noise map: centred on 0, as the panel shows it.
NOISE_MAP_WINDOW = (0.0, 200.0)
MIN_SLOPE = 2.0 ** -8

# Copied source attributes that would be wrong for the new pixel data or the new series.
_DROP = ("PixelData", "LargestImagePixelValue", "SmallestImagePixelValue", "PixelPaddingValue",
         "PixelPaddingRangeLimit", "LargestPixelValueInSeries", "SmallestPixelValueInSeries",
         "IconImageSequence", "SourceImageSequence", "DerivationCodeSequence", "NumberOfFrames",
         "PlanarConfiguration", "FloatPixelData", "DoubleFloatPixelData", "RescaleType",
         "LUTExplanation", "VOILUTSequence", "ModalityLUTSequence", "RequestAttributesSequence")
# CT Image IOD attributes of type 2 (must be present, may be empty) to add when the source lacks them
# (PatientPosition is type 2C, required for CT).
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber", "SeriesNumber", "Manufacturer",
          "PositionReferenceIndicator", "InstanceNumber", "KVP", "AcquisitionNumber", "SliceThickness",
          "PatientPosition")
#: Value representations of text: a source's element written with the wrong one of them (TCGA-THCA's
#: LongitudinalTemporalInformationModified as SH, not CS) is given the dictionary's (`_dictionary_vrs`).
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI",
                       "UR", "UT"})
#: This software as the equipment that produces the derived instances.
SOFTWARE_MANUFACTURER = "SelfSupCTDenoise project"
SOFTWARE_MODEL = "SelfSupCTDenoise"
# The source's equipment attributes (of the scanner, or of software that made a derived source): they
# move into its Contributing Equipment item. The institution ones also stay at the top (same site).
_EQUIPMENT = ("Manufacturer", "ManufacturerModelName", "SoftwareVersions", "StationName",
              "DeviceSerialNumber", "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
              "SpatialResolution", "DateOfLastCalibration", "TimeOfLastCalibration")
# Removed from the top level: they identify the source's device, not this software (DeviceUID is not
# allowed in a Contributing Equipment item, so it is dropped).
_SCANNER_ONLY = ("StationName", "DeviceSerialNumber", "DeviceUID", "SpatialResolution",
                 "DateOfLastCalibration", "TimeOfLastCalibration")
# DCM codes: CID 7005 (purpose of contributing equipment), CID 7202 (source image), CID 7203 (derivation).
ACQUISITION_EQUIPMENT = ("109101", "DCM", "Acquisition Equipment")
PROCESSING_EQUIPMENT = ("109102", "DCM", "Processing Equipment")
SOURCE_FOR_PROCESSING = ("121322", "DCM", "Source image for image processing operation")
SMOOTHING = ("113087", "DCM", "Smoothing")  # CID 7203 has no "denoising"; this is its closest code
SUBTRACTION = ("113062", "DCM", "Pixel by pixel subtraction")


@dataclass
class SourceSeries:
    """The input DICOM series: its folder, its files in SimpleITK's slice order, their headers."""

    folder: Path
    files: List[Path]
    headers: List[Any]  # pydicom Datasets read without pixel data

    @property
    def first(self) -> Any:
        return self.headers[0]


def read_source_series(folder: PathLike, series: Optional[str] = None) -> SourceSeries:
    """Headers of the series in `folder` (see dicom_study.select_series), in the order SimpleITK's
    ImageSeriesReader stacks them (so header k belongs to slice k of the image read from that folder)."""
    import pydicom

    folder = Path(folder)
    files = select_series(folder, series).series.files  # refuses a folder with a damaged file
    headers = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in files]
    return SourceSeries(folder, files, headers)


def choose_rescale(array: np.ndarray) -> Tuple[float, float]:
    """(slope, intercept) for int16 storage; see the module docstring for the rule."""
    finite = np.isfinite(array)
    if not finite.all():
        raise InputError("The volume holds NaN or infinite values; they cannot be stored in DICOM.")
    low, high = float(array.min()), float(array.max())
    integral = np.issubdtype(array.dtype, np.integer) or bool(np.all(np.equal(np.mod(array, 1), 0)))
    if integral and low >= -32768 and high <= 32767:
        return 1.0, 0.0
    slope = max(MIN_SLOPE, 2.0 ** math.ceil(math.log2(max(high - low + 1.0, 1e-12) / 65534.0)))
    if slope > 1.0:
        raise InputError(f"Values from {low:.0f} to {high:.0f} span more than int16 can hold to within "
                         "0.5 HU; this is not a CT volume in HU.")
    return slope, float(round((low + high) / 2.0))


def _stored(slice_hu: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    return round_into((np.asarray(slice_hu, np.float64) - intercept) / slope, np.int16)


def _ds(value: float) -> Any:
    from pydicom.valuerep import DSfloat

    return DSfloat(float(value), auto_format=True)  # DS holds at most 16 characters


def _geometry(image: sitk.Image) -> Tuple[List[float], List[List[float]], np.ndarray, List[float]]:
    """ImageOrientationPatient, per-slice ImagePositionPatient, slice normal, PixelSpacing."""
    d = np.array(image.GetDirection(), dtype=float).reshape(3, 3)  # column i: direction of index axis i
    orientation = [float(v) for v in (*d[:, 0], *d[:, 1])]
    positions = [list(image.TransformIndexToPhysicalPoint((0, 0, k))) for k in range(image.GetSize()[2])]
    spacing = image.GetSpacing()
    return orientation, positions, np.cross(d[:, 0], d[:, 1]), [spacing[1], spacing[0]]  # row, column


def _matches_source(source: SourceSeries, positions: List[List[float]], tolerance_mm: float = 0.01) -> bool:
    if len(source.headers) != len(positions):
        return False
    for header, position in zip(source.headers, positions):
        ipp = getattr(header, "ImagePositionPatient", None)
        if ipp is None or np.max(np.abs(np.array(ipp, float) - position)) > tolerance_mm:
            return False
    return True


def series_description(original: str, suffix: str) -> str:
    """"<original> <suffix>", the original shortened so that the whole fits DICOM's 64 characters."""
    original = (original or "").strip()
    room = 64 - len(suffix) - 1
    if len(original) > room:
        original = original[: max(0, room - 1)].rstrip() + "~"
    return f"{original} {suffix}".strip()


def default_derivation(provenance: Optional[Mapping[str, Any]] = None, noise_map: bool = False) -> str:
    """DerivationDescription (at most 1024 characters): what made the series, with what settings."""
    what = "Noise map (input minus denoised) of a denoising" if noise_map else "Denoised"
    text = (f"{what} by SelfSupCTDenoise {__version__} (self-supervised per-volume adaptation of a CT "
            "denoiser, Won et al. 2021)")
    if provenance:
        params = provenance.get("parameters") or {}
        bundle = provenance.get("bundle") or {}
        details = []
        if params.get("target_noise") is not None:
            details.append(f"target noise {params['target_noise']} HU")
        if applied_strength(provenance) is not None:
            details.append(f"strength {applied_strength(provenance)}")
        if "steps" in params:
            details.append(f"steps {params['steps']}")
        if provenance.get("seed") is not None:
            details.append(f"seed {provenance['seed']}")
        if bundle.get("sha256"):
            details.append(f"bundle {bundle.get('name')} sha256 {str(bundle['sha256'])[:16]}")
        if provenance.get("device"):
            details.append(f"device {provenance['device']}")
        if ((provenance.get("run") or {}).get("ct_check") or {}).get("overridden"):
            details.append("CT check overridden")
        if details:
            text += "; " + ", ".join(details)
    return (text + ". Research use, not for diagnosis.")[:1024]


def _check_output_dir(output_dir: Path, source: SourceSeries, overwrite: bool) -> None:
    if output_dir.exists():
        if not output_dir.is_dir():
            raise InputError(f"The output {output_dir} is a file; give a folder for the DICOM series.")
        if output_dir.resolve() == source.folder.resolve():
            raise InputError("The DICOM output folder is the input folder; choose another folder.")
        if any(output_dir.iterdir()) and not overwrite:
            raise InputError(f"The output folder {output_dir} is not empty; choose an empty or new folder "
                             "(or allow overwriting).")
    if not output_dir.parent.is_dir():
        raise InputError(f"The folder {output_dir.parent} does not exist.")


def _dictionary_vrs(dataset: Any) -> None:
    """Give copied standard text elements the value representation of the DICOM dictionary, so that
    an error of the source's header does not become one of the derived series."""
    from pydicom.datadict import dictionary_VR

    for element in dataset.iterall():
        if element.tag.is_private or element.VR not in _TEXT_VRS:
            continue
        try:
            expected = dictionary_VR(element.tag)
        except KeyError:
            continue
        if expected != element.VR and expected in _TEXT_VRS:
            element.VR = expected


def _save(dataset: Any, path: Path) -> None:
    try:
        dataset.save_as(str(path), enforce_file_format=True)  # pydicom >= 3
    except TypeError:  # pydicom 2.x
        dataset.is_little_endian, dataset.is_implicit_VR = True, False
        dataset.save_as(str(path), write_like_original=False)


def write_dicom_series(image: sitk.Image, source: SourceSeries, output_dir: PathLike, *,
                       suffix: str = DENOISED_SUFFIX, series_number: Optional[int] = None,
                       window: Optional[Tuple[float, float]] = None, derivation: Optional[str] = None,
                       provenance: Optional[Mapping[str, Any]] = None, overwrite: bool = False) -> List[Path]:
    """Write `image` (HU, on the source's grid) as a new series of the source's study.

    suffix: DENOISED_SUFFIX or NOISE_MAP_SUFFIX (ends the SeriesDescription).
    series_number: default the source's SeriesNumber + 1000 (+ 2000 for a noise map).
    window: (centre, width) to store; default the source's (NOISE_MAP_WINDOW for a noise map).
    derivation: DerivationDescription; default says what made it, from `provenance` when given.
    Returns the written files, in slice order. Refuses a non-empty output folder unless `overwrite`.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError("Only a single-channel 3D volume can be written as a DICOM series.")
    if not source.headers:
        raise InputError("The source series has no slices.")
    output_dir = Path(output_dir)
    _check_output_dir(output_dir, source, overwrite)

    array = sitk.GetArrayViewFromImage(image)
    slope, intercept = choose_rescale(array)
    orientation, positions, normal, pixel_spacing = _geometry(image)
    per_slice = _matches_source(source, positions)
    is_noise_map = suffix == NOISE_MAP_SUFFIX
    first = source.first
    if series_number is None:
        base = int(getattr(first, "SeriesNumber", 0) or 0)
        series_number = base + (NOISE_MAP_SERIES_OFFSET if is_noise_map else DENOISED_SERIES_OFFSET)
    if window is None and is_noise_map:
        window = NOISE_MAP_WINDOW
    if derivation is None:
        derivation = default_derivation(provenance, noise_map=is_noise_map)
    description = series_description(str(getattr(first, "SeriesDescription", "") or ""), suffix)
    series_uid = generate_uid()
    frame_uid = getattr(first, "FrameOfReferenceUID", None) or generate_uid()
    now = datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    contributed = now.astimezone().strftime("%Y%m%d%H%M%S%z")  # DT with the UTC offset
    derivation_codes = [SMOOTHING, SUBTRACTION] if is_noise_map else [SMOOTHING]
    image_type_3 = list(getattr(first, "ImageType", []))[2:3] or ["AXIAL"]
    thickness = getattr(first, "SliceThickness", None) or image.GetSpacing()[2]
    rows, columns = image.GetSize()[1], image.GetSize()[0]

    # named shortly: the output's own name may be as long as the file system allows
    temp = Path(tempfile.mkdtemp(prefix=".dicom-series-", dir=output_dir.parent))
    written: List[Path] = []
    try:
        digits = max(4, len(str(len(positions))))
        for k, position in enumerate(positions):
            template = source.headers[k] if per_slice else first
            ds = pydicom.Dataset(copy.deepcopy(template))  # the source headers stay untouched
            ds.remove_private_tags()
            for keyword in _DROP:
                if keyword in ds:
                    delattr(ds, keyword)
            for tag in [t for t in ds.keys() if t.group & 0xFF00 == 0x6000]:  # overlays
                del ds[tag]
            _set_equipment(ds, derivation, contributed)
            _dictionary_vrs(ds)
            for keyword in _TYPE2:
                if keyword not in ds:
                    setattr(ds, keyword, None)
            if "BodyPartExamined" not in ds and "Laterality" not in ds:  # type 2C: required for a paired
                ds.Laterality = None  # body part, so where the part is unknown (RIDER, CMB-CRC); empty
            sop_uid = generate_uid()
            ds.SOPClassUID = CTImageStorage
            ds.SOPInstanceUID = sop_uid
            ds.Modality = "CT"
            ds.SeriesInstanceUID = series_uid
            ds.SeriesNumber = int(series_number)
            ds.SeriesDescription = description
            ds.SeriesDate, ds.SeriesTime = date, time
            ds.ContentDate, ds.ContentTime = date, time
            ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
            ds.FrameOfReferenceUID = frame_uid
            ds.ImageType = ["DERIVED", "SECONDARY", *image_type_3]
            ds.DerivationDescription = derivation
            ds.DerivationCodeSequence = DicomSequence([_code_item(code) for code in derivation_codes])
            if ds.get("BurnedInAnnotation") != "YES":  # the source's annotations stay; none is added
                ds.BurnedInAnnotation = "NO"
            ds.ImageComments = "SelfSupCTDenoise output: research use, not for diagnosis"
            ds.InstanceNumber = k + 1
            ds.ImagePositionPatient = [_ds(v) for v in position]
            ds.ImageOrientationPatient = [_ds(v) for v in orientation]
            ds.PixelSpacing = [_ds(v) for v in pixel_spacing]
            ds.SliceThickness = _ds(float(thickness))
            ds.SpacingBetweenSlices = _ds(image.GetSpacing()[2])
            ds.SliceLocation = _ds(float(np.dot(position, normal)))
            if window is not None:
                ds.WindowCenter, ds.WindowWidth = _ds(window[0]), _ds(window[1])
            if per_slice and "SOPInstanceUID" in template:
                reference = pydicom.Dataset()
                reference.ReferencedSOPClassUID = template.SOPClassUID
                reference.ReferencedSOPInstanceUID = template.SOPInstanceUID
                reference.PurposeOfReferenceCodeSequence = DicomSequence([_code_item(SOURCE_FOR_PROCESSING)])
                ds.SourceImageSequence = DicomSequence([reference])
            ds.Rows, ds.Columns = rows, columns
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
            ds.RescaleSlope, ds.RescaleIntercept = _ds(slope), _ds(intercept)
            ds.PixelData = _stored(array[k], slope, intercept).tobytes()
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CTImageStorage
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta = meta
            path = temp / f"IM{k + 1:0{digits}d}.dcm"
            _save(ds, path)
            written.append(output_dir / path.name)
        os.chmod(temp, 0o755)
        _move_into_place(temp, output_dir)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return written


def _code_item(code: Tuple[str, str, str]) -> Any:
    import pydicom

    item = pydicom.Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code
    return item


def _set_equipment(ds: Any, description: str, contributed: str) -> None:
    """Make this software the equipment of `ds` (a copy of a source header, ImageType still the
    source's) and record the source's equipment, then this software, as contributing equipment."""
    import pydicom
    from pydicom.sequence import Sequence as DicomSequence

    items = list(ds.get("ContributingEquipmentSequence") or [])  # the source's own history first
    if str(ds.get("Manufacturer") or "").strip():  # type 1 in an item: unknown equipment is left out
        image_type = list(ds.get("ImageType") or ["ORIGINAL"])
        acquired = str(image_type[0]).upper() == "ORIGINAL"
        source = pydicom.Dataset()
        source.PurposeOfReferenceCodeSequence = DicomSequence(
            [_code_item(ACQUISITION_EQUIPMENT if acquired else PROCESSING_EQUIPMENT)])
        for keyword in _EQUIPMENT:
            if keyword in ds and ds[keyword].value not in (None, "", []):
                setattr(source, keyword, copy.deepcopy(ds[keyword].value))
        items.append(source)
    software = pydicom.Dataset()
    software.PurposeOfReferenceCodeSequence = DicomSequence([_code_item(PROCESSING_EQUIPMENT)])
    software.Manufacturer, software.ManufacturerModelName = SOFTWARE_MANUFACTURER, SOFTWARE_MODEL
    software.SoftwareVersions = __version__
    software.ContributionDateTime = contributed
    software.ContributionDescription = description
    items.append(software)
    ds.ContributingEquipmentSequence = DicomSequence(items)
    for keyword in _SCANNER_ONLY:
        if keyword in ds:
            delattr(ds, keyword)
    ds.Manufacturer, ds.ManufacturerModelName = SOFTWARE_MANUFACTURER, SOFTWARE_MODEL
    ds.SoftwareVersions = __version__


def _move_into_place(temp: Path, output_dir: Path) -> None:
    """Rename the finished folder to `output_dir`; an existing one is set aside first and removed
    after, so a failure leaves either the old or the new series, never a mix."""
    if not output_dir.exists():
        os.rename(temp, output_dir)
        return
    old = output_dir.parent / f".{output_dir.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(output_dir, old)
    try:
        os.rename(temp, output_dir)
    except BaseException:
        os.rename(old, output_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)
