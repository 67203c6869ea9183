"""What a DICOM folder holds and which of its series to read (SimpleITK/GDCM only, no pydicom).

A real export is often a study folder: the axial CT series next to the localizer (scout), reformats,
a dose report, secondary captures (dose screens) and presentation states. Each series is described
(number, description, slices, slice thickness, kernel, image type) so that a folder of several
CT image series can be listed and one picked (`--series NUMBER|UID`); localizers and non-image
objects are left out, with a note, unless asked for. A folder with exactly one CT image series
just works.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import SimpleITK as sitk

from ..errors import InputError

#: SOP classes of CT images (Enhanced CT and its legacy-converted form are multi-frame objects).
CT_IMAGE_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2")
#: SOP class UID prefix -> what a user calls objects without a CT volume in them.
OTHER_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.": "structured report (dose report)",
    "1.2.840.10008.5.1.4.1.1.11.": "presentation state",
    "1.2.840.10008.5.1.4.1.1.7": "secondary capture",
    "1.2.840.10008.5.1.4.1.1.104.": "encapsulated document",
    "1.2.840.10008.5.1.4.1.1.66": "raw data or registration",
    "1.2.840.10008.5.1.4.1.1.481.": "radiotherapy object",
}
#: Files that may sit in a DICOM folder without being DICOM: the index, OS and viewer litter, notes.
_BYSTANDER_NAMES = frozenset({"dicomdir", "thumbs.db", "desktop.ini"})
_BYSTANDER_SUFFIXES = frozenset({".txt", ".md", ".rtf", ".pdf", ".doc", ".docx", ".htm", ".html", ".xml",
                                 ".json", ".csv", ".log", ".ini", ".db", ".jpg", ".jpeg", ".png", ".gif",
                                 ".bmp", ".lnk", ".url", ".exe", ".inf"})


def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _is_bystander(path: Path) -> bool:
    name = path.name.lower()
    if name == "dicomdir":
        return True
    if not (name.startswith(".") or name in _BYSTANDER_NAMES or path.suffix.lower() in _BYSTANDER_SUFFIXES):
        return False
    return not _is_dicom(path)  # a DICOM file under any name is not a bystander


def file_meta(path: Path) -> Dict[int, str]:
    """The text elements of a DICOM file's meta information (group 0002, always explicit VR little
    endian) by element number: 2 the SOP class, 0x10 the transfer syntax. Empty if not DICOM. Read
    without GDCM, which skips what it cannot decode or holds no image."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return {}
    found: Dict[int, str] = {}
    position = 132
    while head[128:132] == b"DICM" and position + 8 <= len(head):
        group, element = struct.unpack_from("<HH", head, position)
        if group != 2:
            break
        vr = head[position + 4:position + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            length, start = struct.unpack_from("<I", head, position + 8)[0], position + 12
        else:
            length, start = struct.unpack_from("<H", head, position + 6)[0], position + 8
        if vr in (b"UI", b"AE", b"SH", b"CS"):
            found[element] = head[start:start + length].decode("ascii", "replace").strip("\0 ")
        position = start + length
    return found


#: Transfer syntaxes by UID, to name one SimpleITK's GDCM cannot decode.
TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2.4.50": "JPEG Baseline", "1.2.840.10008.1.2.4.51": "JPEG Extended",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless", "1.2.840.10008.1.2.4.70": "JPEG Lossless SV1",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless", "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless", "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.4.201": "High-Throughput JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.202": "High-Throughput JPEG 2000 (RPCL) Lossless",
    "1.2.840.10008.1.2.4.203": "High-Throughput JPEG 2000", "1.2.840.10008.1.2.4.110": "JPEG XL Lossless",
    "1.2.840.10008.1.2.4.111": "JPEG XL JPEG Recompression", "1.2.840.10008.1.2.4.112": "JPEG XL",
    "1.2.840.10008.1.2.4.100": "MPEG2 video", "1.2.840.10008.1.2.4.102": "MPEG-4 AVC/H.264 video",
    "1.2.840.10008.1.2.5": "RLE Lossless", "1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
}


#: Uncompressed: implicit and explicit VR little endian, explicit VR big endian.
UNCOMPRESSED_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")


def compressed_syntax(path: Path) -> Optional[str]:
    """'JPEG XL (1.2.840.10008.1.2.4.112)': the transfer syntax of a DICOM file whose pixel data are
    compressed (or encoded otherwise), named; None for uncompressed data or a file that is not DICOM."""
    uid = file_meta(path).get(0x10)
    if not uid or uid in UNCOMPRESSED_SYNTAXES:
        return None
    return f"{TRANSFER_SYNTAXES.get(uid, 'transfer syntax')} ({uid})"


def other_object_kind(sop_class: Optional[str]) -> Optional[str]:
    """What a non-CT-image object is (`OTHER_SOP_CLASSES`), None for anything else."""
    for prefix, kind in OTHER_SOP_CLASSES.items():
        if sop_class and sop_class.startswith(prefix):
            return kind
    return None


@dataclass
class Series:
    """One series of a DICOM folder: its files (in the order SimpleITK stacks them) and header values."""

    uid: str
    files: List[Path]
    tags: Dict[str, str] = field(default_factory=dict)  # of its first file: "0020|0011" -> value
    kind: str = "CT image"  # or "localizer", "MR image", "secondary capture", "structured report ...", ...

    @property
    def number(self) -> str:
        return self.tags.get("0020|0011", "").strip()

    @property
    def is_ct_image(self) -> bool:
        return self.kind == "CT image"

    @property
    def frames(self) -> int:
        """Frames in its first file: more than one in an Enhanced (multi-frame) CT object."""
        text = self.tags.get("0028|0008", "").strip()
        return int(text) if text.isdigit() else 1

    def describe(self) -> str:
        """'#3 "CT_Skull_To_Thigh": 269 slices, 5 mm, kernel B30f, ORIGINAL\\PRIMARY\\AXIAL' (what is known)."""
        value = lambda key: self.tags.get(key, "").strip()  # noqa: E731
        parts = [f"{len(self.files)} {'slice' if len(self.files) == 1 else 'slices'}"]
        if value("0018|0050"):
            parts.append(f"{float(value('0018|0050')):g} mm" if _is_number(value("0018|0050")) else value("0018|0050"))
        if value("0018|1210"):
            parts.append(f"kernel {value('0018|1210')}")
        if value("0008|0008"):
            parts.append(value("0008|0008"))
        if not self.is_ct_image:
            parts.append(self.kind)
        name = f'#{self.number or "?"}' + (f' "{value("0008|103e")}"' if value("0008|103e") else "")
        return f"{name}: {', '.join(parts)}"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


_TAGS = ("0020|0011", "0008|103e", "0018|0050", "0018|1210", "0008|0008", "0008|0060", "0008|0016", "0028|0008")


def _header(path: Path) -> Dict[str, str]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return {}
    return {key: reader.GetMetaData(key) for key in _TAGS if reader.HasMetaDataKey(key)}


def _image_kind(tags: Dict[str, str]) -> str:
    sop_class = tags.get("0008|0016", "").strip("\0 ")
    other = other_object_kind(sop_class)
    if other is not None:
        return other
    if "LOCALIZER" in tags.get("0008|0008", "").upper():
        return "localizer"
    modality = tags.get("0008|0060", "").strip()
    if sop_class in CT_IMAGE_SOP_CLASSES or (not sop_class and modality == "CT"):
        return "CT image"
    return f"{modality or 'non-CT'} image"


def read_study(folder: Path) -> Tuple[List[Series], List[Path]]:
    """(the series in `folder`, sorted by number; files that no series holds and that are neither
    bystanders nor DICOM objects without an image: damaged, truncated or foreign files)."""
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) if folder.is_dir() else ()
    found = []
    for uid in series_ids:
        files = [Path(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)]
        tags = _header(files[0])
        found.append(Series(uid, files, tags, _image_kind(tags)))
    members = {f.name for s in found for f in s.files}
    others: Dict[str, Series] = {}  # kind -> the files GDCM does not read as images (dose reports, ...)
    strays = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.name not in members):
        if _is_bystander(path):
            continue
        kind = other_object_kind(file_meta(path).get(2))
        if kind is None:
            strays.append(path)
        else:
            others.setdefault(kind, Series("", [], {}, kind)).files.append(path)
    order = lambda s: (int(s.number) if s.number.lstrip("-").isdigit() else 1 << 30, s.uid)  # noqa: E731
    return sorted(found, key=order) + list(others.values()), strays


def _left_out_note(left_out: List[Series]) -> str:
    return "; ".join(f"{s.describe()}" if s.uid else f"{len(s.files)} {s.kind} file(s)" for s in left_out)


@dataclass
class Selection:
    """The series to read from a DICOM folder and what was left out of it (for the note and the
    provenance)."""

    series: Series
    left_out: List[Series]

    def note(self) -> str:
        return f"left out {_left_out_note(self.left_out)}" if self.left_out else ""


def select_series(folder: Path, series: Optional[str] = None) -> Selection:
    """The series of `folder` to read: `series` (a SeriesNumber or a SeriesInstanceUID), else the only
    series, else the only CT image series. Refuses, listing the series, when that is ambiguous or
    absent; refuses a folder with a file that cannot be read (GDCM would silently drop a damaged
    slice, and the volume come out with wrong spacing)."""
    folder = Path(folder)
    found, strays = read_study(folder)
    images = [s for s in found if s.uid]
    if not images:
        raise InputError(f"{folder} is a folder without a DICOM image series"
                         + (f" (only {_left_out_note(found)})" if found else "")
                         + ". Give a volume file or the folder of a DICOM series.")
    if strays:
        others = f" (and {len(strays) - 1} other file(s))" if len(strays) > 1 else ""
        raise InputError(f"{strays[0]}{others} cannot be read as DICOM (damaged, truncated or not an image), "
                         f"so the series in {folder} may be incomplete: remove it, or copy the series again.")
    listing = "; ".join(s.describe() for s in images)
    if series is not None:
        chosen = [s for s in images if series.strip() in (s.uid, s.number)]
        if len(chosen) != 1:
            problem = "is not" if not chosen else f"names {len(chosen)} series"
            raise InputError(f"Series {series} {problem} in {folder}, which holds {listing}. Give its number "
                             "or its SeriesInstanceUID with --series.")
    elif len(images) == 1:
        chosen = images
    else:
        chosen = [s for s in images if s.is_ct_image]
        if len(chosen) != 1:
            what = f"{len(chosen)} CT image series" if chosen else "no CT image series"
            raise InputError(f"{folder} holds {what} among {listing}: choose one with --series NUMBER "
                             "(or its SeriesInstanceUID).")
    return Selection(chosen[0], [s for s in found if s is not chosen[0]])
