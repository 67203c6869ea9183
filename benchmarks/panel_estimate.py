"""The panel's first estimate against the run it estimates (not a test; issue #28, item 4).

    python benchmarks/panel_estimate.py [--slices 16] [--steps 200] [--threads 0] [--volume CT] [--repeats 1]

What the Slicer panel does before the first run on a computer, without the application: the
worker's `--probe` with the shipped lite bundle, started as the panel starts it
(`SelfSupCTDenoiseSlicer/probe.py`), and `settings.estimateTime` from its answer. Then the run it
estimates, through the worker as the panel starts it (`WorkerRunner`), on a 512x512xN CT built as
benchmarks/speed.py builds it (the shipped sample centred in air, or `--volume`), timed from writing
the input to the run's end. Printed per repeat (probe and run alternate, so they share the load): the
probe's wall time, the probed and the table's estimates, the run's own ETA at its start
(engine/eta.py, without start-up) and the time the run took, with the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "SelfSupCTDenoise"), str(HERE)]

from speed import build_volume  # noqa: E402
from SelfSupCTDenoiseSlicer import settings  # noqa: E402
from SelfSupCTDenoiseSlicer.probe import SpeedProbe  # noqa: E402
from SelfSupCTDenoiseSlicer.runner import WorkerRunner  # noqa: E402


def measure(volume, spacing, config: dict, bundle: Path, threads: int) -> dict:
    import SimpleITK as sitk

    load = os.getloadavg()[0]
    started = time.monotonic()
    probe = SpeedProbe(WorkerRunner(), bundle, "cpu", threads)
    probe.wait()
    probeS = time.monotonic() - started
    if probe.costs is None:
        raise SystemExit(f"the probe failed: {probe.message}")
    manifest = settings.readManifest(bundle)
    noiseModels = len((manifest.get("files") or {}).get("noise_models", [])) or 3
    share = settings.bodyShare(volume, manifest)  # as the panel: the body boxes the run denoises
    probed = settings.estimateTime(volume.shape, config, "lite", False, noiseModels,
                                   settings.probedCosts(probe.costs, "lite", "cpu"), share).seconds
    table = settings.estimateTime(volume.shape, config, "lite", False, noiseModels, None, share).seconds

    runner = WorkerRunner()
    started = time.monotonic()
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(runner.inputPath))
    runner.start(config, bundlePath=str(bundle), noiseMap=True, forceCpu=True, outputDtype="float32")
    result = runner.waitForCompletion()
    runS = time.monotonic() - started
    runner.cleanup()
    if result.state.value != "completed":
        raise SystemExit(f"the run failed: {result.message}")
    return {"load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2), "probe_wall_s": round(probeS, 1),
            "probe_costs": {k: round(v, 3) for k, v in probe.costs.items()}, "probed_estimate_s": round(probed, 1),
            "table_estimate_s": round(table, 1), "body_share_estimated": round(share, 3),
            "body_fraction_of_run": result.info.get("run", {}).get("body_fraction"), "run_eta_at_start_s": result.info.get("run", {}).get("expected_s"),
            "run_s": round(runS, 1), "probed_over_run": round(probed / runS, 3), "table_over_run": round(table / runS, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads of probe and run (0: all cores)")
    parser.add_argument("--volume", type=Path, help="a real CT to build the volume from (default: the shipped sample)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    volume, spacing = build_volume(args.slices, args.volume)
    config = settings.configFromMapping({"steps": args.steps, "device": "cpu", "threads": args.threads})
    bundle = settings.modelsDir() / "lite"
    print(json.dumps({"volume": list(volume.shape), "steps": args.steps, "threads": args.threads,
                      "cores": os.cpu_count()}), flush=True)
    for _ in range(args.repeats):
        print(json.dumps(measure(volume, spacing, config, bundle, args.threads)), flush=True)


if __name__ == "__main__":
    main()
