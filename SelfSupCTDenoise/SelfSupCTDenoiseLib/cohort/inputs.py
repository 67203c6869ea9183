"""The volumes of a cohort and where each one's outputs go.

INPUTS are folders (the volumes and DICOM series folders they hold, as in the serial batch), list
files (`.txt`, `.list`, `.lst`: one path a line, `#` comments) or CSV manifests (`.csv`: a header
with a `path` column; an `output` column may name the output inside OUTDIR, a `series` column the
series of a DICOM study folder (`--series`); any other column is an
adaptation option for that volume, named like its flag: `steps`, `strength`, `target-noise`,
`pseudo-noise`, ...; an empty cell keeps the command line's value; a row's `strength` or
`target-noise` replaces the command line's other one). Relative paths in a list or manifest are relative to
that file's folder. Output names, noise-map names and the resume rule are the serial batch's.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..engine.config import AdaptConfig
from ..engine.strength import resolve_strength
from ..errors import InputError

LIST_SUFFIXES = (".txt", ".list", ".lst")
MANIFEST_SUFFIX = ".csv"
#: Options that are the same for every volume of a cohort: they decide the resources of its tasks.
COHORT_WIDE = ("device", "threads")


@dataclass(frozen=True)
class CohortVolume:
    index: int
    source: Path
    target: Path
    noise_map: Optional[Path]
    config: AdaptConfig
    series: Optional[str] = None  # of a DICOM study folder (--series, or the manifest's column)
    #: The input folder it was found in (None: named itself); nothing is written inside it.
    folder: Optional[Path] = None

    @property
    def name(self) -> str:
        return self.source.name


def _option_types() -> Dict[str, str]:
    """Per-volume option name -> annotated type ("int", "float", "bool", "str"; `Optional[...]` as its type)."""
    return {f.name: str(f.type).removeprefix("Optional[").removesuffix("]") for f in fields(AdaptConfig)
            if f.name not in COHORT_WIDE}


def _parse_value(name: str, kind: str, text: str) -> Any:
    if name == "strength":
        return resolve_strength(text)  # also low / medium / high
    if kind == "bool":
        lowered = text.lower()
        if lowered in ("true", "yes", "1", "on"):
            return True
        if lowered in ("false", "no", "0", "off"):
            return False
        raise InputError(f"{name} takes true or false, not {text!r}")
    try:
        return {"int": int, "float": float}.get(kind, str)(text)
    except ValueError:
        raise InputError(f"{name} takes {'an integer' if kind == 'int' else 'a number'}, not {text!r}") from None


def _column(header: str) -> str:
    """`--pseudo-noise`, `Pseudo-Noise` and `pseudo_noise` name the same column."""
    return header.strip().lstrip("-").lower().replace("-", "_")


#: Manifest columns besides the per-volume options: what the volume is and where its output goes.
INPUT_COLUMNS = ("path", "output", "series")


def _read_manifest(path: Path) -> List[Tuple[Path, Dict[str, str], Dict[str, Any]]]:
    types = _option_types()
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"Cannot read the manifest {path}: {exc}") from None
    if not rows:
        raise InputError(f"The manifest {path} is empty: it needs a header with a 'path' column.")
    columns = [_column(h) for h in rows[0]]
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise InputError(f"{path} line 1: the column {repeated[0]} is given twice (a manifest names each column once).")
    unknown = [h for h, c in zip(rows[0], columns) if c not in (*INPUT_COLUMNS, *types)]
    if "path" not in columns or unknown:
        problem = f"unknown column(s) {', '.join(unknown)}" if unknown else "no 'path' column"
        raise InputError(f"The manifest {path} has {problem}: columns are path, output and series (optional) and the "
                         f"per-volume options {', '.join(sorted(types))}.")
    entries = []
    for line, row in enumerate(rows[1:], start=2):
        cells = dict(zip(columns, (cell.strip() for cell in row)))
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(columns):
            raise InputError(f"{path} line {line}: {len(row)} cells where the header has {len(columns)}.")
        if not cells.get("path"):
            raise InputError(f"{path} line {line}: the path is empty.")
        options = {}
        for name, text in cells.items():
            if name in types and text:
                try:
                    options[name] = _parse_value(name, types[name], text)
                except InputError as exc:
                    raise InputError(f"{path} line {line}: {exc}") from None
        entries.append((path.parent / cells["path"], {c: cells[c] for c in INPUT_COLUMNS[1:] if cells.get(c)}, options))
    return entries


def _read_list(path: Path) -> List[Path]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"Cannot read the list file {path}: {exc}") from None
    return [path.parent / line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def _check_output_name(name: str, where: Path) -> str:
    if Path(name).name != name or name in (".", ".."):
        raise InputError(f"{where}: the output {name!r} must be a file name inside OUTDIR, not a path.")
    return name


def read_cohort(inputs: Sequence[Path], out: Path, config: AdaptConfig, noise_maps: bool = False,
                dicom_out: bool = False, series: Optional[str] = None) -> List[CohortVolume]:
    """Every volume of the cohort with its output paths, settings and series (the command line's
    `config` and `series`, changed by its manifest row). Missing or unreadable volumes are kept:
    they fail as tasks, and the run reports them, like the serial batch."""
    from ..files.batch import batch_jobs, batch_noise_map, dicom_names, expand_inputs

    sources: List[Path] = []
    folders: List[Optional[Path]] = []  # the input folder each source was found in
    names: List[Optional[str]] = []
    picks: List[Optional[str]] = []  # series
    options: List[Dict[str, Any]] = []

    def add(entry: Path, name: Optional[str] = None, row: Optional[Dict[str, Any]] = None,
            where: Optional[Path] = None, pick: Optional[str] = None) -> None:
        found = expand_inputs([entry])  # a folder's volumes; a missing volume is kept: it fails as its task
        if name is not None and len(found) != 1:
            raise InputError(f"{where}: {entry} holds {len(found)} volumes; an 'output' name needs one.")
        sources.extend(found)
        folders.extend([entry if found != [entry] else None] * len(found))
        names.extend([None if name is None else _check_output_name(name, where)] * len(found))
        picks.extend([pick] * len(found))
        options.extend([row or {}] * len(found))

    for item in map(Path, inputs):
        suffix = item.suffix.lower()
        if item.is_file() and suffix == MANIFEST_SUFFIX:
            for source, cells, row in _read_manifest(item):
                add(source, cells.get("output"), row, item, cells.get("series", series))
        else:
            for entry in (_read_list(item) if item.is_file() and suffix in LIST_SUFFIXES else [item]):
                add(entry, pick=series)
    if not sources:
        raise InputError("The cohort has no volumes: give folders, volumes, a list file or a CSV manifest.")
    unique: Dict[Path, int] = {}  # a volume given twice is done once, with its first name and options
    for position, source in enumerate(sources):
        unique.setdefault(source.absolute(), position)
    names, options, folders, picks = ([values[i] for i in unique.values()] for values in (names, options, folders, picks))
    jobs = batch_jobs(list(unique), Path(out).absolute(), names)
    if dicom_out:
        jobs = dicom_names(jobs)
    volumes = []
    for index, ((source, target), row, folder, pick) in enumerate(zip(jobs, options, folders, picks)):
        # a row's strength or target noise level replaces the command line's other one
        exclusive = {"strength": 1.0} if "target_noise" in row else {"target_noise": None} if "strength" in row else {}
        try:
            settings = config.with_(**{**exclusive, **row}) if row else config
        except InputError as exc:
            raise InputError(f"{source.name} (manifest): {exc}") from None
        volumes.append(CohortVolume(index, source, target, batch_noise_map(target) if noise_maps else None, settings,
                                    pick, folder))
    return volumes
