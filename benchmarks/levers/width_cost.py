"""What a wider `lite` costs (docs/LEVERS.md section 8): seconds per 512x512 slice forward and per
adaptation step of RED-CNN at 32 and 48 channels, measured interleaved in one process at one thread
(the speed benchmark's own `network_work`), so the ratio holds on a shared machine.

    OMP_NUM_THREADS=1 python benchmarks/levers/width_cost.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from speed import network_work  # noqa: E402

from SelfSupCTDenoiseLib.engine import inference  # noqa: E402
from SelfSupCTDenoiseLib.engine.networks.redcnn import RedCNN  # noqa: E402

WIDTHS = (32, 48)


def work(channels: int):
    student, teacher = RedCNN(channels, 5), RedCNN(channels, 5).eval()
    one_slice = torch.rand(1, 1, 512, 512).contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(student.parameters(), 1e-4)
    return network_work(student, teacher, inference.cpu_layout(teacher), one_slice, torch.rand(16, 1, 64, 64), optimizer)


def main() -> None:
    torch.set_num_threads(1)
    jobs = {c: dict(zip(("forward", "step"), work(c))) for c in WIDTHS}
    times = {(c, kind): [] for c in WIDTHS for kind in ("forward", "step")}
    for _ in range(5):
        for c in WIDTHS:
            for kind, fn in jobs[c].items():
                start = time.perf_counter()
                fn()
                times[(c, kind)].append(time.perf_counter() - start)
    median = {key: statistics.median(values[1:]) for key, values in times.items()}  # the first is warm-up
    for kind in ("forward", "step"):
        print(f"{kind}: " + ", ".join(f"{c} ch {median[(c, kind)]:.3f} s" for c in WIDTHS)
              + f"; ratio {median[(WIDTHS[1], kind)] / median[(WIDTHS[0], kind)]:.2f}")


if __name__ == "__main__":
    main()
