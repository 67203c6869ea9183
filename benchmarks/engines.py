"""CPU inference engines benchmark (not a test, issue #28): RED-CNN forwards per real CT slice.

    python benchmarks/engines.py [--profiles lite,paper] [--repeats 5] [--threads 0]
        [--slices Testing/data/real_ct/lidc_0314/000138.dcm ...] [--engines eager,compile,onnxruntime,openvino]
        [--json docs/engines.json]

For each shipped bundle the denoiser runs, batch 1, with the product's thread count (`--threads 0`:
what a run takes, `engine/inference.py` `resolve_threads`), on real 512x512 CT slices, whole and
cropped to the body's box (`engine/body.py`, the size the run infers on), through:
  eager        torch, channels_last: today's path (`engine/inference.py` `apply_slicewise`)
  compile      torch.compile of that model (inductor, CPU)
  onnxruntime  ONNX Runtime fp32 (the model exported with dynamic height and width)
  openvino     OpenVINO fp32 (`INFERENCE_PRECISION_HINT` f32; dynamic height and width)
The engines run interleaved (A B C D A B C D ...) in one process, so a change in the machine's load
hits all of them alike: the ratios to eager hold, the seconds follow the load (recorded). Each
engine's preparation (export, conversion, compilation: per run, since the adapted weights change per
volume) and its first call are timed, and its outputs are compared with eager's in HU (whole slice and body box).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "SelfSupCTDenoise"))
SLICES = [ROOT / "Testing" / "data" / "real_ct" / "lidc_0314" / "000138.dcm",
          ROOT / "Testing" / "data" / "real_ct" / "cmb_crc" / "1-026.dcm"]
#: The distributions each extra engine installs (beside numpy, which the engine has already).
EXTRAS = {"onnxruntime": ["onnxruntime", "onnx", "flatbuffers", "ml_dtypes"],
          "openvino": ["openvino", "openvino-telemetry"]}


def read_slice(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))[0].astype(np.float32)


def installed_mb(distributions: List[str]) -> float:
    """Megabytes the distributions' files take in site-packages (their RECORD)."""
    total = 0
    for name in distributions:
        for file in importlib.metadata.distribution(name).files or ():
            path = Path(file.locate())
            total += path.stat().st_size if path.is_file() else 0
    return round(total / 2**20, 1)


def gflop_per_forward(model, shape) -> float:
    """Multiply-adds x 2 of one forward on an input of `shape` (N, 1, H, W), counted per convolution
    from the shapes its hooks see: what any engine must compute, so GFLOP/s says how near a
    measured time is to what the cores can do."""
    import torch
    from torch import nn

    total = [0]

    def count(module, inputs, output):
        kh, kw = module.kernel_size
        per_output = kh * kw * module.in_channels // module.groups
        if isinstance(module, nn.ConvTranspose2d):  # each input pixel scatters into out_channels x k x k
            total[0] += 2 * inputs[0].numel() * module.out_channels * kh * kw // module.groups
        else:
            total[0] += 2 * output.numel() * per_output

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    try:
        with torch.no_grad():
            model(torch.zeros(shape))
    finally:
        for hook in hooks:
            hook.remove()
    return total[0] / 1e9


def gemm_gflops(size: int = 2048, repeats: int = 5) -> float:
    """What torch's own matrix product reaches on these threads (median of `repeats`): the practical
    ceiling any engine's convolutions could approach on this CPU."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return round(2 * size ** 3 / statistics.median(times) / 1e9, 1)


def eager_engine(model, threads):
    import torch

    from SelfSupCTDenoiseLib.engine.inference import cpu_layout

    net = cpu_layout(model)

    def forward(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(x).contiguous(memory_format=torch.channels_last)).numpy()
    return forward


def compile_engine(model, threads):
    import torch

    from SelfSupCTDenoiseLib.engine.inference import cpu_layout

    net = torch.compile(cpu_layout(model), dynamic=True)

    def forward(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(x).contiguous(memory_format=torch.channels_last)).numpy()
    return forward


def onnx_file(model, folder: str) -> str:
    import torch

    path = os.path.join(folder, "model.onnx")
    axes = {2: "height", 3: "width"}
    torch.onnx.export(model, (torch.zeros(1, 1, 64, 64),), path, dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": axes, "y": axes})
    return path


def onnxruntime_engine(model, threads):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    with tempfile.TemporaryDirectory() as folder:
        session = ort.InferenceSession(onnx_file(model, folder), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"x": x})[0]


def openvino_engine(model, threads):
    import openvino as ov
    import torch

    converted = ov.convert_model(model, example_input=torch.zeros(1, 1, 64, 64), input=[1, 1, -1, -1])
    compiled = ov.Core().compile_model(converted, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                          "INFERENCE_PRECISION_HINT": "f32",
                                                          "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})[0].copy()


ENGINES: Dict[str, Callable] = {"eager": eager_engine, "compile": compile_engine,
                                "onnxruntime": onnxruntime_engine, "openvino": openvino_engine}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", default="lite,paper")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="0: the product's count (resolve_threads)")
    parser.add_argument("--slices", type=Path, nargs="+", default=SLICES, help="real CT slices (DICOM files)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import SelfSupCTDenoiseLib  # noqa: F401  (sets the OpenMP wait policy as the product does)
    import torch

    from SelfSupCTDenoiseLib.engine.body import body_box
    from SelfSupCTDenoiseLib.engine.bundle import default_bundle_dir, load_bundle
    from SelfSupCTDenoiseLib.engine.inference import resolve_threads
    from SelfSupCTDenoiseLib.engine.run import model_view

    threads = resolve_threads(args.threads)
    torch.set_num_threads(threads)
    engines = args.engines.split(",")
    slices = [read_slice(path) for path in args.slices]
    results: Dict[str, Any] = {
        "command": "python benchmarks/engines.py " + " ".join(sys.argv[1:]), "threads": threads,
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "torch": torch.__version__, "slices": [os.path.relpath(p, ROOT) for p in args.slices],
        "versions": {}, "installed_mb": {}, "profiles": {}, "load_average": [os.getloadavg()[0]],
        "gemm_gflops": [gemm_gflops()]}
    for name in engines:
        if name in EXTRAS:
            results["versions"][name] = importlib.metadata.version(name)
            results["installed_mb"][name] = installed_mb(EXTRAS[name])
    for profile in args.profiles.split(","):
        bundle = load_bundle(default_bundle_dir(profile))
        model = bundle.build_denoiser()
        norm = bundle.normalization
        inputs = []
        for hu in slices:
            y0, y1, x0, x1 = body_box(hu, model.receptive_radius)
            x = np.ascontiguousarray(norm.to_model(model_view(hu[None])[0]), dtype=np.float32)[:, None]
            inputs.append({"whole": x, "box": np.ascontiguousarray(x[..., y0:y1, x0:x1]),
                           "box_shape": [int(y1 - y0), int(x1 - x0)]})
        # GFLOP of each part, summed over the slices: the medians below are per slice, so the mean
        gflop = {part: statistics.mean(gflop_per_forward(model, x[part].shape) for x in inputs) for part in ("whole", "box")}
        forwards, rows = {}, {}
        for name in engines:
            try:
                start = time.perf_counter()
                forwards[name] = ENGINES[name](model, threads)
                built = time.perf_counter()
                forwards[name](inputs[0]["whole"])  # engines that compile lazily do it here
            except Exception as exc:  # an engine that does not work here is reported, not fatal
                rows[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
                forwards.pop(name, None)
                continue
            rows[name] = {"prepare_s": round(built - start, 2), "first_call_s": round(time.perf_counter() - built, 2),
                          "whole_s": [], "box_s": []}
            print(f"{profile} {name}: {rows[name]}", flush=True)
        reference = {}
        for repeat in range(args.repeats):
            for index, x in enumerate(inputs):
                for name, forward in forwards.items():
                    for part in ("whole", "box"):
                        start = time.perf_counter()
                        y = forward(x[part])
                        rows[name][f"{part}_s"].append(time.perf_counter() - start)
                        hu = norm.to_hu(y[0, 0])
                        if name == "eager":
                            reference[index, part] = hu
                        elif repeat == 0:
                            diff = np.abs(hu - reference[index, part])
                            key = "max_abs_hu_whole" if part == "whole" else "max_abs_hu_box"
                            rows[name][key] = max(rows[name].get(key, 0.0), float(diff.max()))
            results["load_average"].append(os.getloadavg()[0])
            print(f"{profile} repeat {repeat + 1}/{args.repeats}", flush=True)
        eager = {part: statistics.median(rows["eager"][f"{part}_s"]) for part in ("whole", "box")} if "eager" in forwards else None
        for name in forwards:
            row = rows[name]
            for part in ("whole", "box"):
                row[f"{part}_median_s"] = round(statistics.median(row.pop(f"{part}_s")), 4)
                row[f"{part}_gflops"] = round(gflop[part] / row[f"{part}_median_s"], 1)
                if eager:
                    row[f"{part}_ratio_to_eager"] = round(row[f"{part}_median_s"] / eager[part], 3)
            for key in ("max_abs_hu_whole", "max_abs_hu_box"):
                if key in row:
                    row[key] = float(f"{row[key]:.3g}")
        results["profiles"][profile] = {"box_shapes": [x["box_shape"] for x in inputs],
                                        "gflop_per_slice": {part: round(v, 2) for part, v in gflop.items()}, "engines": rows}
    results["gemm_gflops"].append(gemm_gflops())
    results["load_average"] = [round(v, 2) for v in results["load_average"]]
    text = json.dumps(results, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
