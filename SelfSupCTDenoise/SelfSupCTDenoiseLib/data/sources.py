"""Real CT from the package registry: pinned packages that carry CT files, the subjects found in them,
and fetching them the ordinary way (`pip download` into a cache folder; nothing is downloaded at
import or at denoising time)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Tuple

import numpy as np

from ..errors import SelfSupCTDenoiseError

HU_FLOOR = -1024.0  # padding outside the scan circle (-2000, -3024) is set to air

Log = Callable[[str], None]


@dataclass(frozen=True)
class Package:
    """A pinned registry package that carries CT files, and how to fetch it."""

    requirement: str            # e.g. "TotalSegmentator==2.18.0"
    sdist: bool                 # the CT files are only in the source distribution
    licence: str


PACKAGES = {
    "totalsegmentator": Package("TotalSegmentator==2.18.0", True, "Apache-2.0"),
    "pydicom-data": Package("pydicom-data==1.0.0", False, "MIT"),
    "dicompyler-core": Package("dicompyler-core==0.5.6", True, "BSD-3-Clause"),
}


@dataclass(frozen=True)
class Subject:
    """One real CT subject: where it comes from, what it shows and which split it belongs to.

    Either `package` + `member` (a file inside that package's archive) or `path` (a local file).
    """

    key: str
    kind: str                   # "volume" or "slice" (a single native slice)
    region: str
    split: str                  # "train" (noise models and denoiser) or "test" (held out)
    package: Optional[str] = None
    member: Optional[str] = None
    path: Optional[str] = None
    origin: str = ""
    note: str = ""
    image_licence: str = ""     # the image's own licence where it differs from its package's

    @property
    def licence(self) -> str:
        if self.image_licence:
            return self.image_licence
        return PACKAGES[self.package].licence if self.package else "local file"


#: Distinct subjects found in registry packages (checked by eye and, for the TotalSegmentator files,
#: by exact voxel matching: its pulmonary_report/ct_cropped.nii.gz is a crop of the aorta_report
#: volume, the same subject, so it is not used). Three train subjects, as in the paper; the test set
#: holds the better-resolved volume and native 512 x 512 slices.
SUBJECTS: Tuple[Subject, ...] = (
    Subject("ts_abdomen", "volume", "abdomen/pelvis", "train", "totalsegmentator",
            "tests/reference_files/example_ct.nii.gz",
            origin="TotalSegmentator test file example_ct.nii.gz (resampled to 3 mm)"),
    Subject("rt_chest", "slice", "upper chest/shoulders (RT planning, arms up, couch)", "train", "dicompyler-core",
            "tests/testdata/example_data/ct.0.dcm",
            origin="dicompyler-core example_data ct.0.dcm (breast-boost RT planning CT)"),
    Subject("cq500_head", "slice", "head (brain)", "train", "pydicom-data", "data_store/data/693_UNCR.dcm",
            origin="pydicom-data 693_UNCR.dcm (PatientID CQ500-CT-310: CQ500 head CT, CC BY-NC-SA 4.0)",
            image_licence="CC BY-NC-SA 4.0 (CQ500; file in MIT-licensed pydicom-data)"),
    Subject("ts_chest", "volume", "chest (CT angiography)", "test", "totalsegmentator",
            "tests/reference_files/aorta_report/example_ct.nii.gz",
            origin="TotalSegmentator test file aorta_report/example_ct.nii.gz (resampled to 1.5 mm)"),
    Subject("pancreas", "slice", "abdomen (pancreas level)", "test", "pydicom-data",
            "data_store/data/explicit_VR-UN.dcm",
            origin="pydicom-data explicit_VR-UN.dcm (PatientID PANCREAS_0001: TCIA Pancreas-CT, CC BY 3.0)",
            image_licence="CC BY 3.0 (TCIA Pancreas-CT; file in MIT-licensed pydicom-data)"),
    Subject("spine_zoom", "slice", "lower thorax/spine, zoomed 147 mm field of view", "test", "pydicom-data",
            "data_store/data/bad_sequence.dcm",
            origin="pydicom-data bad_sequence.dcm (B30s kernel, 0.29 mm pixels)",
            note="body extends beyond the field of view: rays miss the attenuation outside it, so the "
                 "inserted noise is lower than a full scan would give"),
)


def default_cache_dir() -> Path:
    """`$SELFSUPCTDENOISE_CACHE`, else ~/.cache/selfsupctdenoise/sources."""
    env = os.environ.get("SELFSUPCTDENOISE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "selfsupctdenoise" / "sources"


def print_line(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------------------------------
# Fetching

def _archive_for(package: Package, downloads: Path) -> Optional[Path]:
    name = package.requirement.split("==")[0].lower().replace("-", "_")
    version = package.requirement.split("==")[1]
    for path in downloads.glob("*"):
        stem = path.name.lower().replace("-", "_")
        if stem.startswith(f"{name}_{version}") and path.suffix in (".gz", ".whl", ".zip"):
            return path
    return None


def fetch_package(package: Package, cache_dir: Path, log: Log = print_line) -> Path:
    """The package's archive in `cache_dir/downloads`, fetched with `pip download` if missing."""
    downloads = cache_dir / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    archive = _archive_for(package, downloads)
    if archive is not None:
        return archive
    kind = ["--no-binary", ":all:"] if package.sdist else ["--only-binary", ":all:"]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", *kind, package.requirement,
               "-d", str(downloads)]
    log(f"fetching {package.requirement} ({'sdist' if package.sdist else 'wheel'}) into {downloads}")
    result = subprocess.run(command, capture_output=True, text=True)
    archive = _archive_for(package, downloads)
    if result.returncode != 0 or archive is None:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise SelfSupCTDenoiseError(f"Could not download {package.requirement} with pip: {' '.join(tail)}")
    return archive


def _extract_member(archive: Path, member_suffix: str, dest: Path) -> None:
    """Copy the one archive member whose path ends with `member_suffix` to `dest` (no extractall)."""
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if n.endswith(member_suffix)]
            if names:
                with zf.open(names[0]) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out)
                return
    else:
        with tarfile.open(archive) as tf:
            for info in tf:
                if info.isfile() and info.name.endswith(member_suffix):
                    with tf.extractfile(info) as src, open(dest, "wb") as out:
                        shutil.copyfileobj(src, out)
                    return
    raise SelfSupCTDenoiseError(f"{archive.name} has no member {member_suffix}")


def fetch_subject(subject: Subject, cache_dir: Optional[Path] = None, log: Log = print_line) -> Path:
    """Local path of the subject's CT file, downloading and extracting it on first use."""
    if subject.path:
        return Path(subject.path)
    cache_dir = Path(cache_dir or default_cache_dir())
    dest_dir = cache_dir / "files" / subject.key
    dest = dest_dir / Path(subject.member).name
    if dest.exists():
        return dest
    archive = fetch_package(PACKAGES[subject.package], cache_dir, log)
    dest_dir.mkdir(parents=True, exist_ok=True)
    temp = dest.with_name(dest.name + ".part")
    _extract_member(archive, subject.member, temp)
    os.replace(temp, dest)
    return dest


# ---------------------------------------------------------------------------------------------
# Loading and preparing the NDCT

def load_ndct(path: Path):
    """Read a CT file as a float32 SimpleITK image in HU (padding below -1024 HU set to -1024).

    A single DICOM slice gets its slice thickness as z spacing when the header has one.
    """
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    array = np.maximum(sitk.GetArrayFromImage(image).astype(np.float32), HU_FLOOR)
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    if str(path).lower().endswith(".dcm") and array.shape[0] == 1:
        try:
            import pydicom

            thickness = float(pydicom.dcmread(str(path), stop_before_pixels=True).get("SliceThickness") or 0)
        except Exception:  # the header is informative only
            thickness = 0.0
        if thickness > 0:
            sx, sy, _ = out.GetSpacing()
            out.SetSpacing((sx, sy, thickness))
    return out
