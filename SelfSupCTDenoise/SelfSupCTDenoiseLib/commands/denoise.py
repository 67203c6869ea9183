"""`denoise`: one volume (IN OUT) or a batch (several inputs or a folder, then an output folder)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Tuple

from ..errors import Cancelled, SelfSupCTDenoiseError
from ..io import VOLUME_SUFFIXES, _suffix
from ..noise_level import describe_run_estimate
from ..provenance import sidecar_path
from .options import add_adapt_arguments, config_from_args

HELP = "denoise a CT volume (NRRD, NIfTI, MHA or a DICOM series folder), or a batch of them"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                        help="IN OUT for one volume; IN... OUTDIR or INDIR OUTDIR for a batch")
    parser.add_argument("--noise-map", type=Path, help="(one volume) also write the noise map (input - output) here")
    parser.add_argument("--noise-maps", action="store_true", help="(batch) also write <name>_noise_map.nrrd")
    parser.add_argument("--bundle", type=Path,
                        help="model bundle folder [the shipped 'paper' bundle on CUDA, 'lite' on CPU]")
    parser.add_argument("--dicom-out", action="store_true",
                        help="(DICOM input) write the output as a DICOM series folder (new series, same study)")
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
    expanded: List[Path] = []
    for item in inputs:
        if item.is_dir() and not _is_dicom_dir(item):
            expanded += sorted(p for p in item.iterdir() if _suffix(p) in VOLUME_SUFFIXES or _is_dicom_dir(p))
        else:
            expanded.append(item)
    return [(p, out / f"{_stem(p)}_denoised.nrrd") for p in expanded], True


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
    if batch:
        jobs[0][1].parent.mkdir(parents=True, exist_ok=True)
    results = []
    for index, (source, target) in enumerate(jobs, 1):
        prefix = f"[{index}/{len(jobs)}] {source.name}: " if batch else ""
        noise_map = (target.with_name(target.name.replace("_denoised", "_noise_map"))
                     if batch and args.noise_maps else (None if batch else args.noise_map))
        if batch and sidecar_path(target).exists() and target.exists():
            results.append((source, "skipped (already complete)", ""))
            continue
        progress = TqdmProgress(enabled=not args.quiet, prefix=prefix)
        started = time.perf_counter()
        try:
            info = denoise_file(source, target, noise_map, bundle, config, progress, dicom_out=args.dicom_out)
        except Cancelled:
            raise
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
