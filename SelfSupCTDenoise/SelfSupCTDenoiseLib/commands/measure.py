"""`measure`: noise SD and mean in regions of an input and its denoised output, HU shift, method noise."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "noise SD/mean (HU) in regions of the input, the output and the noise map; HU shift; method noise"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="the noisy input volume")
    parser.add_argument("output", type=Path, help="its denoised output")
    parser.add_argument("--region", action="append", default=[], metavar="BOX",
                        help="z0:z1,y0:y1,x0:x1 in voxels, or append mm (from the first voxel); repeatable "
                             "[uniform soft-tissue regions found automatically]")
    parser.add_argument("--json", type=Path, help="also write the numbers as JSON here")


def run(args: argparse.Namespace) -> int:
    import SimpleITK as sitk

    from ..errors import InputError
    from ..io import read_volume
    from ..quality import parse_box
    from ..trust import format_report, trust_report

    image = read_volume(args.input)
    source = sitk.GetArrayFromImage(image).astype("float32")
    result = sitk.GetArrayFromImage(read_volume(args.output)).astype("float32")
    if source.shape != result.shape:
        raise InputError(f"{args.input} and {args.output} differ in size.")
    boxes = [parse_box(text, image.GetSpacing()) for text in args.region]
    report = trust_report(source, result, image.GetSpacing(), boxes)
    print(f"{args.output.name} against {args.input.name}:")
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0
