"""`demo`: the main job on the embedded default — the shipped sample LDCT, the shipped bundle."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "denoise the shipped sample LDCT with the shipped bundle; write NRRDs, a PNG and PSNR/SSIM"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder [out/demo]")
    parser.add_argument("--bundle", type=Path, help="[shipped 'paper' bundle on CUDA, 'lite' on CPU]")
    parser.add_argument("--steps", type=int, help="adaptation steps [the default]")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")


def run(args: argparse.Namespace) -> int:
    import SimpleITK as sitk

    from ..bench.figures import side_by_side
    from ..data.dataset import sample_paths
    from ..engine.bundle import default_bundle_for_device, load_bundle
    from ..engine.config import AdaptConfig
    from ..engine.inference import resolve_device
    from ..engine.noise_level import describe_run_estimate
    from ..engine.run import denoise_array
    from ..engine.strength import cast_like_input
    from ..files.provenance_io import set_image_fields, write_sidecar
    from ..files.volumes import image_like, read_volume, write_volume
    from ..quality.metrics import compare
    from .console import TqdmProgress

    paths = sample_paths()
    config = AdaptConfig(device=args.device, **({"steps": args.steps} if args.steps is not None else {}))
    bundle = load_bundle(args.bundle or default_bundle_for_device(resolve_device(config.device).type))
    image = read_volume(paths["ldct"])
    ldct = sitk.GetArrayFromImage(image).astype("float32")
    ndct = sitk.GetArrayFromImage(read_volume(paths["ndct"])).astype("float32")
    ndct_denoised = sitk.GetArrayFromImage(read_volume(paths["ndct_denoised"])).astype("float32")
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
    for title, reference in (("against the normal-dose CT (it carries ~28 HU of its own noise, which the tool "
                              "also removes)", ndct),
                             ("against the normal-dose CT denoised with BM3D (all noise counts as noise)",
                              ndct_denoised)):
        print(f"\n{title}\n{'':34} {'PSNR soft':>9} {'SSIM soft':>9} {'PSNR full':>9} {'SSIM full':>9}")
        for label, array in (("LDCT (input)", ldct), ("pretrained only (no adaptation)", pretrained.denoised),
                             ("adapted (this run)", result.denoised)):
            m = compare(array, reference)
            print(f"{label:34} {m['psnr_soft']:9.2f} {m['ssim_soft']:9.4f} {m['psnr_full']:9.2f} {m['ssim_full']:9.4f}")
    guard = result.info["run"].get("guard") or {}
    if guard.get("fell_back"):
        print("note: the guard judged the adaptation unhelpful and used the pretrained model")
    z = len(ldct) // 2
    png = side_by_side([("LDCT (simulated quarter dose)", ldct[z], "ct"), ("denoised (adapted)", result.denoised[z], "ct"),
                        ("noise map (LDCT - denoised)", result.noise_map[z], "noise"), ("NDCT reference", ndct[z], "ct")],
                       args.out / "sample_side_by_side.png",
                       title=f"SelfSupCTDenoise demo, slice {z} (soft-tissue window W400/L40)",
                       caption="Rendered with matplotlib from the demo's output files; research use, not for diagnosis.")
    print(f"\nwrote {outputs['denoised']}, {outputs['noise map']} and {png} "
          f"({result.info['device']}, {result.info['elapsed_s']:.0f} s)")
    return 0
