"""`denoise`: one volume (IN OUT) or a batch (several inputs or a folder, then an output folder)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..engine.config import AdaptConfig
from ..engine.noise_level import describe_run_estimate
from ..engine.target_noise import describe_target
from ..errors import Cancelled, InputError, SelfSupCTDenoiseError
from ..files.batch import (batch_jobs, batch_noise_map, dicom_names, expand_inputs, output_name_problem,
                           refuse_writes_into_inputs)
from ..files.identity import identity_difference
from ..files.names import shown
from ..files.provenance_io import read_sidecar, sidecar_path
from ..files.volumes import VOLUME_SUFFIXES, check_folder_writable, is_dicom_folder, stem, volume_suffix
from .options import add_adapt_arguments, config_from_args

HELP = "denoise a CT volume (NRRD, NIfTI, MHA or a DICOM series folder), or a batch of them"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                        help="IN OUT for one volume; IN... OUTDIR or INDIR OUTDIR for a batch")
    parser.add_argument("--noise-map", type=Path, help="(one volume) also write the noise map (input - output) here")
    add_batch_arguments(parser)


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    """Output options of a batch, shared with `cohort`, and the adaptation options."""
    parser.add_argument("--noise-maps", action="store_true", help="(batch) also write <name>_noise_map.nrrd")
    parser.add_argument("--bundle", type=Path,
                        help="model bundle folder [what 'auto' picks: the shipped 'lite', on CPU and CUDA]")
    parser.add_argument("--dicom-out", action="store_true",
                        help="(DICOM input) write the output as a DICOM series folder (new series, same study)")
    parser.add_argument("--series", metavar="NUMBER|UID",
                        help="(DICOM study folders) the series to denoise, by SeriesNumber or SeriesInstanceUID; "
                             "without it a folder's only CT image series (localizers, dose reports and other "
                             "objects are left out)")
    parser.add_argument("--force", action="store_true",
                        help="(batch) redo outputs that already exist, also those made with other settings "
                             "(each is replaced only once its new version is complete)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_adapt_arguments(parser)


def plan(paths: List[Path]) -> Tuple[List[Tuple[Path, Path]], bool]:
    """(input, output) pairs and whether this is a batch."""
    if len(paths) < 2:
        raise SelfSupCTDenoiseError("Give an input and an output: denoise IN OUT, or denoise IN... OUTDIR.")
    *inputs, out = paths
    single = len(inputs) == 1 and not (inputs[0].is_dir() and not is_dicom_folder(inputs[0])) and not os.path.isdir(out)
    if single:
        problem = output_name_problem(out)
        if problem is not None:
            raise InputError(f"Cannot write {out.parent}: {problem}.")
        return [(inputs[0], out)], False
    if out.exists() and not out.is_dir():
        raise SelfSupCTDenoiseError(f"For several inputs the output must be a folder; {out} is a file.")
    if not out.exists() and volume_suffix(out) in VOLUME_SUFFIXES:  # would become a folder named like a file
        raise InputError(f"A folder input or several inputs need an output folder, and {out.name} is a volume "
                         f"file name: give a folder (e.g. {out.with_name(stem(out))}).")
    jobs = batch_jobs(expand_inputs(inputs), out)
    refuse_writes_into_inputs([*inputs, *(source for source, _ in jobs)],
                              [("output folder", out), *(("output", target) for _, target in jobs)])
    return jobs, True


#: Parameters that do not change the result: a rerun that differs only in them skips complete outputs.
RESUME_IGNORES = ("threads", "infer_batch", "ct_check")
#: What older versions did for a parameter their sidecars do not record, where that is not today's
#: default (otherwise a parameter missing from a sidecar is taken for the default): one view.
BEFORE_RECORDED = {"views": 1}


def _differences(record: Dict[str, Any], config: AdaptConfig, bundle_sha256: Optional[str],
                 noise_map: Optional[Path]) -> List[str]:
    """How this run's settings differ from those recorded in an output's sidecar."""
    recorded, default, current = record.get("parameters") or {}, AdaptConfig(), config.to_dict()
    recorded = {key: recorded.get(key, BEFORE_RECORDED.get(key, getattr(default, key))) for key in current}
    found = [f"{key} {recorded[key]} -> {value}" for key, value in current.items()
             if key not in RESUME_IGNORES and recorded[key] != value]
    before = (record.get("bundle") or {}).get("sha256")
    if bundle_sha256 and before != bundle_sha256:
        found.append(f"bundle {str(before)[:12]}... -> {bundle_sha256[:12]}...")
    if noise_map is not None and not noise_map.exists():
        found.append("noise map not written before, requested now")
    return found


def _complete(target: Path) -> Optional[Dict[str, Any]]:
    """The sidecar record of a complete output (output and readable sidecar), else None."""
    if not (os.path.exists(target) and os.path.exists(sidecar_path(target))):  # False for a name too long
        return None
    try:
        return read_sidecar(target)
    except InputError:
        return None  # damaged sidecar: the output is redone


def prepare_batch_folder(folder: Path) -> None:
    """Create the output folder of a batch and check that it can be written, before any work."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"Cannot create the output folder {folder} ({exc.strerror}).") from None
    check_folder_writable(folder)


#: How a refusal of the resume rule ends.
REDO_HINT = ("add --force to redo them (each is replaced only once its new version is complete), or choose "
             "another output folder.")


def completed_outputs(jobs: List[Tuple[Path, Path, Optional[Path], AdaptConfig]], bundle: Path,
                      force: bool = False, series: Optional[Sequence[Optional[str]]] = None
                      ) -> List[Optional[Dict[str, Any]]]:
    """The resume rule of a batch, for each (input, output, noise map or None, settings): the sidecar
    record of an output already complete, made from this very input (files/identity.py) with these
    settings (skip it), or None (do it). Complete outputs made from another input of the same name,
    or with other settings, are refused, listing what differs, unless `force` (all are redone). An
    output whose sidecar does not say which input it was made from (an older version wrote it) is
    redone, and said so: it is never taken for done. `series`: per job, the series of a DICOM study
    folder it reads (--series)."""
    if force:
        return [None] * len(jobs)
    complete = [_complete(target) for _, target, _, _ in jobs]
    folder = jobs[0][1].parent
    others: List[str] = []  # output: what differs in its input
    for index, ((source, target, _, _), record) in enumerate(zip(jobs, complete)):
        if record is None:
            continue
        if not isinstance(record.get("input_identity"), dict):
            print(f"selfsupctdenoise: {shown(target.name)} does not record which input it was made from (an older "
                  "version wrote it): it is redone.", file=sys.stderr)
            complete[index] = None
            continue
        difference = identity_difference(record["input_identity"], source, series[index] if series else None)
        if difference is not None:
            others.append(f"{target.name}: {difference}")
    if others:
        raise InputError(f"{len(others)} output(s) in {folder} were made from another input of the same name "
                         f"({'; '.join(others)}): {REDO_HINT}")
    sha256 = _bundle_sha256(bundle)
    changed: Dict[str, List[str]] = {}  # what differs -> outputs
    for (_, target, noise_map, config), record in zip(jobs, complete):
        if record is not None:
            for difference in _differences(record, config, sha256, noise_map):
                changed.setdefault(difference, []).append(target.name)
    if changed:
        names = sorted({name for names in changed.values() for name in names})
        raise InputError(f"{len(names)} output(s) in {folder} were made with other settings "
                         f"({'; '.join(changed)}): {REDO_HINT}")
    return complete


def _stamp(path: Path) -> Optional[Tuple[int, int]]:
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_ino, status.st_mtime_ns


def _bundle_sha256(bundle: Path) -> Optional[str]:
    from ..engine.bundle import sha256_file

    manifest = Path(bundle) / "manifest.json"
    return sha256_file(manifest) if manifest.is_file() else None


def run(args: argparse.Namespace) -> int:
    from ..engine.bundle import default_bundle_for_device
    from ..engine.inference import resolve_device
    from ..files.denoise_file import denoise_file
    from .console import TqdmProgress

    config = config_from_args(args)
    jobs, batch = plan(args.paths)
    if batch and args.dicom_out:
        jobs = dicom_names(jobs)
    bundle = args.bundle or default_bundle_for_device(resolve_device(config.device).type)
    noise_maps = [(batch_noise_map(target) if batch and args.noise_maps else (None if batch else args.noise_map))
                  for _, target in jobs]
    complete = [None] * len(jobs)
    if batch:
        prepare_batch_folder(jobs[0][1].parent)
        complete = completed_outputs([(source, target, noise_map, config)
                                      for (source, target), noise_map in zip(jobs, noise_maps)], bundle, args.force,
                                     [args.series] * len(jobs))
    results = []
    for index, ((source, target), noise_map) in enumerate(zip(jobs, noise_maps), 1):
        prefix = f"[{index}/{len(jobs)}] {shown(source.name)}: " if batch else ""
        if complete[index - 1] is not None:
            results.append((source, "skipped (already complete)", ""))
            continue
        problem = output_name_problem(target, noise_map) if batch else None
        if problem is not None:  # fails alone, before its work
            results.append((source, "FAILED", problem))
            print(f"{prefix}failed: {problem}", file=sys.stderr)
            continue
        progress = TqdmProgress(enabled=not args.quiet, prefix=prefix)
        started = time.perf_counter()
        before = _stamp(sidecar_path(target))
        try:
            info = denoise_file(source, target, noise_map, bundle, config, progress, dicom_out=args.dicom_out,
                                overwrite=args.force, series=args.series)
        except (Cancelled, KeyboardInterrupt) as exc:
            # say exactly what this run wrote (a signal held during the final renames arrives after them)
            done = sum(status.startswith("ok") for _, status, _ in results)
            if _stamp(sidecar_path(target)) != before:
                note = f"{target} was written completely"
            else:
                note = "nothing was written" + (f" for {source.name}" if batch else "")
            if done:
                note += f"; {done} earlier output(s) of this run are complete"
            raise (Cancelled(f"Cancelled; {note}.") if isinstance(exc, Cancelled) else type(exc)(note)) from None
        except SelfSupCTDenoiseError as exc:
            if not batch:
                raise
            results.append((source, "FAILED", str(exc)))
            print(f"{prefix}failed: {shown(exc)}", file=sys.stderr)
            continue
        finally:
            progress.close()
        run = info["run"]
        guard = run.get("guard") or {}
        overridden = (run.get("ct_check") or {}).get("overridden")
        note = "; ".join(filter(None, [describe_run_estimate(run), describe_target(run.get("target_noise")),
                                       "guard: used the pretrained model" if guard.get("fell_back") else "",
                                       "CT check overridden" if overridden else "",
                                       (info.get("input_series") or {}).get("left_out") or ""]))
        results.append((source, f"ok in {time.perf_counter() - started:.1f} s", note))
        if not batch:
            print(f"wrote {shown(target)}" + (f" and {shown(noise_map)}" if noise_map else "") + f" ({info['device']}, "
                  f"{info['elapsed_s']:.1f} s){'; ' + note if note else ''}")
    if batch:
        width = max(len(shown(s)) for s, _, _ in results)
        print(f"{'input':<{width}}  result")
        for source, status, note in results:
            print(f"{shown(source):<{width}}  {status}{'  ' + shown(note) if note else ''}")
        failed = sum(status == "FAILED" for _, status, _ in results)
        print(f"{len(results) - failed} done, {failed} failed")
        return 1 if failed else 0
    return 0
