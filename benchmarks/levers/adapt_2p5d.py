"""2.5D adaptation (docs/LEVERS.md): the paper's student/teacher loop on stacks of three adjacent
slices, the centre as target. Targets for the three channels come from the teacher on five-slice
stacks; pseudo-noise is the engine's (fitted to the input, at its estimated level), drawn
independently per slice - true of this simulation, not of overlapping scanner reconstructions.

    OMP_NUM_THREADS=1 python benchmarks/levers/adapt_2p5d.py ts_chest:d12_hann,... [--init out/levers/lite_2p5d.pt]
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
import torch.nn.functional as F

from common import Denoiser2p5D, neighbour_stacks, read_case


def main() -> None:
    from SelfSupCTDenoiseLib.engine.bundle import load_bundle
    from SelfSupCTDenoiseLib.engine.config import AdaptConfig
    from SelfSupCTDenoiseLib.engine.run import estimate_input_noise, model_view, prepare_pseudo_pairs
    from SelfSupCTDenoiseLib.quality.metrics import compare

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("cases", help="subject:tag,...")
    parser.add_argument("--bundle", default=None)
    parser.add_argument("--dataset", default="data/sim")
    parser.add_argument("--protocol", default="clean")
    parser.add_argument("--init", default=None, help="2.5D weights from pretrain_2p5d.py [neighbours at 0]")
    parser.add_argument("--neighbour-lr", type=float, default=1e-3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    bundle = load_bundle(args.bundle)
    norm = bundle.normalization
    config = AdaptConfig(threads=1)
    for case in args.cases.split(","):
        ldct, reference, _ = read_case(args.dataset, case, args.protocol)
        generator = torch.Generator().manual_seed(config.seed)
        torch.manual_seed(config.seed)
        estimate = estimate_input_noise(ldct, bundle, config)
        _, source = prepare_pseudo_pairs(ldct, bundle, config, torch.device("cpu"), generator, estimate)
        volume = torch.from_numpy(norm.to_model(model_view(ldct)[0])).float()
        slices, height, width = volume.shape
        p = config.patch_size
        model = Denoiser2p5D(bundle.build_denoiser(torch.device("cpu"))).eval()
        if args.init:
            model.load_state_dict(torch.load(args.init))
        teacher = copy.deepcopy(model).requires_grad_(False)
        student = copy.deepcopy(model).train()
        optimizer = torch.optim.Adam([{"params": student.net.parameters(), "lr": config.lr},
                                      {"params": [student.side], "lr": args.neighbour_lr}])
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=2)

        def randint(high):
            return int(torch.randint(high, (1,), generator=generator))

        start, period_losses = time.time(), []
        for step in range(1, config.steps + 1):
            patches = []
            for _ in range(config.batch_size):
                z, y, x = randint(slices), randint(height - p + 1), randint(width - p + 1)
                five = neighbour_stacks(volume[:, y:y + p, x:x + p], [z], reach=2)[0]
                five = torch.rot90(five, randint(4), (-2, -1))
                if randint(2):
                    five = five.flip(-1)
                if randint(2):
                    five = five.flip(0)
                patches.append(five)
            five = torch.stack(patches)
            with torch.no_grad():
                target = torch.cat([teacher(five[:, k:k + 3]) for k in range(3)], 1)
            noise = torch.cat([source.draw(None, (len(five), 1, p, p), "cpu") for _ in range(3)], 1)
            loss = F.mse_loss(student(target + noise), target[:, 1:2])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            period_losses.append(loss.item())
            if step % config.period == 0 or step == config.steps:
                teacher.load_state_dict(student.state_dict())
                scheduler.step(sum(period_losses) / len(period_losses))
                period_losses = []
        with torch.no_grad():
            output = torch.cat([teacher(neighbour_stacks(volume, [i])) for i in range(slices)])[:, 0]
        scores = compare(norm.to_hu(output.numpy()), reference)
        print(f"{case} {args.protocol} 2.5D{' pre-trained' if args.init else ''}: PSNR soft {scores['psnr_soft']:.2f} "
              f"edges {scores['psnr_edges']:.2f}  neighbour |w| {teacher.side.abs().mean():.4f}  "
              f"{time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
