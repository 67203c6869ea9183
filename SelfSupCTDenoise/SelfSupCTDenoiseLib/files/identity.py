"""What an output was made from: the identity of its input, recorded in the output's sidecar
(`input_identity`) and compared when a batch or a cohort resumes. A name says nothing: another
patient's scan exported under the same file name must not count as done.

A volume file is known by a SHA-256 of its voxels and geometry (a re-export of the same scan, with a
new mtime or another compression, is the same input), with its size and mtime as a fast path. A
DICOM series folder is known by its SeriesInstanceUID and the SOP instance UIDs of its slices.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import SimpleITK as sitk

from .volumes import PathLike, refuse_special_file, volume_suffix

#: Header files whose voxels are in another file: their own size and mtime say nothing of the voxels.
DETACHED_HEADERS = (".nhdr", ".mhd")
SERIES_UID, SOP_INSTANCE_UID = "0020|000e", "0008|0018"


def voxels_sha256(image: sitk.Image) -> str:
    """SHA-256 of the voxel values (type, size, bytes) and the geometry of `image`."""
    array = np.ascontiguousarray(sitk.GetArrayViewFromImage(image))
    digest = hashlib.sha256()
    digest.update(repr((str(array.dtype), array.shape, image.GetSpacing(), image.GetOrigin(),
                        image.GetDirection())).encode())
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def _dicom_identity(folder: Path, series: Optional[str] = None) -> Dict[str, Any]:
    from .dicom_study import select_series

    reader = sitk.ImageFileReader()
    uids, instances = set(), []
    for path in select_series(folder, series).series.files:
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        uids.add(reader.GetMetaData(SERIES_UID).strip() if reader.HasMetaDataKey(SERIES_UID) else "")
        instances.append(reader.GetMetaData(SOP_INSTANCE_UID).strip() if reader.HasMetaDataKey(SOP_INSTANCE_UID)
                         else "")
    listed = "\n".join(sorted(instances)).encode()
    return {"kind": "dicom series", "series_instance_uid": "\\".join(sorted(uids)), "instances": len(instances),
            "sop_instance_uids_sha256": hashlib.sha256(listed).hexdigest()}


def input_identity(path: PathLike, image: Optional[sitk.Image] = None, series: Optional[str] = None) -> Dict[str, Any]:
    """The identity of the input at `path` (a volume file, or the series `series` of a DICOM folder:
    see dicom_study.select_series); `image`: the volume already read from it (spares reading it again)."""
    path = Path(path)
    if path.is_dir():
        return _dicom_identity(path, series)
    status = path.stat()
    if image is None:
        refuse_special_file(path)
        image = sitk.ReadImage(str(path))
    return {"kind": "file", "size": status.st_size, "mtime_ns": status.st_mtime_ns,
            "voxels_sha256": voxels_sha256(image)}


def identity_difference(recorded: Dict[str, Any], path: PathLike, series: Optional[str] = None) -> Optional[str]:
    """None where the input at `path` (with `series`: that series of a DICOM folder) is the one
    `recorded` describes, else what differs (a few words). A file unchanged in size and mtime is not
    read again."""
    path = Path(path)
    kind = recorded.get("kind")
    if kind == "file" and path.is_file() and volume_suffix(path) not in DETACHED_HEADERS:
        status = path.stat()
        if (status.st_size, status.st_mtime_ns) == (recorded.get("size"), recorded.get("mtime_ns")):
            return None
    try:
        current = input_identity(path, series=series)
    except (OSError, RuntimeError, ValueError) as exc:  # gone, unreadable (InputError is a ValueError)
        return f"{path.name} cannot be read now ({str(exc).strip().splitlines()[-1] if str(exc).strip() else exc})"
    if current["kind"] != kind:
        return f"{path.name} was a {kind or 'input of unknown kind'}, now a {current['kind']}"
    if kind == "file":
        return None if current["voxels_sha256"] == recorded.get("voxels_sha256") else f"{path.name} holds other voxels"
    if current["series_instance_uid"] != recorded.get("series_instance_uid"):
        return f"{path.name} holds another series (SeriesInstanceUID)"
    if current["sop_instance_uids_sha256"] != recorded.get("sop_instance_uids_sha256"):
        return (f"{path.name} holds other slices (SOP instance UIDs; {recorded.get('instances')} -> "
                f"{current['instances']} slices)")
    return None
