"""The inputs and outputs of a batch: folders expanded into volumes and DICOM series folders, and
each input's output paths in the output folder (shared by `denoise` and `cohort`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from ..errors import InputError
from .names import too_long
from .provenance_io import sidecar_path
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


def output_name_problem(target: Path, noise_map: Optional[Path] = None) -> Optional[str]:
    """Why one volume's outputs (output, noise map, sidecar) cannot be written under their names, as one
    line with what to do, or None. Checked before the volume's work: it then fails alone. (Shortening
    the names instead would break the rule that an output is named after its input, which the resume
    rule and the user's scripts rely on; such names are rare and the user can choose one.)"""
    problem = too_long([target, noise_map, sidecar_path(target)])
    if problem is None:
        return None
    return (f"{problem}: rename the input, or choose a shorter output name (denoise IN OUT, or the 'output' "
            "column of a cohort manifest)")


def refuse_writes_into_inputs(read: Iterable[Path], written: Iterable[Tuple[str, Path]]) -> None:
    """The tool never writes into what it reads. `read`: the inputs (volume files, DICOM series
    folders, list files, manifests) and the folders searched for volumes; `written`: (what, path) of
    everything a run may write (output folder, outputs, event log, report...). Refused, before any
    work, in one line: a path that is an input or lies inside a folder being read (a rerun would
    also take its own outputs for inputs)."""
    read = [(Path(path), Path(os.path.realpath(path))) for path in read]
    for what, path in written:
        real = Path(os.path.realpath(path))
        for given, source in read:
            # os.path.exists: False for a name too long to exist (that volume fails alone, output_name_problem)
            if real == source or (os.path.exists(path) and os.path.exists(given) and os.path.samefile(path, given)):
                where = f"is the input {given}"
            elif given.is_dir() and source in real.parents:
                where = f"lies inside the input folder {given}"
            else:
                continue
            raise InputError(f"The {what} {path} {where}: the tool never writes into its inputs; choose a "
                             f"{what} elsewhere.")
