"""`denoise`: one volume (IN OUT) or a batch (several inputs or a folder, then an output folder)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..config import AdaptConfig
from ..errors import Cancelled, InputError, SelfSupCTDenoiseError
from ..io import VOLUME_SUFFIXES, _suffix, check_folder_writable
from ..noise_level import describe_run_estimate
from ..provenance import read_sidecar, sidecar_path
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
                        help="model bundle folder [the shipped 'paper' bundle on CUDA, 'lite' on CPU]")
    parser.add_argument("--dicom-out", action="store_true",
                        help="(DICOM input) write the output as a DICOM series folder (new series, same study)")
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
    single = len(inputs) == 1 and not (inputs[0].is_dir() and not _is_dicom_dir(inputs[0])) and not out.is_dir()
    if single:
        return [(inputs[0], out)], False
    if out.exists() and not out.is_dir():
        raise SelfSupCTDenoiseError(f"For several inputs the output must be a folder; {out} is a file.")
    if not out.exists() and _suffix(out) in VOLUME_SUFFIXES:  # would become a folder named like a file
        raise InputError(f"A folder input or several inputs need an output folder, and {out.name} is a volume "
                         f"file name: give a folder (e.g. {out.with_name(_stem(out))}).")
    return batch_jobs(expand_inputs(inputs), out), True


def expand_inputs(inputs: List[Path]) -> List[Path]:
    """A folder that is not a DICOM series stands for the volumes and DICOM series folders it holds."""
    expanded: List[Path] = []
    for item in inputs:
        if item.is_dir() and not _is_dicom_dir(item):
            found = sorted(p for p in item.iterdir() if _suffix(p) in VOLUME_SUFFIXES or _is_dicom_dir(p))
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
        target = out / (name or f"{_stem(source)}_denoised.nrrd")
        key = _stem(target).lower()  # a DICOM output drops the suffix; case-insensitive file systems
        if key in first and first[key] != source:
            raise InputError(f"{first[key]} and {source} would both be written to {target.name} in {out}: "
                             "rename one, or process them into separate output folders.")
        if key not in first:
            first[key] = source
            jobs.append((source, target))
    return jobs


def _dicom_names(jobs: List[Tuple[Path, Path]]) -> List[Tuple[Path, Path]]:
    """With --dicom-out a batch writes a folder per series instead of an NRRD file."""
    return [(source, target.with_suffix("")) for source, target in jobs]


def _is_dicom_dir(path: Path) -> bool:
    if not path.is_dir():
        return False
    import SimpleITK as sitk

    return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))


def _stem(path: Path) -> str:
    suffix = _suffix(path)
    return path.name[: -len(suffix)] if suffix and path.name.lower().endswith(suffix) else path.name


#: Parameters that do not change the result: a rerun that differs only in them skips complete outputs.
RESUME_IGNORES = ("threads", "infer_batch")


def _differences(record: Dict[str, Any], config: AdaptConfig, bundle_sha256: Optional[str],
                 noise_map: Optional[Path]) -> List[str]:
    """How this run's settings differ from those recorded in an output's sidecar."""
    recorded, default = record.get("parameters") or {}, AdaptConfig()
    found = [f"{key} {recorded.get(key, getattr(default, key))} -> {value}"
             for key, value in config.to_dict().items()
             if key not in RESUME_IGNORES and recorded.get(key, getattr(default, key)) != value]
    before = (record.get("bundle") or {}).get("sha256")
    if bundle_sha256 and before != bundle_sha256:
        found.append(f"bundle {str(before)[:12]}... -> {bundle_sha256[:12]}...")
    if noise_map is not None and not noise_map.exists():
        found.append("noise map not written before, requested now")
    return found


def _complete(target: Path) -> Optional[Dict[str, Any]]:
    """The sidecar record of a complete output (output and readable sidecar), else None."""
    if not (target.exists() and sidecar_path(target).exists()):
        return None
    try:
        return read_sidecar(target)
    except InputError:
        return None  # damaged sidecar: the output is redone


def batch_noise_map(target: Path) -> Path:
    """Where a batch writes the noise map of `target` (--noise-maps)."""
    return target.with_name(target.name.replace("_denoised", "_noise_map"))


def prepare_batch_folder(folder: Path) -> None:
    """Create the output folder of a batch and check that it can be written, before any work."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"Cannot create the output folder {folder} ({exc.strerror}).") from None
    check_folder_writable(folder)


def completed_outputs(jobs: List[Tuple[Path, Optional[Path], AdaptConfig]], bundle: Path,
                      force: bool = False) -> List[Optional[Dict[str, Any]]]:
    """The resume rule of a batch, for each (output, noise map or None, settings): the sidecar record
    of an output already complete with these settings (skip it), or None (do it). Complete outputs
    made with other settings are refused, listing what differs, unless `force` (all are redone)."""
    if force:
        return [None] * len(jobs)
    complete = [_complete(target) for target, _, _ in jobs]
    sha256 = _bundle_sha256(bundle)
    changed: Dict[str, List[str]] = {}  # what differs -> outputs
    for (target, noise_map, config), record in zip(jobs, complete):
        if record is not None:
            for difference in _differences(record, config, sha256, noise_map):
                changed.setdefault(difference, []).append(target.name)
    if changed:
        names = sorted({name for names in changed.values() for name in names})
        raise InputError(
            f"{len(names)} output(s) in {jobs[0][0].parent} were made with other settings "
            f"({'; '.join(changed)}): add --force to redo them (each is replaced only once its new "
            "version is complete), or choose another output folder.")
    return complete


def _stamp(path: Path) -> Optional[Tuple[int, int]]:
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_ino, status.st_mtime_ns


def _bundle_sha256(bundle: Path) -> Optional[str]:
    from ..bundle import sha256_file

    manifest = Path(bundle) / "manifest.json"
    return sha256_file(manifest) if manifest.is_file() else None


def run(args: argparse.Namespace) -> int:
    from ..console import TqdmProgress
    from ..inference import resolve_device
    from ..bundle import default_bundle_for_device
    from ..pipeline import denoise_file

    config = config_from_args(args)
    jobs, batch = plan(args.paths)
    if batch and args.dicom_out:
        jobs = _dicom_names(jobs)
    bundle = args.bundle or default_bundle_for_device(resolve_device(config.device).type)
    noise_maps = [(batch_noise_map(target) if batch and args.noise_maps else (None if batch else args.noise_map))
                  for _, target in jobs]
    complete = [None] * len(jobs)
    if batch:
        prepare_batch_folder(jobs[0][1].parent)
        complete = completed_outputs([(target, noise_map, config) for (_, target), noise_map in zip(jobs, noise_maps)],
                                     bundle, args.force)
    results = []
    for index, ((source, target), noise_map) in enumerate(zip(jobs, noise_maps), 1):
        prefix = f"[{index}/{len(jobs)}] {source.name}: " if batch else ""
        if complete[index - 1] is not None:
            results.append((source, "skipped (already complete)", ""))
            continue
        progress = TqdmProgress(enabled=not args.quiet, prefix=prefix)
        started = time.perf_counter()
        before = _stamp(sidecar_path(target))
        try:
            info = denoise_file(source, target, noise_map, bundle, config, progress, dicom_out=args.dicom_out,
                                overwrite=args.force)
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
            print(f"{prefix}failed: {exc}", file=sys.stderr)
            continue
        finally:
            progress.close()
        run = info["run"]
        guard = run.get("guard") or {}
        note = "; ".join(filter(None, [describe_run_estimate(run),
                                       "guard: used the pretrained model" if guard.get("fell_back") else ""]))
        results.append((source, f"ok in {time.perf_counter() - started:.1f} s", note))
        if not batch:
            print(f"wrote {target}" + (f" and {noise_map}" if noise_map else "") + f" ({info['device']}, "
                  f"{info['elapsed_s']:.1f} s){'; ' + note if note else ''}")
    if batch:
        width = max(len(str(s)) for s, _, _ in results)
        print(f"{'input':<{width}}  result")
        for source, status, note in results:
            print(f"{str(source):<{width}}  {status}{'  ' + note if note else ''}")
        failed = sum(status == "FAILED" for _, status, _ in results)
        print(f"{len(results) - failed} done, {failed} failed")
        return 1 if failed else 0
    return 0
