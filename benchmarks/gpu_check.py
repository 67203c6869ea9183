"""The GPU path, ready to measure (not a test): one script that a lent CUDA machine runs in < 8 min.

    python benchmarks/gpu_check.py --device cuda [--json out/gpu_check.json]
    python benchmarks/gpu_check.py --device cpu --tiny          # what CI runs (seconds)

It reports, for the shipped bundles (`lite`, and `paper` where shipped; otherwise a `paper` bundle
pre-trained here for `--pretrain-steps` steps on synthetic pairs, and the report says so):
1. click-to-result for a 512x512x100 volume (adaptation with the default steps + inference) and the
   peak GPU memory, per bundle;
2. PSNR (soft-tissue window) of the held-out demo sample (chest CT, quarter dose; reference: its
   denoised normal-dose image) after 200, 1,000 and 2,000 adaptation steps, from one adaptation run
   (the teacher is evaluated at each of those teacher updates), to choose the CUDA default steps;
3. a real out-of-memory fallback: the process is capped with
   `torch.cuda.set_per_process_memory_fraction` so that a batch no longer fits, and inference must
   still finish (halved batches, then the CPU) with the same result.
On the CPU (`--tiny`) every part runs at toy sizes and part 3 is reported as not applicable.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "SelfSupCTDenoise"))

from SelfSupCTDenoiseLib.data.phantom import noisy_pair  # noqa: E402
from SelfSupCTDenoiseLib.engine.bundle import Bundle, default_bundle_dir, load_bundle  # noqa: E402
from SelfSupCTDenoiseLib.engine.config import AdaptConfig  # noqa: E402
from SelfSupCTDenoiseLib.engine.inference import apply_slicewise  # noqa: E402
from SelfSupCTDenoiseLib.engine.run import denoise_array  # noqa: E402
from SelfSupCTDenoiseLib.quality.metrics import psnr  # noqa: E402


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bundles(args) -> Dict[str, Bundle]:
    """The shipped bundles to measure; a missing `paper` bundle is pre-trained here (quickly)."""
    from SelfSupCTDenoiseLib.engine.train import PretrainConfig, Subject, pretrain

    found: Dict[str, Bundle] = {str(path): load_bundle(path) for path in args.bundle}
    if found:
        return found
    for profile in (("tiny",) if args.tiny else ("lite", "paper")):
        path = default_bundle_dir(profile)
        if (path / "manifest.json").exists():
            found[profile] = load_bundle(path)
            continue
        size = 32 if args.tiny else 128
        subjects = [Subject(f"synthetic{i}", *noisy_pair(4, size, 30.0, seed=i)) for i in range(2)]
        config = PretrainConfig(profile=profile, denoiser_steps=args.pretrain_steps,
                                noise_model_steps=max(1, args.pretrain_steps // 4), batch_size=8,
                                patch_size=min(64, size), calibration_patches=64,
                                lr=1e-3 if profile == "tiny" else 1e-4)
        out = Path(tempfile.mkdtemp()) / profile
        found[f"{profile} (pre-trained here, {args.pretrain_steps} steps on synthetic pairs)"] = pretrain(
            subjects, out, config)
    return found


def volume_like_ct(slices: int, size: int) -> np.ndarray:
    """A CT-like test volume of the requested size: the demo sample's slices, tiled and cropped."""
    try:
        import SimpleITK as sitk
        from SelfSupCTDenoiseLib.data.dataset import sample_paths

        sample = sitk.GetArrayFromImage(sitk.ReadImage(str(sample_paths()["ldct"]))).astype(np.float32)
    except Exception:  # noqa: BLE001 - the sample is optional for the timing part
        sample = noisy_pair(8, 128, 30.0)[0]
    reps = (-(-slices // sample.shape[0]), -(-size // sample.shape[1]), -(-size // sample.shape[2]))
    return np.tile(sample, reps)[:slices, :size, :size]


def click_to_result(bundle: Bundle, volume: np.ndarray, config: AdaptConfig, device: torch.device) -> Dict[str, Any]:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    _synchronize(device)
    start = time.perf_counter()
    result = denoise_array(volume, bundle, config)
    _synchronize(device)
    return {"seconds": time.perf_counter() - start, "shape": list(volume.shape), "steps": config.steps,
            "peak_gpu_gib": (torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None),
            "finite": bool(np.isfinite(result.denoised).all()),
            "guard_fell_back": (result.info.get("run", {}).get("guard") or {}).get("fell_back")}


def psnr_vs_steps(bundle: Bundle, ldct: np.ndarray, reference: np.ndarray, checkpoints: List[int],
                  config: AdaptConfig) -> Dict[str, float]:
    """PSNR after each checkpoint's teacher update, from one adaptation run to the last checkpoint."""
    norm = bundle.normalization
    scores: Dict[str, float] = {}

    def record(step, model):
        if step in checkpoints:
            out = apply_slicewise(model, ldct, config.infer_batch, to_input=norm.to_model, from_output=norm.to_hu)
            scores[str(step)] = psnr(out, reference)

    pretrained = denoise_array(ldct, bundle, config.with_(steps=0))
    scores["0"] = psnr(pretrained.denoised, reference)
    denoise_array(ldct, bundle, config.with_(steps=max(checkpoints), guard=False),
                  on_teacher_update=record)
    return scores


def oom_fallback(bundle: Bundle, volume: np.ndarray, device: torch.device) -> Dict[str, Any]:
    """Cap the process's GPU memory so that a batch of slices cannot fit; inference must still finish."""
    if device.type != "cuda":
        return {"applicable": False}
    norm = bundle.normalization
    messages: List[str] = []
    model = bundle.build_denoiser(device)
    reference = apply_slicewise(model, volume[:4], 4, to_input=norm.to_model, from_output=norm.to_hu)
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    apply_slicewise(model, volume[:1], 1, to_input=norm.to_model, from_output=norm.to_hu)
    one_slice = torch.cuda.max_memory_allocated(device)
    torch.cuda.set_per_process_memory_fraction(min(1.0, 1.5 * one_slice / total), device)
    try:
        torch.cuda.empty_cache()
        capped = apply_slicewise(model, volume[:4], 4, to_input=norm.to_model, from_output=norm.to_hu,
                                 progress=lambda event: event.message and messages.append(event.message))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
    return {"applicable": True, "messages": messages, "max_abs_diff_hu": float(np.abs(capped - reference).max()),
            "cap_gib": 1.5 * one_slice / 2**30}


def main(argv=None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="toy sizes (CPU, CI)")
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--bundle", type=Path, action="append", default=[],
                        help="measure these bundle folders instead of the shipped ones (repeatable)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    started = time.perf_counter()
    slices, size = (4, 64) if args.tiny else (100, 512)
    checkpoints = [2, 4, 6] if args.tiny else [200, 1000, 2000]
    base = AdaptConfig(device=args.device, period=2 if args.tiny else 20, steps=4 if args.tiny else 200)
    report: Dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                              "torch": torch.__version__, "bundles": {}}
    volume = volume_like_ct(slices, size)
    from SelfSupCTDenoiseLib.data.dataset import sample_paths
    import SimpleITK as sitk

    paths = sample_paths()
    ldct = sitk.GetArrayFromImage(sitk.ReadImage(str(paths["ldct"]))).astype(np.float32)
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(paths["ndct_denoised"]))).astype(np.float32)
    if args.tiny:
        ldct, reference = ldct[:2, :64, :64], reference[:2, :64, :64]
    for name, bundle in bundles(args).items():
        row = {"click_to_result": click_to_result(bundle, volume, base, device),
               "psnr_soft_vs_steps": psnr_vs_steps(bundle, ldct, reference, checkpoints, base),
               "oom_fallback": oom_fallback(bundle, volume, device)}
        report["bundles"][name] = row
        print(f"{name}: {json.dumps(row)}", flush=True)
    report["elapsed_s"] = time.perf_counter() - started
    print(f"total {report['elapsed_s']:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
