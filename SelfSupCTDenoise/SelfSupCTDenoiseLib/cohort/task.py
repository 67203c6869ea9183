"""What a worker does for one volume of a cohort (plain Python: the scheduler runs it as a Ray task).

The volume is denoised by `files.denoise_file` into a private folder next to the outputs (where
it is written, read back and verified), then the finished files are renamed into place, the sidecar
last. Neither the private folder nor anything else a task puts in OUTDIR is named like the engine's
temporaries (`files.volumes.TEMP_PREFIX`): every `denoise_file` call removes those it finds in its output folder
(left by killed runs), which would take away the files of another task writing next to it. A killed
task leaves its private folder behind, never a file under an output's name; the scheduler removes
the private folders of its run when it ends.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from ..errors import InputError, SelfSupCTDenoiseError

#: Start of the private folders of cohort tasks in OUTDIR (then the run id).
STAGING_PREFIX = ".selfsupctdenoise.cohort-"

Report = Callable[[Dict[str, Any]], None]


def volume_spec(volume, run_id: str, bundle: Optional[Path], bundle_sha256: Optional[str], dicom_out: bool,
                force: bool, denoise: bool) -> Dict[str, Any]:
    """What a task needs, as plain data (it travels to the worker): paths, never image data."""
    return {"index": volume.index, "source": str(volume.source), "target": str(volume.target),
            "noise_map": None if volume.noise_map is None else str(volume.noise_map),
            "config": volume.config.to_dict(), "run_id": run_id,
            "bundle": None if bundle is None else str(bundle), "bundle_sha256": bundle_sha256,
            "dicom_out": dicom_out, "force": force, "denoise": denoise, "series": volume.series}


def _bundle_on_this_worker(spec: Dict[str, Any], device_type: str) -> Path:
    """The bundle to use here; the default one is resolved on the worker (installed with the package),
    and must be the one the driver checked the resume rule against."""
    from ..engine.bundle import MANIFEST, default_bundle_for_device, sha256_file

    bundle = Path(spec["bundle"]) if spec["bundle"] else default_bundle_for_device(device_type)
    expected = spec["bundle_sha256"]
    manifest = bundle / MANIFEST
    if expected and manifest.is_file() and sha256_file(manifest) != expected:
        raise InputError(f"The model bundle {bundle} on {socket.gethostname()} differs from the driver's "
                         f"(SHA-256 {expected[:12]}...): install the same version on every node.")
    return bundle


def _denoise_staged(spec: Dict[str, Any], report: Report) -> Dict[str, Any]:
    from ..engine.config import AdaptConfig
    from ..engine.inference import resolve_device
    from ..engine.progress import ProgressEvent
    from ..files.denoise_file import denoise_file
    from ..files.provenance_io import sidecar_path
    from ..files.volumes import check_output_path

    config = AdaptConfig.from_dict(spec["config"])
    source, target = Path(spec["source"]), Path(spec["target"])
    noise_map = Path(spec["noise_map"]) if spec["noise_map"] else None
    folder = target.parent
    if spec["dicom_out"]:  # the serial batch refuses to write into a non-empty series folder too
        if not spec["force"] and target.is_dir() and any(target.iterdir()):
            raise InputError(f"The DICOM output folder {target} is not empty; choose a new folder or add --force.")
    else:
        check_output_path(target, source)
        if noise_map is not None:
            check_output_path(noise_map, source, target)
    bundle = _bundle_on_this_worker(spec, resolve_device(config.device).type)
    last_phase = [None]

    def progress(event: ProgressEvent) -> None:
        if event.phase != last_phase[0]:  # phases only: a report per step would flood the driver
            last_phase[0] = event.phase
            report({"event": "phase", "index": spec["index"], "phase": event.phase})

    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{spec['run_id']}-", dir=folder))
    try:
        staged = staging / target.name
        info = denoise_file(source, staged, None if noise_map is None else staging / noise_map.name, bundle,
                            config, progress, dicom_out=spec["dicom_out"], series=spec.get("series"))
        names = [target.name] + ([noise_map.name] if noise_map is not None else []) + [sidecar_path(target).name]
        move_into_place(staging, folder, names)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return info


def move_into_place(staging: Path, folder: Path, names: List[str]) -> None:
    """Rename finished files (or DICOM series folders) from a private folder into `folder`, the last
    name (the sidecar, which marks the set complete) last. A previous sidecar is removed first, so a set
    being replaced never counts as complete while it holds parts of both versions; each file arrives
    whole in one rename (same file system). Interrupted, the set is incomplete: it is redone."""
    (folder / names[-1]).unlink(missing_ok=True)
    for name in names:
        final = folder / name
        if final.is_dir() and not final.is_symlink():  # a DICOM series being redone (--force)
            shutil.rmtree(final)
        os.replace(staging / name, final)


def process_volume(spec: Dict[str, Any], report: Optional[Report] = None) -> Dict[str, Any]:
    """Denoise one volume (unless `spec["denoise"]` is False: its output is already complete) and
    write its QC. Returns a small summary; a bad volume (any engine error) is returned as
    status "failed", not raised, so that it is reported without retries. Anything else raised (a
    bug, a lost file system, out of memory) is retried by the scheduler."""
    from .qc import write_qc

    report = report or (lambda event: None)
    started = time.perf_counter()
    summary: Dict[str, Any] = {"index": spec["index"], "host": socket.gethostname(), "pid": os.getpid()}
    report({"event": "started", **summary})
    info = None
    try:
        if spec["denoise"]:
            info = _denoise_staged(spec, report)
    except SelfSupCTDenoiseError as exc:
        return {**summary, "status": "failed", "error": str(exc), "seconds": time.perf_counter() - started}
    summary.update(status="done" if spec["denoise"] else "qc", seconds=time.perf_counter() - started)
    if info is not None:
        summary["device"] = info.get("device")
    report({"event": "phase", "index": spec["index"], "phase": "qc"})
    try:
        write_qc(Path(spec["source"]), Path(spec["target"]))
    except (SelfSupCTDenoiseError, OSError, ValueError, RuntimeError) as exc:  # the output stays done
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).strip()
        summary["qc_error"] = text.splitlines()[-1] if text else type(exc).__name__
    return summary


def remove_staging(folder: Path, run_id: Optional[str] = None) -> None:
    """Remove the private folders that cohort tasks left in `folder` (killed workers): those of run
    `run_id`, or of every earlier run when None (the caller holds the folder's cohort lock)."""
    for entry in Path(folder).glob(f"{STAGING_PREFIX}{run_id + '-' if run_id else ''}*"):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
