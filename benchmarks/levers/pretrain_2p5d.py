"""N2C pre-training of a 2.5D `lite` from the shipped 2D one (docs/LEVERS.md): three adjacent LDCT
slices of the ts_abdomen volume of a training-only dataset (`simulate --out data/sim_train ...`, the
six protocols of the shipped bundle) -> the centre NDCT slice. rt_chest is a single slice: left out.

    OMP_NUM_THREADS=1 python benchmarks/levers/pretrain_2p5d.py --steps 3000 --out out/levers/lite_2p5d.pt
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common import Denoiser2p5D, neighbour_stacks

TAGS = ("d25_hann", "d50_hann", "d18_hann", "d25_shepplogan", "d50_shepplogan", "d35_hamming")


def main() -> None:
    import SimpleITK as sitk

    from SelfSupCTDenoiseLib.engine.bundle import load_bundle

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", default=None, help="2D bundle to start from [shipped lite]")
    parser.add_argument("--dataset", default="data/sim_train")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    bundle = load_bundle(args.bundle)
    norm = bundle.normalization

    def read(name):
        path = Path(args.dataset) / "ts_abdomen" / name
        return torch.from_numpy(norm.to_model(sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)))

    ndct = read("ndct.nrrd")
    ldct = torch.stack([read(f"ldct_{tag}.nrrd") for tag in TAGS])  # (protocols, S, H, W)
    _, slices, height, width = ldct.shape
    patch, batch = 64, 16
    model = Denoiser2p5D(bundle.build_denoiser(torch.device("cpu"))).train()
    # the 2D weights at the shipped bundle's rate, the new neighbour weights faster
    optimizer = torch.optim.Adam([{"params": model.net.parameters(), "lr": 1e-4},
                                  {"params": [model.side], "lr": 1e-3}])
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.steps)
    generator = torch.Generator().manual_seed(1)

    def randint(high):
        return int(torch.randint(high, (1,), generator=generator))

    start, losses = time.time(), []
    for step in range(1, args.steps + 1):
        inputs, targets = [], []
        for _ in range(batch):
            protocol, z = randint(len(TAGS)), randint(slices)
            y, x = randint(height - patch + 1), randint(width - patch + 1)
            crop = (slice(None), slice(y, y + patch), slice(x, x + patch))
            stack = torch.cat([neighbour_stacks(ldct[protocol][crop], [z])[0], ndct[crop][z:z + 1]])
            stack = torch.rot90(stack, randint(4), (-2, -1))
            if randint(2):
                stack = stack.flip(-1)
            if randint(2):
                stack = stack[[2, 1, 0, 3]]  # through-plane flip
            inputs.append(stack[:3])
            targets.append(stack[3:])
        loss = F.l1_loss(model(torch.stack(inputs)), torch.stack(targets))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % 250 == 0 or step == args.steps:
            print(f"{step} loss {np.mean(losses[-250:]):.5f} neighbour |w| {model.side.detach().abs().mean():.4f} "
                  f"{time.time() - start:.0f} s", flush=True)
            torch.save(model.state_dict(), args.out)


if __name__ == "__main__":
    main()
