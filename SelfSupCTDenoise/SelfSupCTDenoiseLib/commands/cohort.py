"""`cohort`: denoise many volumes as one Ray task each (a local Ray, or a cluster), then a QC page.

Outputs, noise maps, sidecars and the resume rule are the serial batch's (`denoise IN... OUTDIR`):
an output counts as done only once its sidecar is written, a rerun skips complete outputs made with
the same settings and refuses those made with other settings (unless --force).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Iterator, List

from ..errors import Cancelled, InputError, Terminated
from ..files.batch import refuse_writes_into_inputs
from .denoise import add_batch_arguments, completed_outputs, prepare_batch_folder
from .options import config_from_args

HELP = "denoise a cohort (folders, a list file or a CSV manifest) on Ray, one task per volume, with a QC report"
EVENTS_NAME = "cohort_events.jsonl"
LOCK_NAME = ".selfsupctdenoise.cohort.lock"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..cohort.scheduler import DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_MAX_RETRIES

    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                        help="folders, volumes, list files (.txt: a path a line) or CSV manifests (.csv: a 'path' "
                             "column, optional 'output' and per-volume option columns such as steps, strength)")
    parser.add_argument("outdir", type=Path, metavar="OUTDIR", help="output folder (on storage every worker sees)")
    group = parser.add_argument_group("Ray")
    group.add_argument("--address", help="Ray cluster to run on: auto, HOST:PORT or ray://HOST:10001 "
                                         "[start a local Ray on this machine, on 127.0.0.1 only]")
    group.add_argument("--connect-timeout", type=float, default=DEFAULT_CONNECT_TIMEOUT_S, metavar="SECONDS",
                       help="(--address) give up when no cluster answers there within this time "
                            f"[{DEFAULT_CONNECT_TIMEOUT_S:g}]")
    group.add_argument("--gpus-per-volume", type=float,
                       help="GPUs each volume's task asks for (0.5: two volumes share a GPU) "
                            "[1 where the cluster has GPUs and --device is not cpu, else 0]")
    group.add_argument("--cpus-per-volume", type=float,
                       help="CPUs each volume's task asks for; also its torch threads unless --threads "
                            "[--threads or 1]")
    group.add_argument("--workers", type=int,
                       help="(local Ray) volumes at a time on this machine [as many as the cores allow]")
    group.add_argument("--max-retries", type=int, default=DEFAULT_MAX_RETRIES,
                       help="new attempts for a volume whose worker died or that raised an unexpected error "
                            f"(a bad input is not retried) [{DEFAULT_MAX_RETRIES}]")
    group.add_argument("--events", type=Path, help=f"JSON-lines event log [OUTDIR/{EVENTS_NAME}]")
    add_batch_arguments(parser)


@contextlib.contextmanager
def _cohort_lock(folder: Path) -> Iterator[None]:
    """One cohort at a time writes into a folder (its private folders of killed tasks are then
    removable at the start, and two runs do not do the same volume twice)."""
    import fcntl

    handle = open(folder / LOCK_NAME, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InputError(f"Another cohort is writing into {folder}; wait for it or choose another "
                             "folder.") from None
        yield
    finally:
        handle.close()


def _resources(args: argparse.Namespace, config, cluster_gpus: float):
    """(CPUs, GPUs) per volume and the device type its tasks run on."""
    cpus = args.cpus_per_volume if args.cpus_per_volume is not None else float(config.threads or 1)
    if not (math.isfinite(cpus) and cpus > 0):
        raise InputError("--cpus-per-volume must be a number > 0.")
    gpus = args.gpus_per_volume
    if gpus is None:
        gpus = 1.0 if config.device != "cpu" and cluster_gpus > 0 else 0.0
    if not (math.isfinite(gpus) and gpus >= 0):
        raise InputError("--gpus-per-volume must be a number >= 0.")
    if config.device == "cpu" and gpus > 0:
        raise InputError("--device cpu with --gpus-per-volume > 0: the GPUs would be reserved and left idle.")
    if config.device == "cuda" and gpus == 0:
        raise InputError("--device cuda needs --gpus-per-volume > 0 (and GPUs in the cluster).")
    return cpus, gpus, "cuda" if gpus > 0 else "cpu"


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run(args: argparse.Namespace) -> int:
    from ..cohort.events import CohortProgress, EventLog
    from ..cohort.inputs import read_cohort
    from ..cohort.qc import QC_FOLDER, read_qc
    from ..cohort.report import REPORT_NAME, write_report
    from ..cohort.scheduler import check_resources, ray_cluster, run_tasks
    from ..cohort.task import remove_staging, volume_spec
    from ..engine.bundle import MANIFEST, default_bundle_for_device, sha256_file

    if args.address is not None and args.workers is not None:
        raise InputError("--workers sizes a local Ray; a cluster (--address) has the workers it has.")
    if args.max_retries < 0:
        raise InputError("--max-retries must be >= 0.")
    if not math.isfinite(args.connect_timeout) or args.connect_timeout <= 0:
        raise InputError("--connect-timeout must be a number of seconds > 0.")
    config = config_from_args(args)
    volumes = read_cohort(args.inputs, args.outdir, config, args.noise_maps, args.dicom_out, args.series)
    out = volumes[0].target.parent
    events = args.events or out / EVENTS_NAME
    refuse_writes_into_inputs(
        [*args.inputs, *(v.source for v in volumes), *(v.folder for v in volumes if v.folder is not None)],
        [("output folder", out), ("event log", events), ("QC folder", out / QC_FOLDER), ("report", out / REPORT_NAME),
         *(("output", v.target) for v in volumes), *(("noise map", v.noise_map) for v in volumes if v.noise_map)])
    prepare_batch_folder(out)
    started = time.perf_counter()
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    with contextlib.ExitStack() as stack:
        stack.enter_context(_cohort_lock(out))
        remove_staging(out)  # left by killed tasks of earlier runs
        cluster = (stack.enter_context(ray_cluster(args.address, connect_timeout_s=args.connect_timeout))
                   if args.address is not None else None)
        gpus_here = (cluster.cluster_resources().get("GPU", 0.0) if cluster is not None
                     else (_local_gpus() if config.device != "cpu" and args.gpus_per_volume is None else 0))
        cpus, gpus, device_type = _resources(args, config, gpus_here)
        bundle = args.bundle.absolute() if args.bundle else None
        checked_bundle = bundle or default_bundle_for_device(device_type)
        complete = completed_outputs([(v.source, v.target, v.noise_map, v.config) for v in volumes], checked_bundle,
                                     args.force, [v.series for v in volumes])
        # each task's torch threads: its CPUs, unless --threads says otherwise (a rerun ignores threads)
        threads = max(1, int(cpus))
        volumes = [v if v.config.threads else replace(v, config=v.config.with_(threads=threads)) for v in volumes]
        manifest = checked_bundle / MANIFEST  # what the resume rule compared with: the workers check theirs
        sha256 = sha256_file(manifest) if manifest.is_file() else None
        specs: List[Dict[str, Any]] = []
        for volume, record in zip(volumes, complete):
            if record is None:
                specs.append(volume_spec(volume, run_id, bundle, sha256, args.dicom_out, args.force, True))
            elif read_qc(volume.target) is None:  # complete, but its QC is missing or out of date
                specs.append(volume_spec(volume, run_id, bundle, sha256, args.dicom_out, args.force, False))
        log = EventLog(events, run_id)
        stack.callback(log.close)
        names = {v.index: v.name for v in volumes}
        to_do = sum(spec["denoise"] for spec in specs)
        log.write("run_started", volumes=len(volumes), to_do=to_do, skipped=len(volumes) - to_do, outdir=str(out),
                  cpus_per_volume=cpus, gpus_per_volume=gpus, address=args.address or "local")
        for volume, record in zip(volumes, complete):
            if record is not None:
                log.write("skipped", index=volume.index, volume=volume.name, reason="already complete")
        outcomes: Dict[int, Dict[str, Any]] = {}
        interrupted = None
        if specs:
            if cluster is None:
                workers = args.workers or max(1, int((os.cpu_count() or 1) // cpus))
                cluster = stack.enter_context(ray_cluster(None, num_cpus=max(1, int(workers * cpus + 0.5)),
                                                          num_gpus=None if gpus else 0))
            resources = check_resources(cluster, cpus, gpus)
            log.write("cluster", **resources)
            progress = CohortProgress(to_do, enabled=not args.quiet)
            try:
                outcomes, interrupted = run_tasks(cluster, specs, names, cpus=cpus, gpus=gpus,
                                                  max_retries=args.max_retries, log=log, progress=progress)
            finally:
                progress.close()
        remove_staging(out, run_id)
        rows = _report_rows(volumes, complete, outcomes, read_qc)
        level = (f"strength {config.strength:g}" if config.target_noise is None
                 else f"target noise {config.target_noise:g} HU")
        report = write_report(out, rows, title=f"Cohort QC: {out.name}",
                              details={"settings": f"steps {config.steps}, {level}, seed {config.seed}, "
                                                   f"bundle {checked_bundle.name}",
                                       "run": run_id})
        log.write("report", path=str(report))
        counts = _summary(rows)
        log.write("run_finished", seconds=round(time.perf_counter() - started, 3), **counts)
    _print_table(rows, counts, report)
    if interrupted is not None:
        done = counts.get("done", 0)
        note = (f"{done} output(s) of this run are complete, {counts.get('cancelled', 0)} cancelled (nothing "
                f"written for them); report: {report}")
        if Terminated.came(interrupted):
            raise Terminated(note)  # exit 143
        raise Cancelled(f"Cancelled; {note}.")
    return 1 if counts.get("failed", 0) else 0


def _report_rows(volumes, complete, outcomes: Dict[int, Dict[str, Any]], read_qc) -> List[Dict[str, Any]]:
    rows = []
    for volume, record in zip(volumes, complete):
        outcome = outcomes.get(volume.index, {})
        status = outcome.get("status") or ("skipped" if record is not None else "not run")
        if status == "qc":
            status = "skipped"  # complete before this run; only its QC was made now
        error = outcome.get("error") if status in ("failed", "cancelled") else None
        rows.append({"input": volume.name, "output": volume.target.name, "status": status, "error": error,
                     "qc": read_qc(volume.target) if status in ("done", "skipped") else None,
                     "host": outcome.get("host"), "attempts": outcome.get("attempts")})
    return rows


def _summary(rows: List[Dict[str, Any]]) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return counts


def _print_table(rows: List[Dict[str, Any]], counts: Dict[str, int], report: Path) -> None:
    width = max(len(row["input"]) for row in rows)
    print(f"{'input':<{width}}  result")
    for row in rows:
        note = row["error"] or ""
        if row.get("attempts") and row["attempts"] > 1:
            note = f"{row['attempts']} attempts" + (f"; {note}" if note else "")
        print(f"{row['input']:<{width}}  {row['status']}{'  ' + note if note else ''}")
    print(", ".join(f"{n} {status}" for status, n in sorted(counts.items())) + f"; QC report: {report}")
