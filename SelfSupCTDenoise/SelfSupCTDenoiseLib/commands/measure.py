"""`measure`: the input's reference-free noise estimate; with a denoised output, noise SD and mean in
regions of both, HU shift, method noise."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = ("the input's noise level and texture (no reference needed); with its denoised output: noise SD/mean (HU) "
        "in regions of the input, the output and the noise map, HU shift, method noise")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="the noisy input volume")
    parser.add_argument("output", type=Path, nargs="?", help="its denoised output (optional)")
    parser.add_argument("--bundle", type=Path, help="model bundle whose training noise texture anchors the "
                                                    "estimate [the shipped 'lite' bundle]")
    parser.add_argument("--region", action="append", default=[], metavar="BOX",
                        help="z0:z1,y0:y1,x0:x1 in voxels, or append mm (from the first voxel); repeatable "
                             "[uniform soft-tissue regions found automatically]")
    parser.add_argument("--json", type=Path, help="also write the numbers as JSON here")


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    import SimpleITK as sitk

    from ..engine.bundle import default_bundle_dir, load_bundle
    from ..engine.config import AdaptConfig
    from ..engine.noise_level import describe_estimate
    from ..engine.run import estimate_input_noise
    from ..errors import InputError
    from ..files.volumes import read_volume
    from ..quality.regions import parse_box
    from ..quality.trust import format_report, trust_report

    if args.output is None and args.region:
        raise InputError("--region needs the denoised output as the second argument.")
    image = read_volume(args.input)
    source = sitk.GetArrayFromImage(image).astype("float32")
    # the same estimate a denoising run makes (its pseudo-noise level and texture)
    estimate = estimate_input_noise(source, load_bundle(args.bundle or default_bundle_dir("lite")), AdaptConfig())
    print(f"{args.input.name}: {describe_estimate(estimate.std_hu, estimate.sharpness)}")
    report = {"input_noise_estimate": asdict(estimate)}
    if args.output is not None:
        result = sitk.GetArrayFromImage(read_volume(args.output)).astype("float32")
        if source.shape != result.shape:
            raise InputError(f"{args.input} and {args.output} differ in size.")
        boxes = [parse_box(text, image.GetSpacing()) for text in args.region]
        report.update(trust_report(source, result, image.GetSpacing(), boxes))
        print(f"{args.output.name} against {args.input.name}:")
        print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0
