"""`demo`: the main job on the embedded default — the shipped sample LDCT, the shipped bundle."""

from __future__ import annotations

import argparse
from pathlib import Path

#: Side of the full-resolution crops (pixels), centred on the slice.
CROP_PX = 96

HELP = ("denoise the shipped sample LDCT with the shipped bundle beside classical filters; write NRRDs, PNGs "
        "and PSNR/SSIM against a reference no compared method made")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder [out/demo]")
    parser.add_argument("--bundle", type=Path, help="[what 'auto' picks: the shipped 'lite']")
    parser.add_argument("--steps", type=int, help="adaptation steps [the default]")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import SimpleITK as sitk

    from ..bench.benchmark import noise_peak, texture_left
    from ..bench.figures import side_by_side
    from ..data.dataset import sample_paths
    from ..engine.bundle import default_bundle_for_device, load_bundle
    from ..engine.config import AdaptConfig
    from ..engine.inference import resolve_device
    from ..engine.noise_level import describe_run_estimate
    from ..engine.run import denoise_array
    from ..engine.strength import STRENGTH_LEVELS, cast_like_input, strength_blend
    from ..files.provenance_io import set_image_fields, write_sidecar
    from ..files.volumes import image_like, read_volume, write_volume
    from ..quality.metrics import compare
    from ..quality.regions import uniform_tissue_mask
    from .console import TqdmProgress

    paths = sample_paths()
    config = AdaptConfig(device=args.device, **({"steps": args.steps} if args.steps is not None else {}))
    bundle = load_bundle(args.bundle or default_bundle_for_device(resolve_device(config.device).type))
    image = read_volume(paths["ldct"])
    ldct = sitk.GetArrayFromImage(image).astype("float32")
    reference = sitk.GetArrayFromImage(read_volume(paths["ndct_denoised"])).astype("float32")
    print(f"sample: {paths['ldct'].name} {image.GetSize()} voxels, spacing {image.GetSpacing()} mm; "
          f"bundle: {bundle.name} ({bundle.profile.name}); {config.steps} adaptation steps")
    progress = TqdmProgress()
    pretrained = denoise_array(ldct, bundle, config.with_(steps=0))
    result = denoise_array(ldct, bundle, config, progress)
    progress.close()
    args.out.mkdir(parents=True, exist_ok=True)
    outputs = {"denoised": args.out / "sample_denoised.nrrd", "noise map": args.out / "sample_noise_map.nrrd"}
    for (name, path), array in zip(outputs.items(), (cast_like_input(result.denoised, "int16"), result.noise_map)):
        written = image_like(array, image)
        set_image_fields(written, result.info)
        write_volume(written, path)
    write_sidecar(outputs["denoised"], result.info)
    run = result.info["run"]
    print("\n" + describe_run_estimate(run))
    rows = [("LDCT (input)", ldct, None)] + classical_filters(ldct, image.GetSpacing(), bundle, config) + [
        ("pretrained only (no adaptation)", pretrained.denoised, None),
        ("adapted (this run)", result.denoised, result.info["elapsed_s"])] + [
        (f"  adapted at strength {name} ({value})", strength_blend(ldct, result.full_strength, value), None)
        for name, value in STRENGTH_LEVELS.items() if value != config.strength]
    uniform = uniform_tissue_mask(reference)
    ndct = sitk.GetArrayFromImage(read_volume(paths["ndct"])).astype("float32")
    ndct_sd = float(np.std((ndct - reference)[uniform])) if uniform.any() else None
    input_peak = noise_peak(ldct - reference, reference)
    print("\nAgainst the normal-dose CT denoised by methods not compared here (3D non-local means + total "
          "variation):\nevery kind of noise counts as noise, the normal-dose scan's own included.")
    print(f"{'':36} {'PSNR soft':>9} {'PSNR edges':>10} {'SSIM soft':>9} {'noise SD (HU)':>13} {'noise/NDCT':>10} "
          f"{'NPS peak':>8} {'seconds':>7}")
    for label, array, seconds in rows:
        if array is None:
            print(f"{label:36} {seconds}")
            continue
        m = compare(array, reference)
        noise_sd = float(np.std((array - reference)[uniform])) if uniform.any() else float("nan")
        left = texture_left(array, ldct, reference, uniform, ndct_sd, input_peak)
        print(f"{label:36} {m['psnr_soft']:9.2f} {m['psnr_edges']:10.2f} {m['ssim_soft']:9.4f} {noise_sd:13.1f} "
              f"{left['noise_vs_ndct'] or float('nan'):10.2f} {left['nps_peak_ratio'] or float('nan'):8.2f}"
              + ("" if seconds is None else f" {seconds:7.0f}"))
    print(f"PSNR edges: over the reference's strongest edges only (smoothing cannot win it). Noise SD: of (image - "
          f"reference) in uniform soft tissue;\nnoise/NDCT: that SD over the normal-dose scan's own ({ndct_sd:.1f} HU; "
          "about 1 looks like a normal-dose scan, well below 1 smoother than one);\nNPS peak: the peak frequency of "
          "what remains over the input noise's (below 1: coarser, waxy grain). Strength: a blend of the\nadapted "
          "result with the input (the panel's presets; --strength on the command line).")
    guard = run.get("guard") or {}
    if guard.get("fell_back"):
        print("note: the guard judged the adaptation unhelpful and used the pretrained model")
    z = len(ldct) // 2
    png = side_by_side([("LDCT (simulated quarter dose)", ldct[z], "ct"), ("denoised (adapted)", result.denoised[z], "ct"),
                        ("noise map (LDCT - denoised)", result.noise_map[z], "noise"),
                        ("reference (NDCT, denoised)", reference[z], "ct")],
                       args.out / "sample_side_by_side.png",
                       title=f"SelfSupCTDenoise demo, slice {z} (soft-tissue window W400/L40)",
                       caption="Rendered with matplotlib from the demo's output files; research use, not for diagnosis.")
    crop = central_crop(reference[z], CROP_PX)
    crops = side_by_side([(label, array[z][crop], "ct") for label, array, _ in rows if array is not None]
                         + [("reference", reference[z][crop], "ct")], args.out / "sample_crops.png",
                         title=f"Full-resolution {CROP_PX}x{CROP_PX}-pixel crops, slice {z}: each square is one voxel "
                               "(W400/L40)", panel_inches=4.0, columns=3,
                         caption="Research use, not for diagnosis.")
    print(f"\nwrote {outputs['denoised']}, {outputs['noise map']}, {png} and {crops} "
          f"({result.info['device']}, {result.info['elapsed_s']:.0f} s)")
    return 0


def classical_filters(ldct, spacing, bundle, config):
    """(label, output or None, seconds or a note) of the benchmark's classical rows on the sample: Slicer's
    curvature anisotropic diffusion, and BM3D given the same reference-free noise estimate the
    adaptation uses, where the optional bm3d package is installed (free for non-commercial use only)."""
    import time

    from ..bench.benchmark import anisotropic_diffusion, bm3d_with_psd
    from ..engine.run import estimate_input_noise

    context = {"spacing": spacing, "bundle": bundle, "estimate": estimate_input_noise(ldct, bundle, config)}
    rows = []
    for label, method in (("anisotropic diffusion (Slicer)", anisotropic_diffusion),
                          ("BM3D given the estimated noise", bm3d_with_psd)):
        started = time.perf_counter()
        try:
            output = method(ldct, context)
        except ImportError:
            rows.append((label, None, "not installed (pip install bm3d==4.0.3; non-commercial licence)"))
            continue
        rows.append((label, output, time.perf_counter() - started))
    return rows


def central_crop(image, size: int):
    """Index of the central size x size square of a 2D image (the whole axis where it is smaller)."""
    return tuple(slice(max(0, (n - size) // 2), max(0, (n - size) // 2) + min(n, size)) for n in image.shape)
