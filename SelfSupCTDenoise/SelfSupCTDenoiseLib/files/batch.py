"""The inputs and outputs of a batch: folders expanded into volumes and DICOM series folders, and
each input's output paths in the output folder (shared by `denoise` and `cohort`)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..errors import InputError
from .volumes import VOLUME_SUFFIXES, is_dicom_folder, stem, volume_suffix


def expand_inputs(inputs: List[Path]) -> List[Path]:
    """A folder that is not a DICOM series stands for the volumes and DICOM series folders it holds."""
    expanded: List[Path] = []
    for item in inputs:
        if item.is_dir() and not is_dicom_folder(item):
            found = sorted(p for p in item.iterdir() if volume_suffix(p) in VOLUME_SUFFIXES or is_dicom_folder(p))
            if not found:
                raise InputError(f"no volumes found in {item} (looked for {', '.join(VOLUME_SUFFIXES)} files and "
                                 "DICOM series folders).")
            expanded += found
        else:
            expanded.append(item)
    return expanded


def batch_jobs(sources: List[Path], out: Path, names: Optional[List[Optional[str]]] = None
               ) -> List[Tuple[Path, Path]]:
    """(input, output) pairs of a batch: OUTDIR/<input name>_denoised.nrrd, or OUTDIR/<name> where `names`
    gives one. Two inputs that would write the same output are refused (the second would be taken
    for already complete, or overwrite the first); an input given twice is done once."""
    jobs: List[Tuple[Path, Path]] = []
    first: Dict[str, Path] = {}
    for source, name in zip(sources, names or [None] * len(sources)):
        target = out / (name or f"{stem(source)}_denoised.nrrd")
        key = stem(target).lower()  # a DICOM output drops the suffix; case-insensitive file systems
        if key in first and first[key] != source:
            raise InputError(f"{first[key]} and {source} would both be written to {target.name} in {out}: "
                             "rename one, or process them into separate output folders.")
        if key not in first:
            first[key] = source
            jobs.append((source, target))
    return jobs


def dicom_names(jobs: List[Tuple[Path, Path]]) -> List[Tuple[Path, Path]]:
    """With --dicom-out a batch writes a folder per series instead of an NRRD file."""
    return [(source, target.with_suffix("")) for source, target in jobs]


def batch_noise_map(target: Path) -> Path:
    """Where a batch writes the noise map of `target` (--noise-maps)."""
    return target.with_name(target.name.replace("_denoised", "_noise_map"))
