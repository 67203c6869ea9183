"""Real CT for the simulated datasets: pinned registry packages that carry CT files (fetched the
ordinary way, `pip download` into a cache folder) and folders of public git repositories pinned to a
commit and a tree hash (read from a local clone or mirror the user names; this code never fetches
them). Nothing is downloaded at import or at denoising time."""

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

SPLITS = ("train", "validation", "test")
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
class GitSource:
    """A folder of a public git repository, pinned: the commit, and the git tree hash of `path` at that
    commit (what is read is checked against it), with the licence and citation of the images."""

    repository: str             # "owner/name" on GitHub
    commit: str
    path: str                   # folder inside the repository ("" = its root)
    tree: str
    licence: str
    citation: str               # collection, DOI and TCIA (CC BY asks for it)

    @property
    def spec(self) -> str:
        return f"{self.repository}@{self.commit[:7]}:{self.path or '.'}"


@dataclass(frozen=True)
class Subject:
    """One real CT subject: where it comes from, what it shows and which split it belongs to.

    Either `package` + `member` (a file inside that package's archive), `git` (a DICOM series folder of
    a pinned repository) or `path` (a local file).
    """

    key: str
    kind: str                   # "volume" or "slice" (a single native slice)
    region: str
    split: str                  # "train" (noise models and denoiser), "validation" or "test" (held out)
    package: Optional[str] = None
    member: Optional[str] = None
    path: Optional[str] = None
    origin: str = ""
    note: str = ""
    image_licence: str = ""     # the image's own licence where it differs from its package's
    git: Optional[GitSource] = None

    @property
    def licence(self) -> str:
        if self.image_licence:
            return self.image_licence
        if self.git:
            return self.git.licence
        return PACKAGES[self.package].licence if self.package else "local file"

    @property
    def source(self) -> str:
        """Where the CT comes from, pinned, in one line."""
        if self.git:
            return f"{self.git.spec} (tree {self.git.tree[:12]})"
        return f"{PACKAGES[self.package].requirement}: {self.member}" if self.package else str(self.path)


_MIRP = "d8a6a7264a4d0ccb1f88cc670e0b6d047235909f"
_TCIA = ("Clark K, et al. The Cancer Imaging Archive (TCIA): maintaining and operating a public information "
         "repository. J Digit Imaging 26(6):1045-1057, 2013. https://doi.org/10.1007/s10278-013-9622-7")
_LIDC = ("Armato III SG, et al. Data from LIDC-IDRI [Data set]. The Cancer Imaging Archive, 2015. "
         "https://doi.org/10.7937/K9/TCIA.2015.LO9QL9SX")
_RIDER = ("Lung Image Database Consortium (LIDC). RIDER Pilot (Version 1) [Data set]. The Cancer Imaging "
          "Archive, 2023. https://doi.org/10.7937/M87F-MZ83")
_CMB_CRC = ("Cancer Moonshot Biobank. Cancer Moonshot Biobank - Colorectal Cancer Collection (CMB-CRC) "
            "[Data set]. The Cancer Imaging Archive, 2022. https://doi.org/10.7937/DJG7-GZ87")
_CRLM = ("Simpson AL, et al. Preoperative CT and survival data for patients undergoing resection of colorectal "
         "liver metastases (Colorectal-Liver-Metastases) [Data set]. The Cancer Imaging Archive, 2023. "
         "https://doi.org/10.7937/QXK2-QG03")
_TCGA_THCA = ("Kirk S, et al. The Cancer Genome Atlas Thyroid Cancer Collection (TCGA-THCA) [Data set]. "
              "The Cancer Imaging Archive, 2016. https://doi.org/10.7937/K9/TCIA.2016.9ZFRVF1B")

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
) + tuple(
    Subject(key, "volume", region, split, git=GitSource(repository, commit, path, tree, licence, citation),
            origin=origin)
    for key, region, split, repository, commit, path, tree, licence, citation, origin in (
        ("lidc_0314", "chest (lungs, 1 mm slices)", "validation", "oncoray/mirp", _MIRP,
         "test/data/seg_dicom4qi/data_1/image", "8063808eb239152c55cd6fd7b1d89a7aefa80c10", "CC BY 3.0",
         _LIDC, "LIDC-IDRI-0314, Philips Brilliance 16P, kernel D, 120 kV, 512x512x275, 0.78 mm, 1.0 mm slices"),
        ("rider_chest", "chest, contrast (pulmonary embolism protocol)", "train", "stepha-mar/10",
         "f4607c099c83766d9b9ab43c3401749567de0f72", "", "ea59fe22ad09761c3d7ba0cfbaea67ab31928fb0", "CC BY 4.0",
         _RIDER, "RIDER Pilot, GE LightSpeed16, STANDARD kernel, 512x512x95, 0.64 mm, 1.25 mm at 0.8 mm"),
        ("cmb_crc", "chest/abdomen/pelvis, sharp lung kernel", "train", "stepha-mar/Colon",
         "d2bd890396a1779ad10edca87ffd3dc83068b658", "", "57f99998c50cd7b8e5c641ee097edf198bec92d3", "CC BY 4.0",
         _CMB_CRC, "CMB-CRC, GE LightSpeed VCT, LUNG kernel, 512x512x100, 0.90 mm, 2.5 mm slices"),
        ("crlm_1004", "chest/abdomen/pelvis, contrast", "train", "oncoray/mirp", _MIRP,
         "test/data/ct_images_seg/CRLM-CT-1004/image", "cc8142d83266c2f59722d9bf2a9dac6aea1d396e", "CC BY 4.0",
         _CRLM, "CRLM-CT-1004, GE LightSpeed16, STANDARD kernel, 512x512x41, 0.80 mm, 5 mm slices"),
        ("crlm_1006", "liver (triphasic, contrast)", "train", "oncoray/mirp", _MIRP,
         "test/data/ct_images_seg/CRLM-CT-1006/image", "a50126540281998ceeec7e8edadce63fc260e8d5", "CC BY 4.0",
         _CRLM, "CRLM-CT-1006, GE LightSpeed16 (derived series), 512x512x51, 0.80 mm, 5 mm slices"),
        ("tcga_thca", "whole body (CT of a PET/CT), skull base to thigh", "train", "plotly/dash-vtk",
         "a919d0fe392216de597d423d8d90b992ee354bee", "demos/data/ct_whole_body",
         "920dd206e68014f1e8eaa7d27d9dbcc5539525cf", "CC BY 3.0",
         _TCGA_THCA, "TCGA-DE-A4MA, Siemens Biograph 40, B30f kernel, 512x512x269, 0.98 mm, 5 mm at 2.5 mm"),
    ))


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


def default_source_dir() -> Optional[Path]:
    """`$SELFSUPCTDENOISE_SOURCES`: the folder holding clones or mirrors of the git sources."""
    env = os.environ.get("SELFSUPCTDENOISE_SOURCES")
    return Path(env) if env else None


def _git(repo: Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if result.returncode != 0:
        said = (result.stderr or result.stdout).strip().splitlines()
        raise SelfSupCTDenoiseError(said[-1] if said else f"git {args[0]} failed")
    return result.stdout


def find_repository(source: GitSource, source_dir: Optional[Path]) -> Path:
    """The clone or mirror of `source.repository` under `source_dir`: `<dir>/<owner>+<name>[/repo]`,
    `<dir>/<owner>/<name>` or `<dir>/<name>`, a work tree or a bare repository; one-line error
    saying how to get one otherwise."""
    owner, name = source.repository.split("/")
    how = (f"clone it there (git clone https://github.com/{source.repository} "
           f"<dir>/{owner}+{name} && git -C <dir>/{owner}+{name} checkout {source.commit})")
    if source_dir is None:
        raise SelfSupCTDenoiseError(f"{source.spec} is read from a local clone: name the folder holding it with "
                                    f"--source-dir or $SELFSUPCTDENOISE_SOURCES, and {how}.")
    if shutil.which("git") is None:
        raise SelfSupCTDenoiseError(f"Reading {source.spec} needs the git command, which is not installed.")
    for candidate in (source_dir / f"{owner}+{name}" / "repo", source_dir / f"{owner}+{name}",
                      source_dir / owner / name, source_dir / name):
        if (candidate / "HEAD").is_file() or (candidate / ".git").exists():
            return candidate
    raise SelfSupCTDenoiseError(f"No clone of {source.repository} in {source_dir}: {how}.")


def extract_git_folder(source: GitSource, repo: Path, dest: Path) -> Path:
    """Copy the files of `source.path` at `source.commit` (that folder only, not below it) from the
    repository at `repo` into `dest`, after checking the folder's tree hash; atomic (a `.part` folder
    renamed at the end)."""
    spec = f"{source.commit}:{source.path}" if source.path else f"{source.commit}^{{tree}}"
    try:
        tree = _git(repo, "rev-parse", spec).strip()
    except SelfSupCTDenoiseError as exc:
        raise SelfSupCTDenoiseError(f"{repo} lacks {source.spec} ({exc}): fetch commit {source.commit}.") from None
    if tree != source.tree:
        raise SelfSupCTDenoiseError(f"{source.spec} in {repo} has tree {tree[:12]}, not the pinned {source.tree[:12]}: "
                                    "this is not the data the project was built with.")
    part = dest.with_name(dest.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    for line in _git(repo, "ls-tree", tree).splitlines():
        meta, name = line.split("\t", 1)
        _mode, kind, sha = meta.split()
        if kind != "blob":
            continue
        blob = subprocess.run(["git", "-C", str(repo), "cat-file", "blob", sha], capture_output=True)
        if blob.returncode != 0:
            raise SelfSupCTDenoiseError(f"{repo} lacks the file {name} of {source.spec} (a partial copy?): "
                                        "use a full clone.")
        (part / name).write_bytes(blob.stdout)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(part, dest)
    return dest


def fetch_subject(subject: Subject, cache_dir: Optional[Path] = None, log: Log = print_line,
                  source_dir: Optional[Path] = None) -> Path:
    """Local path of the subject's CT file (or DICOM series folder), downloading or extracting it on
    first use."""
    if subject.path:
        return Path(subject.path)
    if subject.git:
        dest = Path(cache_dir or default_cache_dir()) / "files" / subject.key
        if not dest.is_dir():
            repo = find_repository(subject.git, source_dir or default_source_dir())
            log(f"reading {subject.git.spec} from {repo}")
            extract_git_folder(subject.git, repo, dest)
        return dest
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
    """Read a CT file (or a DICOM series folder, with the project's reader and its checks) as a float32 SimpleITK image in HU (padding below -1024 HU set to -1024).

    A single DICOM slice gets its slice thickness as z spacing when the header has one.
    """
    import SimpleITK as sitk

    from ..files.volumes import read_volume

    image = read_volume(path) if Path(path).is_dir() else sitk.ReadImage(str(path))
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
