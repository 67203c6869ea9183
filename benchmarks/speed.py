"""Speed benchmark (not a test): the whole `denoise` run by phase beside the network-only floor, peak memory.

    python benchmarks/speed.py [--sizes 16,100,300] [--repeats 3] [--out docs/SPEED.md]
        [--volume CT] [--package OLD_ENGINE --package SelfSupCTDenoise]

1. The product path. For each size N a 512x512xN int16 CT is assembled (`build_volume`): from a real
   CT given by `--volume` (a file or DICOM folder, e.g. a 512x512 chest series), else from the shipped
   sample (chest, 233x167 pixels, centred in air), its slices repeated back and forth up to N. It is
   denoised by `files.denoise_file` with a noise map (what `selfsupctdenoise
   denoise IN OUT --noise-map NM` runs), shipped lite bundle, default settings, in a fresh process. That
   process times each phase and, just before and just after the run with the same threads, the network alone:
   the floor = steps x (teacher forward + student forward/backward + Adam on 16 random 64x64 patches)
   + N x views x body share x (one 512x512 slice forward), both as the run executes them. Peak memory is the process's
   peak RSS; its growth over the 16-slice run (the fixed footprint: interpreter, torch, models) is
   given in float32 volumes of the N-slice input.
2. The networks alone per profile, as before: one 512x512 slice forward, one adaptation step, one
   noise-model forward (in the layout the engine runs them).

Absolute figures follow the machine's load (recorded per run); the ratios measured within one
process hold better. `--package DIR` measures another copy of the engine (e.g. an older version);
given more than once, the copies run one after the other on each volume (interleaved, so they share
the machine's load), with their time ratios to the first and their outputs compared with the first's
inside the body (`engine/body.py`'s boxes without margin) and on the scanner padding.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

STARTED = time.perf_counter()
ENGINE = Path(__file__).resolve().parents[1] / "SelfSupCTDenoise"
#: In an existing report, `--out` replaces only what follows this line.
MARKER = "<!-- benchmarks/speed.py writes below this line -->"
#: The modules the benchmark uses, by role: where they are now, and in the flat layout of engines
#: before the regrouping (#15), so that `--package` can measure an older copy.
MODULES = {"adapt": ("engine.adapt", "adapt"), "inference": ("engine.inference", "inference"),
           "pseudo": ("engine.pseudo", "pseudo"), "run": ("engine.run", "pipeline"),
           "files": ("files.denoise_file", "pipeline"), "config": ("engine.config", "config"),
           "bundle": ("engine.bundle", "bundle"), "redcnn": ("engine.networks.redcnn", "networks.redcnn"),
           "dataset": ("data.dataset", "datasets"), "volumes": ("files.volumes", "io")}
PHASES = ("startup", "reading", "estimate", "pseudo-noise", "adaptation", "guard", "inference", "writing", "other")


def source_volume(source: Optional[Path] = None):
    """(int16 array, spacing) of the CT the volumes are built from: `source` (a real CT, e.g. a
    512x512 DICOM chest series) as it is, else the shipped sample (chest, 233x167x32 voxels of 1.5 mm)
    at 0.75 mm in-plane, centred in a 512x512 canvas of air with noise."""
    import numpy as np
    import SimpleITK as sitk
    from scipy import ndimage

    if source is not None:
        image = engine("volumes").read_volume(source)
        return sitk.GetArrayFromImage(image).astype(np.int16), image.GetSpacing()
    sample = sitk.GetArrayFromImage(sitk.ReadImage(str(engine("dataset").sample_paths()["ldct"])))
    zoomed = ndimage.zoom(sample.astype(np.float32), (1, 2, 2), order=1)
    canvas = -1000.0 + 20.0 * np.random.default_rng(0).standard_normal((len(sample), 512, 512))
    y0, x0 = (512 - zoomed.shape[1]) // 2, (512 - zoomed.shape[2]) // 2
    canvas[:, y0:y0 + zoomed.shape[1], x0:x0 + zoomed.shape[2]] = zoomed
    return np.rint(canvas).astype(np.int16), (0.75, 0.75, 1.5)


def build_volume(slices: int, source: Optional[Path] = None):
    """A `slices`-slice int16 CT from `source_volume(source)`, its slices repeated back and forth.
    Returns (array, spacing)."""
    import numpy as np

    canvas, spacing = source_volume(source)
    period = max(1, 2 * len(canvas) - 2)
    index = np.arange(slices) % period
    index = np.where(index < len(canvas), index, period - index)
    return canvas[index], spacing


def engine(role: str):
    """The engine module playing `role` (MODULES) in the package being measured."""
    import importlib

    for name in MODULES[role]:
        try:
            return importlib.import_module(f"SelfSupCTDenoiseLib.{name}")
        except ModuleNotFoundError:
            continue
    raise ModuleNotFoundError(f"no {role} module in SelfSupCTDenoiseLib")


def run_child(volume_path: Path, slices: int, out: Path, bundle: str, repeats: int) -> Dict[str, Any]:
    """One `denoise` run with phase times, and the network-only floor (in this fresh process)."""
    adapt_module, inference, pseudo, run = (engine(role) for role in ("adapt", "inference", "pseudo", "run"))
    AdaptConfig, RedCNN = engine("config").AdaptConfig, engine("redcnn").RedCNN
    denoise_file_module = engine("files")

    seconds = dict.fromkeys(PHASES, 0.0)
    seconds["startup"] = time.perf_counter() - STARTED
    stack: List[str] = []

    def timed(owner, name, phase_of):
        """Wrap owner.name: its time (less that of wrapped calls inside it) goes to phase_of(args).
        Names an older engine (`--package`) lacks are skipped: their time stays in the caller's phase."""
        original = getattr(owner, name, None)
        if original is None:
            return

        def wrapper(*args, **kwargs):
            phase = phase_of(*args, **kwargs)
            stack.append(phase)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                stack.pop()
                seconds[phase] += elapsed
                if stack:
                    seconds[stack[-1]] -= elapsed

        setattr(owner, name, wrapper)

    def fixed(phase):
        return lambda *args, **kwargs: phase

    def slicewise_phase(model, volume, *args, phase="infer", **kwargs):
        if phase == "noise":  # the noise models' outputs for model-based pseudo-noise
            return "pseudo-noise"
        return "inference" if len(volume) == slices else "guard"

    timed(denoise_file_module, "read_volume", fixed("reading"))
    timed(denoise_file_module, "load_bundle", fixed("reading"))
    timed(run, "estimate_input_noise", fixed("estimate"))
    timed(run, "prepare_pseudo_pairs", fixed("pseudo-noise"))
    timed(pseudo.PseudoNoiseSource, "draw", fixed("pseudo-noise"))
    timed(adapt_module.PatchSampler, "sample", fixed("pseudo-noise"))
    timed(adapt_module, "adapt", fixed("adaptation"))
    timed(inference, "apply_slicewise", slicewise_phase)
    # the network's own share of the run: every adaptation forward, backward and Adam step, and the
    # slice forwards (the floor counts one per slice of the volume and view, in its body box)
    network = {"adaptation": 0.0, "slice_forwards": 0.0, "slices": 0}

    def network_time(owner, name, record):
        original = getattr(owner, name, None)
        if original is None:  # an older engine: its optimizer step is inside the adaptation's time
            return

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                record(args, time.perf_counter() - start)

        setattr(owner, name, wrapper)

    def forward_time(args, elapsed):
        if stack and stack[-1] == "adaptation":
            network["adaptation"] += elapsed
        elif stack and stack[-1] in ("inference", "guard"):
            network["slice_forwards"] += elapsed
            network["slices"] += len(args[1])

    def step_time(args, elapsed):
        network["adaptation"] += elapsed

    network_time(RedCNN, "forward", forward_time)
    network_time(adapt_module, "optimizer_step", step_time)
    writing_started, eta = [], []

    def progress(event):
        if event.phase == "writing" and not writing_started:
            writing_started.append(time.perf_counter())
        if event.phase == "noise" and event.eta_s is not None and not eta:  # the run's estimate of the rest
            eta.append((time.perf_counter(), event.eta_s))

    floor_units = [network_floor(bundle, repeats)]  # before and after the run: the load drifts
    load = os.getloadavg()[0]
    start = time.perf_counter()
    info = denoise_file_module.denoise_file(volume_path, out, out.with_name(f"noise_{out.name}"),
                                 bundle or None, AdaptConfig(), progress=progress)
    end = time.perf_counter()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB
    seconds["writing"] = end - writing_started[0]
    seconds["other"] = (end - start) - sum(seconds[p] for p in PHASES if p not in ("startup", "other"))
    load_after = os.getloadavg()[0]
    floor_units.append(network_floor(bundle, repeats))
    slice_s, step_s = (statistics.mean(unit) for unit in zip(*floor_units))
    # the forwards the output needs: each slice's body box once per view (the guard's are counted out)
    forwards = slices * info["parameters"].get("views", 1)
    in_run = network["adaptation"] + forwards * network["slice_forwards"] / max(1, network["slices"])
    whole_slices = forwards * (info["run"].get("body_fraction") or 1.0)  # the floor's unit is a whole slice
    return {"slices": slices, "seconds": {p: round(s, 2) for p, s in seconds.items()},
            "total_s": round(seconds["startup"] + end - start, 1), "network_in_run_s": round(in_run, 1),
            "network_in_run": network, "floor_s": round(AdaptConfig().steps * step_s + whole_slices * slice_s, 1),
            "floor_step_s": round(step_s, 4), "floor_slice_s": round(slice_s, 4),
            "floor_units_before_after": floor_units, "peak_rss_bytes": peak_rss,
            "volume_float32_bytes": slices * 512 * 512 * 4, "load_before": round(load, 1),
            "load_after": round(load_after, 1), "threads": info.get("threads", torch_threads_now()),
            "guard_fell_back": (info["run"].get("guard") or {}).get("fell_back"),
            "body_fraction": info["run"].get("body_fraction"),
            "eta_s": round(eta[0][1], 1) if eta else None, "after_eta_s": round(end - eta[0][0], 1) if eta else None}


def network_floor(bundle: str, repeats: int):
    """(seconds per 512x512 slice forward, per adaptation step), the network alone as a run executes
    it: layouts, one slice per forward, the run's threads; an adaptation step is the teacher's
    forward, the student's forward and backward and Adam's step on 16 random 64x64 patches."""
    import torch

    inference, load_bundle = engine("inference"), engine("bundle").load_bundle
    config = engine("config").AdaptConfig()
    loaded = load_bundle(bundle or None)
    layout = getattr(inference, "cpu_layout", lambda m: m)  # older engines: the default layout
    threads = getattr(inference, "torch_threads", lambda requested: contextlib.nullcontext())
    with threads(getattr(config, "threads", 0)):
        net = loaded.build_denoiser(torch.device("cpu"))
        teacher = loaded.build_denoiser(torch.device("cpu")).eval().requires_grad_(False)
        inferring = layout(teacher)
        optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
        generator = torch.Generator().manual_seed(0)
        one_slice = torch.rand(1, 1, 512, 512, generator=generator)
        if inferring is not teacher:
            one_slice = one_slice.contiguous(memory_format=torch.channels_last)
        patches = torch.rand(config.batch_size, 1, config.patch_size, config.patch_size, generator=generator)

        forward, step = network_work(net, teacher, inferring, one_slice, patches, optimizer)
        return timed_median(forward, repeats), timed_median(step, 4 * repeats)


def network_work(student, teacher, inferring, one_slice, patches, optimizer):
    """(forward, step): one slice through `inferring` (the teacher in the run's layout), and one
    adaptation step: the teacher's forward on the patches, the student's forward and backward on
    them with a little noise, Adam's step."""
    import torch

    def forward():
        with torch.no_grad():
            inferring(one_slice)

    def step():
        with torch.no_grad():
            target = teacher(patches)
        loss = torch.nn.functional.mse_loss(student(patches + 0.01 * torch.randn_like(patches)), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return forward, step


def torch_threads_now() -> int:
    import torch

    return torch.get_num_threads()


def timed_median(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def network_rows(device_name: str, repeats: int, batch_size: int):
    """Part 2: per profile, seconds per slice forward, per adaptation step, per noise-model forward."""
    import torch

    from SelfSupCTDenoiseLib.engine import inference
    from SelfSupCTDenoiseLib.engine.config import PROFILES
    from SelfSupCTDenoiseLib.engine.networks.redcnn import RedCNN
    from SelfSupCTDenoiseLib.engine.networks.unet import UNet

    device = torch.device(device_name)
    layout = getattr(inference, "cpu_layout", lambda m: m)

    def timed(fn):
        def synchronised():
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
        return timed_median(synchronised, repeats)

    rows = []
    with inference.torch_threads(0):
        for name in ("lite", "paper"):
            profile = PROFILES[name]
            denoiser = RedCNN(**profile.denoiser_kwargs()).to(device)
            teacher = RedCNN(**profile.denoiser_kwargs()).to(device).eval()
            inferring = layout(teacher)
            noise_model = layout(UNet(**profile.noise_model_kwargs()).to(device).eval())
            slice_ = torch.randn(1, 1, 512, 512, device=device)
            patches = torch.randn(batch_size, 1, 64, 64, device=device)
            optimizer = torch.optim.Adam(denoiser.parameters(), lr=1e-4)

            forward, step = network_work(denoiser, teacher, inferring, slice_, patches, optimizer)

            def noise_forward():
                with torch.no_grad():
                    noise_model(slice_)

            rows.append((name, sum(p.numel() for p in denoiser.parameters()), timed(forward), timed(step),
                         timed(noise_forward)))
        threads = torch.get_num_threads()
    return rows, threads


def body_rows(source: Optional[Path], profiles: List[str], slices: int = 6):
    """Part 3: per profile (its shipped bundle), the inference of `slices` evenly spaced slices of the
    source volume as a run does it (one slice per forward, channels_last), on whole slices (the engine
    before #28; `--whole-slices`) and on their body boxes (engine/body.py), interleaved slice by slice.
    Rows: (profile, body share, whole s, boxes s, largest |difference| inside the body in HU, ms per
    slice to find the boxes)."""
    import numpy as np

    from SelfSupCTDenoiseLib.engine.body import body_boxes, box_fraction
    from SelfSupCTDenoiseLib.engine.bundle import default_bundle_dir, load_bundle
    from SelfSupCTDenoiseLib.engine.inference import apply_slicewise, torch_threads
    from SelfSupCTDenoiseLib.engine.run import model_view

    volume = source_volume(source)[0]
    volume = volume[np.linspace(0, len(volume) - 1, slices).round().astype(int)]
    rows = []
    with torch_threads(0):
        for profile in profiles:
            bundle = load_bundle(default_bundle_dir(profile))
            net, norm = bundle.build_denoiser("cpu"), bundle.normalization
            start = time.perf_counter()
            boxes = body_boxes(volume, net.receptive_radius)
            find_ms = (time.perf_counter() - start) / slices * 1000
            kwargs = dict(to_input=lambda hu: norm.to_model(model_view(hu)[0]), from_output=norm.to_hu)
            apply_slicewise(net, volume[:1], **kwargs)  # warm-up
            seconds, worst, r = [0.0, 0.0], 0.0, net.receptive_radius
            for z in range(slices):
                outputs = []
                for run, box in enumerate((None, boxes[z:z + 1])):
                    start = time.perf_counter()
                    outputs.append(apply_slicewise(net, volume[z:z + 1], boxes=box, **kwargs)[0])
                    seconds[run] += time.perf_counter() - start
                y0, y1, x0, x1 = boxes[z]
                body = (slice(y0 + r, y1 - r), slice(x0 + r, x1 - r))
                worst = max(worst, float(np.abs(outputs[0][body] - outputs[1][body]).max()))
            rows.append((profile, box_fraction(boxes, volume.shape), *seconds, worst, find_ms))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="16,100,300", help="slice counts of the 512x512 volumes [16,100,300]")
    parser.add_argument("--volume", type=Path, help="a real CT (file or DICOM folder) to build the volumes from "
                                                    "[the shipped sample in air]")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="device of part 2 (part 1 runs the default: auto)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--bundle", default="", help="bundle of part 1 [the shipped lite bundle]")
    parser.add_argument("--package", type=Path, action="append",
                        help="folder holding SelfSupCTDenoiseLib; more than once: each in turn [this tree's]")
    parser.add_argument("--no-networks", action="store_true", help="skip part 2")
    parser.add_argument("--no-runs", action="store_true", help="skip part 1")
    parser.add_argument("--body-profiles", default="lite,paper", help="profiles of part 3 ('' skips it) [lite,paper]")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--out", type=Path, help="write the Markdown report here (e.g. docs/SPEED.md)")
    parser.add_argument("--child", nargs=3, metavar=("VOLUME", "SLICES", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    packages = args.package or [ENGINE]
    sys.path.insert(0, str(packages[0] if args.child else ENGINE))  # the parent measures with this tree
    import SelfSupCTDenoiseLib  # noqa: F401  (before torch: it sets the OpenMP wait policy)

    if args.child:
        volume, slices, out = args.child
        print(json.dumps(run_child(Path(volume), int(slices), Path(out), args.bundle, args.repeats)))
        return
    import SimpleITK as sitk

    # every engine runs the same bundle: by default the one this tree ships
    args.bundle = args.bundle or str(engine("bundle").default_bundle_dir("lite"))
    runs = []
    with tempfile.TemporaryDirectory(prefix="speed_") as folder:
        for slices in [] if args.no_runs else [int(s) for s in args.sizes.split(",")]:
            array, spacing = build_volume(slices, args.volume)
            image = sitk.GetImageFromArray(array)
            image.SetSpacing(spacing)
            path = Path(folder) / f"in_{slices}.nrrd"
            sitk.WriteImage(image, str(path), True)
            del array, image
            outputs = []
            for number, package in enumerate(packages):
                outputs.append(Path(folder) / f"out_{slices}_{number}.nrrd")
                command = [sys.executable, str(Path(__file__).resolve()), "--child", str(path), str(slices),
                           str(outputs[-1]), "--bundle", args.bundle, "--repeats", str(args.repeats),
                           "--package", str(package)]
                done = subprocess.run(command, capture_output=True, text=True, check=True)
                runs.append({"package": str(package), **json.loads(done.stdout.strip().splitlines()[-1])})
                if number:
                    runs[-1]["against_first"] = compare_outputs(path, outputs[0], outputs[-1])
                print(json.dumps(runs[-1]), flush=True)
            for produced in Path(folder).iterdir():
                produced.unlink()
    rows, threads = ([], 0) if args.no_networks else network_rows(args.device, args.repeats, args.batch_size)
    body = body_rows(args.volume, [p for p in args.body_profiles.split(",") if p])
    import torch

    cpu = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    text = report(runs, rows, threads, cpu, torch.__version__, args, body)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "networks": rows, "body": body}, indent=1))
    if args.out:  # what stands above the marker (notes written by hand) is kept
        previous = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        kept = previous.split(MARKER)[0] if MARKER in previous else ""
        new = kept + MARKER + "\n\n" + text.split("\n", 2)[2] if kept else text
        args.out.write_text(new + "\n", encoding="utf-8")


def compare_outputs(source: Path, first: Path, other: Path) -> Dict[str, Any]:
    """`other` output against `first` on the input `source`, slice by slice: the largest |difference|
    (HU) inside the body (its boxes without margin, engine/body.py) and whether the scanner padding
    is bit-identical (None when there is none)."""
    import numpy as np
    import SimpleITK as sitk

    from SelfSupCTDenoiseLib.engine.body import body_box
    from SelfSupCTDenoiseLib.engine.ct_array import padding_mask

    volume, a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in (source, first, other))
    worst, padding = 0.0, []
    for z in range(len(volume)):
        y0, y1, x0, x1 = body_box(volume[z], margin=0)
        difference = np.abs(a[z, y0:y1, x0:x1].astype(np.float32) - b[z, y0:y1, x0:x1])
        worst = max(worst, float(difference.max()))
        pad = padding_mask(volume[z])
        if pad.any():
            padding.append(bool(np.array_equal(a[z][pad], b[z][pad])))
    return {"max_abs_diff_body_hu": round(worst, 3), "padding_identical": all(padding) if padding else None}


def report(runs, rows, threads, cpu, torch_version, args, body=()) -> str:
    date = time.strftime("%Y-%m-%d")
    command = "python benchmarks/speed.py" + (f" --sizes {args.sizes}" if args.sizes != "16,100,300" else "")
    command += "".join(f" --package {p}" for p in args.package or []) + (f" --volume {args.volume}" if args.volume else "")
    command += "".join(f" --{flag}" for flag in ("no-runs", "no-networks") if getattr(args, flag.replace("-", "_")))
    command += f" --body-profiles {args.body_profiles}" if args.body_profiles != "lite,paper" else ""
    source = (f"`{args.volume}` (its slices repeated back and forth)" if args.volume
              else "the shipped sample centred in 512x512 air (its 32 slices repeated back and forth)")
    lines = ["# Speed", "",
             f"Measured with `{command}` on {cpu}, torch {torch_version}, {date}; each run in a fresh process.",
             "", "## The whole `denoise` run beside the network-only floor", "",
             f"Volumes from {source}. "
             "Shipped `lite` bundle, default settings (200 adaptation steps, guard on, all cores), int16 input "
             "written with its noise map (`selfsupctdenoise denoise IN OUT --noise-map NM`). Seconds per phase. "
             "The network floor is the network's own time for the same work, measured inside the run (every "
             "adaptation forward, backward and Adam step, plus one forward per slice and view of the volume at the run's "
             "mean time per slice forward): the ratio holds when the machine's load changes during a run. "
             "Body share: the part of the slices the denoiser ran on (engine/body.py; - = whole slices). "
             "With several engines (`--package`), each runs on each volume in turn; the ratio rows divide by the "
             "first, and its output is compared with the first's inside the body and on the padding. ETA: what the "
             "run expected the rest to take when it started (engine/eta.py's probe), against what it took.", "",
             "| slices | engine | " + " | ".join(PHASES) + " | whole run (s) | network floor (s) | whole / floor "
             "| peak RSS (GB) | peak above the 16-slice run, in float32 volumes | load avg (1 min) | body share "
             "| max abs difference to the first in the body (HU) | padding identical | ETA at start / time it took |",
             "|---" * (len(PHASES) + 13) + "|"]
    first = {}
    for r in runs:
        base = next((b["peak_rss_bytes"] for b in runs if b["slices"] == 16 and b["package"] == r["package"]), None)
        above = (f"{(r['peak_rss_bytes'] - base) / r['volume_float32_bytes']:.2f}"
                 if base is not None and r["slices"] != 16 else "(reference)" if r["slices"] == 16 else "-")
        against = r.get("against_first") or {}
        padding = {None: "-", True: "yes", False: "NO"}[against.get("padding_identical")] if against else "-"
        lines.append(f"| {r['slices']} | {engine_label(r['package'])} | "
                     + " | ".join(f"{r['seconds'][p]:.1f}" for p in PHASES)
                     + f" | {r['total_s']:.1f} | {r['network_in_run_s']:.1f}"
                     f" | {r['total_s'] / r['network_in_run_s']:.2f}"
                     f" | {r['peak_rss_bytes'] / 1e9:.2f} | {above} | {r['load_before']}-{r['load_after']}"
                     f" | {r.get('body_fraction') or '-'} | {against.get('max_abs_diff_body_hu', '-')} | {padding}"
                     f" | {eta_text(r)} |")
        reference = first.setdefault(r["slices"], r)
        if reference is not r:
            ratio = lambda new, old: f"{new / old:.2f}" if old >= 0.5 else ""  # noqa: E731 (short phases: noise)
            lines.append(f"| {r['slices']} | ratio to the first | "
                         + " | ".join(ratio(r["seconds"][p], reference["seconds"][p]) for p in PHASES)
                         + f" | **{r['total_s'] / reference['total_s']:.2f}** | "
                         + ratio(r["network_in_run_s"], reference["network_in_run_s"]) + " |" + " |" * 8)
    if runs:
        units = [(r["slices"], engine_label(r["package"]), *zip(*r["floor_units_before_after"])) for r in runs]
        lines += ["", "The network alone outside the run (same process, just before / just after it): " + "; ".join(
            f"{n} slices, {label}: " + " / ".join(f"{f:.3f}" for f in forwards) + " s per 512x512 slice forward, "
            + " / ".join(f"{s:.3f}" for s in steps) + " s per adaptation step"
            for n, label, forwards, steps in units) + "."]
    else:  # part 1 skipped: the header line only
        del lines[3:]
    if rows:
        lines += ["", "## The networks alone, per profile", "",
                  f"`--device {args.device}`, {threads} threads, median of {args.repeats}; in the layouts the engine "
                  "runs them in (forwards in channels_last on the CPU, adaptation in the default layout), one slice "
                  "per forward.", "",
                  "| profile | RED-CNN parameters | 512x512 slice forward (s) | adaptation step, "
                  f"{args.batch_size} x 64x64 patches (s) | noise model, 512x512 forward (s) |",
                  "|---|---|---|---|---|"]
        lines += [f"| {n} | {p:,} | {f:.3f} | {s:.3f} | {u:.3f} |" for n, p, f, s, u in rows]
    if body:
        lines += ["", "## Inference on the body against whole slices", "",
                  f"The inference of 6 evenly spaced slices of {f'`{args.volume}`' if args.volume else 'the shipped sample in air'}"
                  " by each shipped bundle as a run does "
                  "it, whole slices (the engine before issue #28, now `--whole-slices`) and body boxes "
                  "(engine/body.py) one after the other per slice, in one process, all cores.", "",
                  "| profile | body share | whole slices (s) | body boxes (s) | boxes / whole "
                  "| max abs difference in the body (HU) | finding the boxes (ms per slice) |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {p} | {share:.3f} | {w:.1f} | {b:.1f} | {b / w:.2f} | {d:.4f} | {ms:.0f} |"
                  for p, share, w, b, d, ms in body]
    return "\n".join(lines)


def eta_text(run) -> str:
    """The run's own estimate of its rest (engine/eta.py) against the time the rest took."""
    if not run.get("eta_s"):
        return "-"
    return f"{run['eta_s']:.0f} / {run['after_eta_s']:.0f} s ({run['eta_s'] / run['after_eta_s']:.2f})"


def engine_label(package: str) -> str:
    """The engine's folder, relative to this repository when inside it."""
    path = Path(package).resolve()
    return "this tree" if path == ENGINE else str(path)


if __name__ == "__main__":
    main()
