"""Speed benchmark (not a test): seconds per 512x512 slice forward and per adaptation step, per profile.

    python benchmarks/speed.py [--device cpu|cuda] [--repeats 3] [--out docs/SPEED.md]

An adaptation step = teacher forward (targets) + student forward/backward + Adam step on
`batch_size` patches of 64x64, as in adapt.adapt. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "SelfSupCTDenoise"))

from SelfSupCTDenoiseLib.config import PROFILES  # noqa: E402
from SelfSupCTDenoiseLib.networks.redcnn import RedCNN  # noqa: E402
from SelfSupCTDenoiseLib.networks.unet import UNet  # noqa: E402


def timed(fn, repeats: int, device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = []
    for name in ("lite", "paper"):
        profile = PROFILES[name]
        denoiser = RedCNN(**profile.denoiser_kwargs()).to(device)
        teacher = RedCNN(**profile.denoiser_kwargs()).to(device).eval()
        noise_model = UNet(**profile.noise_model_kwargs()).to(device).eval()
        slice_ = torch.randn(1, 1, 512, 512, device=device)
        patches = torch.randn(args.batch_size, 1, 64, 64, device=device)
        optimizer = torch.optim.Adam(denoiser.parameters(), lr=1e-4)

        def forward():
            with torch.no_grad():
                denoiser(slice_)

        def noise_forward():
            with torch.no_grad():
                noise_model(slice_)

        def step():
            with torch.no_grad():
                target = teacher(patches)
            loss = torch.nn.functional.mse_loss(denoiser(patches + 0.01 * torch.randn_like(patches)), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        rows.append((name, sum(p.numel() for p in denoiser.parameters()), timed(forward, args.repeats, device),
                     timed(step, args.repeats, device), timed(noise_forward, args.repeats, device)))
    device_text = (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"CPU, {torch.get_num_threads()} threads ({platform.processor() or platform.machine()})")
    lines = [f"Measured with `python benchmarks/speed.py --device {args.device}` on {device_text}, torch "
             f"{torch.__version__}, {time.strftime('%Y-%m-%d')}; median of {args.repeats}.", "",
             "| profile | RED-CNN parameters | 512x512 slice forward (s) | adaptation step, "
             f"{args.batch_size} x 64x64 patches (s) | noise model, 512x512 forward (s) |",
             "|---|---|---|---|---|"]
    lines += [f"| {n} | {p:,} | {f:.3f} | {s:.3f} | {u:.3f} |" for n, p, f, s, u in rows]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text("# Speed\n\n" + text + "\n")


if __name__ == "__main__":
    main()
