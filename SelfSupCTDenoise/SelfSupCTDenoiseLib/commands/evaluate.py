"""`evaluate`: PSNR/SSIM (soft-tissue window and full range) and RMSE of outputs against references."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import InputError

HELP = "compare denoised volumes with reference volumes (PSNR/SSIM in the [-160, 240] HU window and full range)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="*", type=Path, help="volumes to evaluate against --reference")
    parser.add_argument("--reference", type=Path, help="the reference (e.g. NDCT) for all IMAGES")
    parser.add_argument("--pair", nargs=2, action="append", default=[], metavar=("IMAGE", "REFERENCE"),
                        type=Path, help="an image and its own reference; repeat")
    parser.add_argument("--input", type=Path, help="the noisy input, to also report the HU shift and method noise")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")


def run(args: argparse.Namespace) -> int:
    import SimpleITK as sitk

    from ..files.volumes import read_volume
    from ..quality.metrics import compare
    from ..quality.trust import format_report, trust_report

    pairs = [(image, args.reference) for image in args.images] + [tuple(p) for p in args.pair]
    if not pairs or any(ref is None for _, ref in pairs):
        raise InputError("Give IMAGES with --reference REF, or --pair IMAGE REFERENCE (repeatable).")
    source, spacing = None, None
    if args.input:
        input_image = read_volume(args.input)
        source, spacing = sitk.GetArrayFromImage(input_image).astype("float32"), input_image.GetSpacing()
    rows = []
    for image_path, reference_path in pairs:
        image = sitk.GetArrayFromImage(read_volume(image_path))
        reference = sitk.GetArrayFromImage(read_volume(reference_path))
        if image.shape != reference.shape:
            raise InputError(f"{image_path} {image.shape[::-1]} and {reference_path} {reference.shape[::-1]} "
                             "differ in size.")
        row = {"image": str(image_path), "reference": str(reference_path), **compare(image, reference)}
        if source is not None:
            row["trust"] = trust_report(source, image, spacing)
        rows.append(row)
    print(f"{'image':<40} {'PSNR soft':>9} {'SSIM soft':>9} {'PSNR full':>9} {'SSIM full':>9} {'RMSE HU':>8}")
    for row in rows:
        print(f"{Path(row['image']).name:<40} {row['psnr_soft']:9.2f} {row['ssim_soft']:9.4f} "
              f"{row['psnr_full']:9.2f} {row['ssim_full']:9.4f} {row['rmse_hu']:8.2f}")
        if "trust" in row:
            print(format_report(row["trust"]))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0
