"""The adaptation step in the default layout and in channels_last (not a test; issue #28, item 3).

    python benchmarks/adapt_layout.py [--threads 2,1] [--repeats 5] [--json docs/adapt_layout.json]

One adaptation step as a run does it (`engine/adapt.py`): the teacher's forward on a batch of 16
patches of 64x64, the student's forward and backward on them plus pseudo-noise, Adam's step; patches
cut from the real LIDC-IDRI slice of Testing/data, with the shipped lite bundle. The two layouts run
interleaved in one process (A B A B ...), so the machine's load hits both alike; printed per thread
count: the median seconds per step of each and their ratio. Training in channels_last changes the
rounding of the adaptation (up to 1.1 HU over 200 steps, docs/SPEED.md), so it is worth a quality
check on the validation cases only if it is clearly faster.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "SelfSupCTDenoise"))
SLICE = ROOT / "Testing" / "data" / "real_ct" / "lidc_0314" / "000138.dcm"


def patches(normalization, batch: int, size: int):
    """`batch` patches of the real slice, in the bundle's normalisation, from fixed corners."""
    import numpy as np
    import torch

    from engines import read_slice

    model = normalization.to_model(read_slice(SLICE))
    corners = np.random.default_rng(0).integers(96, 512 - 96 - size, (batch, 2))
    return torch.from_numpy(np.stack([model[y:y + size, x:x + size] for y, x in corners])[:, None].copy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="2,1")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds of 5 steps per layout")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import SelfSupCTDenoiseLib  # noqa: F401  (before torch: the OpenMP wait policy)
    import torch
    import torch.nn.functional as F

    from SelfSupCTDenoiseLib.engine.bundle import load_bundle

    bundle = load_bundle()
    net = bundle.build_denoiser()
    x = patches(bundle.normalization, 16, 64)

    def trainer(channels_last: bool):
        student = copy.deepcopy(net).train().requires_grad_(True)
        teacher = copy.deepcopy(net).eval().requires_grad_(False)
        batch = x
        if channels_last:
            student, teacher = (m.to(memory_format=torch.channels_last) for m in (student, teacher))
            batch = x.contiguous(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(student.parameters(), lr=1e-4)
        generator = torch.Generator().manual_seed(0)

        def step():
            with torch.no_grad():
                target = teacher(batch)
            noisy = target + 0.02 * torch.randn(target.shape, generator=generator)
            loss = F.mse_loss(student(noisy), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return step

    results = []
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        steps = {False: trainer(False), True: trainer(True)}
        for step in steps.values():  # untimed: allocation, oneDNN's kernels
            step()
        times = {False: [], True: []}
        for _ in range(args.repeats):
            for layout, step in steps.items():
                start = time.perf_counter()
                for _ in range(5):
                    step()
                times[layout].append((time.perf_counter() - start) / 5)
        default, channels_last = statistics.median(times[False]), statistics.median(times[True])
        results.append({"threads": threads, "default_s": round(default, 4), "channels_last_s": round(channels_last, 4),
                        "channels_last_over_default": round(channels_last / default, 3),
                        "load": round(os.getloadavg()[0], 2)})
        print(json.dumps(results[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                                         "torch": torch.__version__, "batch": 16, "patch": 64,
                                         "rows": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
