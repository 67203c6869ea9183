"""Cohort throughput (not a test): the same volumes through the serial batch and through `cohort` on a
local Ray with 1 and 2 workers; volumes per minute, Ray's start and its cost per task.

    python benchmarks/cohort_throughput.py [--volumes 6] [--slices 8] [--size 128] [--steps 40]
                                           [--out docs/COHORT.md] [--screenshot docs/cohort_report.png]

Every run is a fresh process (`python -m SelfSupCTDenoiseLib ...`), timed from outside, each volume
with 1 torch thread (`--threads 1`): the serial batch does one volume after another in one process;
the cohort runs one Ray task per volume (`--cpus-per-volume 1 --workers N`). Per-volume times come from
the serial batch's table and the cohort's event log (`done` events: the task's own seconds, reading,
denoising and writing; its QC comes after). With --out, the section between the markers
`<!-- cohort-throughput -->` and `<!-- /cohort-throughput -->` of that file is replaced.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "SelfSupCTDenoise"))

from SelfSupCTDenoiseLib.data.phantom import noisy_pair  # noqa: E402

START, END = "<!-- cohort-throughput -->", "<!-- /cohort-throughput -->"


def make_volumes(folder: Path, count: int, slices: int, size: int) -> None:
    folder.mkdir(parents=True)
    for i in range(count):
        image = sitk.GetImageFromArray(np.round(noisy_pair(slices, size, 30.0, seed=100 + i)[0]).astype(np.int16))
        image.SetSpacing((2.0, 2.0, 3.0))  # a 256 mm field of view: uniform-tissue boxes fit in the phantom
        sitk.WriteImage(image, str(folder / f"vol{i:02d}.nrrd"), True)


def timed(args, env) -> tuple:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "SelfSupCTDenoiseLib", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:3])} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return wall, done.stdout


def cohort_numbers(log: Path) -> dict:
    events = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    at = {e["event"]: e["elapsed_s"] for e in events if e["event"] in ("run_started", "cluster", "report")}
    done = [e for e in events if e["event"] == "done"]
    qc_start = {e["index"]: e["elapsed_s"] for e in events if e["event"] == "phase" and e["phase"] == "qc"}
    first_queued = min(e["elapsed_s"] for e in events if e["event"] == "queued")
    return {"ray_start_s": at["cluster"] - at["run_started"],
            "tasks_span_s": max(e["elapsed_s"] for e in done) - first_queued,
            "task_seconds": [e["seconds"] for e in done], "volumes": len(done),
            # QC ends when the task does; its start is an event that the driver logs a little later
            "qc_seconds": [max(0.0, e["elapsed_s"] - qc_start[e["index"]]) for e in done]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=6)
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--screenshot", type=Path, help="also save a picture of the 2-worker run's QC report")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "SelfSupCTDenoise")}
    common = ["--steps", str(args.steps), "--threads", "1", "--quiet"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_volumes(tmp / "in", args.volumes, args.slices, args.size)
        load = os.getloadavg()[0]
        serial_wall, table = timed(["denoise", str(tmp / "in"), str(tmp / "serial"), *common], env)
        serial_each = [float(s) for s in re.findall(r"ok in ([0-9.]+) s", table)]
        runs = {}
        for workers in (1, 2):
            out = tmp / f"cohort{workers}"
            wall, _ = timed(["cohort", str(tmp / "in"), str(out), "--workers", str(workers), "--cpus-per-volume", "1",
                             *common], env)
            runs[workers] = {"wall_s": wall, **cohort_numbers(out / "cohort_events.jsonl")}
        load = max(load, os.getloadavg()[0])
        if args.screenshot:
            from SelfSupCTDenoiseLib.cohort.report import headless_chromium

            (tmp / "in" / "unreadable.nrrd").write_text("not a volume")  # the report shows a failed row too
            subprocess.run([sys.executable, "-m", "SelfSupCTDenoiseLib", "cohort", str(tmp / "in"),
                            str(tmp / "cohort2"), "--workers", "2", *common], env=env, cwd=ROOT, capture_output=True)
            headless_chromium(tmp / "cohort2" / "report.html", screenshot=args.screenshot, window="1600,860")
    n = args.volumes
    serial_task = float(np.mean(serial_each))
    lines = [
        f"Measured with `python benchmarks/cohort_throughput.py --volumes {n} --slices {args.slices} "
        f"--size {args.size} --steps {args.steps}` on {os.cpu_count()} CPU cores ({platform.machine()}), shipped `lite` bundle, "
        f"1 torch thread per volume, {time.strftime('%Y-%m-%d')}; load average up to {load:.1f} during the runs "
        "(the machine was shared).",
        "",
        "| run | wall time (s) | Ray start (s) | volumes/min (wall) | volumes/min (tasks only) | s per volume |",
        "|---|---|---|---|---|---|",
        f"| serial batch (`denoise INDIR OUTDIR`) | {serial_wall:.1f} | - | {n / serial_wall * 60:.2f} | "
        f"{n / sum(serial_each) * 60:.2f} | {serial_task:.1f} |",
    ]
    for workers, run in runs.items():
        lines.append(f"| cohort, {workers} local worker{'s' if workers > 1 else ''} | {run['wall_s']:.1f} | "
                     f"{run['ray_start_s']:.1f} | {n / run['wall_s'] * 60:.2f} | "
                     f"{n / run['tasks_span_s'] * 60:.2f} | {np.mean(run['task_seconds']):.1f} |")
    one = runs[1]
    per_volume, task, qc = one["tasks_span_s"] / n, np.mean(one["task_seconds"]), np.mean(one["qc_seconds"])
    lines += ["", f"With 1 worker a volume took {per_volume:.1f} s from queue to done: {task:.1f} s in the task "
                  f"(reading, denoising, writing; the serial batch: {serial_task:.1f} s), {qc:.1f} s for its QC "
                  f"(which the serial batch does not make) and {per_volume - task - qc:.2f} s for everything else "
                  "(Ray's scheduling and the events; the worker's one import of torch is in its first task): "
                  f"Ray's cost per task. Starting the local Ray took {one['ray_start_s']:.1f} s, once a run. "
                  f"2 workers against 1: {one['tasks_span_s'] / runs[2]['tasks_span_s']:.2f}x the throughput "
                  f"on {os.cpu_count()} cores that other work was also using."]
    text = "\n".join(lines)
    print(text)
    if args.out:
        doc = args.out.read_text(encoding="utf-8")
        if START not in doc or END not in doc:
            raise SystemExit(f"{args.out} has no {START} ... {END} section")
        head, rest = doc.split(START, 1)
        args.out.write_text(f"{head}{START}\n{text}\n{END}{rest.split(END, 1)[1]}", encoding="utf-8")


if __name__ == "__main__":
    main()
