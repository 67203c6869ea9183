"""Speed benchmark (not a test): the whole `denoise` run by phase beside the network-only floor, peak memory.

    python benchmarks/speed.py [--sizes 16,100,300] [--repeats 3] [--out docs/SPEED.md]

1. The product path. For each size N a 512x512xN int16 chest CT is assembled from the shipped sample
   (`build_volume`) and denoised by `files.denoise_file` with a noise map (what `selfsupctdenoise
   denoise IN OUT --noise-map NM` runs), shipped lite bundle, default settings, in a fresh process. That
   process times each phase and, just before and just after the run with the same threads, the network alone:
   the floor = steps x (teacher forward + student forward/backward + Adam on 16 random 64x64 patches)
   + N x (one 512x512 slice forward), both as the run executes them. Peak memory is the process's
   peak RSS; its growth over the 16-slice run (the fixed footprint: interpreter, torch, models) is
   given in float32 volumes of the N-slice input.
2. The networks alone per profile, as before: one 512x512 slice forward, one adaptation step, one
   noise-model forward (in the layout the engine runs them).

Absolute figures follow the machine's load (recorded per run); the ratios measured within one
process hold better. `--package DIR` measures another copy of the engine (e.g. an older version).
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
from typing import Any, Dict, List

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
           "dataset": ("data.dataset", "datasets")}
PHASES = ("startup", "reading", "estimate", "pseudo-noise", "adaptation", "guard", "inference", "writing", "other")


def build_volume(slices: int):
    """A 512x512 x `slices` int16 CT: the shipped sample (chest, 233x167x32 voxels of 1.5 mm) at 0.75 mm
    in-plane, centred in air with noise, its slices repeated back and forth. Returns (array, spacing)."""
    import numpy as np
    import SimpleITK as sitk
    from scipy import ndimage

    sample = sitk.GetArrayFromImage(sitk.ReadImage(str(engine("dataset").sample_paths()["ldct"]))).astype(np.float32)
    zoomed = ndimage.zoom(sample, (1, 2, 2), order=1)
    canvas = -1000.0 + 20.0 * np.random.default_rng(0).standard_normal((len(sample), 512, 512))
    y0, x0 = (512 - zoomed.shape[1]) // 2, (512 - zoomed.shape[2]) // 2
    canvas[:, y0:y0 + zoomed.shape[1], x0:x0 + zoomed.shape[2]] = zoomed
    period = 2 * len(sample) - 2
    index = np.arange(slices) % period
    index = np.where(index < len(sample), index, period - index)
    return np.rint(canvas[index]).astype(np.int16), (0.75, 0.75, 1.5)


def engine(role: str):
    """The engine module playing `role` (MODULES) in the package being measured."""
    import importlib

    for name in MODULES[role]:
        try:
            return importlib.import_module(f"SelfSupCTDenoiseLib.{name}")
        except ModuleNotFoundError:
            continue
    raise ModuleNotFoundError(f"no {role} module in SelfSupCTDenoiseLib")


def run_child(volume_path: Path, slices: int, bundle: str, repeats: int) -> Dict[str, Any]:
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
    # slice forwards (per slice: the floor counts one per slice of the volume)
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
    writing_started = []

    def progress(event):
        if event.phase == "writing" and not writing_started:
            writing_started.append(time.perf_counter())

    floor_units = [network_floor(bundle, repeats)]  # before and after the run: the load drifts
    load = os.getloadavg()[0]
    start = time.perf_counter()
    out = volume_path.with_name(f"out_{slices}.nrrd")
    info = denoise_file_module.denoise_file(volume_path, out, volume_path.with_name(f"noise_{slices}.nrrd"),
                                 bundle or None, AdaptConfig(), progress=progress)
    end = time.perf_counter()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB
    seconds["writing"] = end - writing_started[0]
    seconds["other"] = (end - start) - sum(seconds[p] for p in PHASES if p not in ("startup", "other"))
    load_after = os.getloadavg()[0]
    floor_units.append(network_floor(bundle, repeats))
    slice_s, step_s = (statistics.mean(unit) for unit in zip(*floor_units))
    in_run = network["adaptation"] + slices * network["slice_forwards"] / max(1, network["slices"])
    return {"slices": slices, "seconds": {p: round(s, 2) for p, s in seconds.items()},
            "total_s": round(seconds["startup"] + end - start, 1), "network_in_run_s": round(in_run, 1),
            "network_in_run": network, "floor_s": round(AdaptConfig().steps * step_s + slices * slice_s, 1),
            "floor_step_s": round(step_s, 4), "floor_slice_s": round(slice_s, 4),
            "floor_units_before_after": floor_units, "peak_rss_bytes": peak_rss,
            "volume_float32_bytes": slices * 512 * 512 * 4, "load_before": round(load, 1),
            "load_after": round(load_after, 1), "threads": info.get("threads", torch_threads_now()),
            "guard_fell_back": (info["run"].get("guard") or {}).get("fell_back")}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="16,100,300", help="slice counts of the 512x512 volumes [16,100,300]")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="device of part 2 (part 1 runs the default: auto)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--bundle", default="", help="bundle of part 1 [the shipped lite bundle]")
    parser.add_argument("--package", type=Path, default=ENGINE, help="folder holding SelfSupCTDenoiseLib")
    parser.add_argument("--no-networks", action="store_true", help="skip part 2")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--out", type=Path, help="write the Markdown report here (e.g. docs/SPEED.md)")
    parser.add_argument("--child", nargs=2, metavar=("VOLUME", "SLICES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(args.package))
    import SelfSupCTDenoiseLib  # noqa: F401  (before torch: it sets the OpenMP wait policy)

    if args.child:
        print(json.dumps(run_child(Path(args.child[0]), int(args.child[1]), args.bundle, args.repeats)))
        return
    import SimpleITK as sitk

    runs = []
    with tempfile.TemporaryDirectory(prefix="speed_") as folder:
        for slices in [int(s) for s in args.sizes.split(",")]:
            array, spacing = build_volume(slices)
            image = sitk.GetImageFromArray(array)
            image.SetSpacing(spacing)
            path = Path(folder) / f"in_{slices}.nrrd"
            sitk.WriteImage(image, str(path), True)
            del array, image
            command = [sys.executable, str(Path(__file__).resolve()), "--child", str(path), str(slices),
                       "--bundle", args.bundle, "--repeats", str(args.repeats), "--package", str(args.package)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[-1]), flush=True)
            for produced in Path(folder).iterdir():
                produced.unlink()
    rows, threads = ([], 0) if args.no_networks else network_rows(args.device, args.repeats, args.batch_size)
    import torch

    cpu = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    text = report(runs, rows, threads, cpu, torch.__version__, args)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "networks": rows}, indent=1))
    if args.out:  # what stands above the marker (notes written by hand) is kept
        previous = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        kept = previous.split(MARKER)[0] if MARKER in previous else ""
        new = kept + MARKER + "\n\n" + text.split("\n", 2)[2] if kept else text
        args.out.write_text(new + "\n", encoding="utf-8")


def report(runs, rows, threads, cpu, torch_version, args) -> str:
    date = time.strftime("%Y-%m-%d")
    command = "python benchmarks/speed.py" + (f" --sizes {args.sizes}" if args.sizes != "16,100,300" else "")
    lines = ["# Speed", "",
             f"Measured with `{command}` on {cpu}, torch {torch_version}, {date}; each run in a fresh process.",
             "", "## The whole `denoise` run beside the network-only floor", "",
             "Shipped `lite` bundle, default settings (200 adaptation steps, guard on, all cores), int16 input "
             "written with its noise map (`selfsupctdenoise denoise IN OUT --noise-map NM`). Seconds per phase. "
             "The network floor is the network's own time for the same work, measured inside the run (every "
             "adaptation forward, backward and Adam step, plus one forward per slice of the volume at the run's "
             "mean time per slice forward): the ratio holds when the machine's load changes during a run.", "",
             "| slices | " + " | ".join(PHASES) + " | whole run (s) | network floor (s) | whole / floor "
             "| peak RSS (GB) | peak above the 16-slice run, in float32 volumes | load avg (1 min) |",
             "|---" * (len(PHASES) + 7) + "|"]
    base = next((r["peak_rss_bytes"] for r in runs if r["slices"] == 16), None)
    for r in runs:
        above = (f"{(r['peak_rss_bytes'] - base) / r['volume_float32_bytes']:.2f}"
                 if base is not None and r["slices"] != 16 else "(reference)" if r["slices"] == 16 else "-")
        lines.append(f"| {r['slices']} | " + " | ".join(f"{r['seconds'][p]:.1f}" for p in PHASES)
                     + f" | {r['total_s']:.1f} | {r['network_in_run_s']:.1f}"
                     f" | {r['total_s'] / r['network_in_run_s']:.2f}"
                     f" | {r['peak_rss_bytes'] / 1e9:.2f} | {above} | {r['load_before']}-{r['load_after']} |")
    if runs:
        units = [(r["slices"], *zip(*r["floor_units_before_after"])) for r in runs]
        lines += ["", "The network alone outside the run (same process, just before / just after it): " + "; ".join(
            f"{n} slices: " + " / ".join(f"{f:.3f}" for f in forwards) + " s per 512x512 slice forward, "
            + " / ".join(f"{s:.3f}" for s in steps) + " s per adaptation step" for n, forwards, steps in units) + "."]
    if rows:
        lines += ["", "## The networks alone, per profile", "",
                  f"`--device {args.device}`, {threads} threads, median of {args.repeats}; in the layouts the engine "
                  "runs them in (forwards in channels_last on the CPU, adaptation in the default layout), one slice "
                  "per forward.", "",
                  "| profile | RED-CNN parameters | 512x512 slice forward (s) | adaptation step, "
                  f"{args.batch_size} x 64x64 patches (s) | noise model, 512x512 forward (s) |",
                  "|---|---|---|---|---|"]
        lines += [f"| {n} | {p:,} | {f:.3f} | {s:.3f} | {u:.3f} |" for n, p, f, s, u in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
