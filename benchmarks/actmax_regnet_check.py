"""Issue 24's independent check of activation maximisation's readable default, on a random RegNet.

torchvision's `regnet_y_400mf` with random weights (`torch.manual_seed(0)`); its BatchNorm statistics
are estimated on random batches: every BatchNorm's running statistics are reset and accumulated as a
plain average (`momentum=None`) over 4 forward passes in train mode of 32 uniform-noise 64x64 images
(normalised with ImageNet's mean and std), then the model is put in eval mode. Layer
`trunk_output.block2` (104 channels, 8x8 at 64x64 input).

For each channel, the readable default (`activation_maximization` with its default arguments:
Fourier parameterisation, decorrelated colours, transforms, best so far) against:

* the best of 64 uniform-noise images (the same noise for every channel): the channel's objective
  on each, the largest kept. Claim: at least 90 % of the channels end above it;
* its own start image (`steps=0`, the same seed): claim: no channel ends below it.

Prints the fraction, the number below the start, the median ratio to the noise, the time and the
load. `--simple` adds the Keras-style plain ascent for comparison.

Usage::

    .venv/bin/python benchmarks/actmax_regnet_check.py [--channels 104] [--steps 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torchvision

from convlens.inspect import activation_maximization
from convlens.models.hooks import truncated_forward

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet
LAYER, SIZE = "trunk_output.block2", 64


def random_regnet(seed: int = 0, batches: int = 4, batch: int = 32) -> torch.nn.Module:
    """`regnet_y_400mf`, random weights, BatchNorm statistics from uniform-noise batches, eval mode."""
    torch.manual_seed(seed)
    model = torchvision.models.regnet_y_400mf()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches
    g = torch.Generator().manual_seed(seed + 1)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model((torch.rand(batch, 3, SIZE, SIZE, generator=g) - mean) / std)
    return model.eval()


def noise_best(model: torch.nn.Module, objective: str, n: int = 64, seed: int = 2) -> torch.Tensor:
    """Per channel, the largest objective over `n` uniform-noise images: `(C,)`."""
    g = torch.Generator().manual_seed(seed)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        out = truncated_forward(
            model, LAYER, (torch.rand(n, 3, SIZE, SIZE, generator=g) - mean) / std
        )
    if objective == "neuron":
        return out[:, :, out.shape[2] // 2, out.shape[3] // 2].amax(0)
    return out.mean((2, 3)).amax(0)  # (C,)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--channels", type=int, default=104, help="the first N channels of the layer")
    ap.add_argument("--steps", type=int, default=None, help="default: the function's default")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--simple", action="store_true", help="also the Keras-style plain ascent")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = random_regnet()
    chans = list(range(args.channels))
    modes = [("readable default", {})] + ([("simple", {"simple": True})] if args.simple else [])
    for name, kw in modes:
        t0 = time.perf_counter()
        res = activation_maximization(
            model, LAYER, chans, size=SIZE, steps=args.steps, mean=MEAN, std=STD, **kw
        )
        seconds = time.perf_counter() - t0
        start = activation_maximization(
            model, LAYER, chans, size=SIZE, steps=0, mean=MEAN, std=STD, **kw
        ).values
        noise = noise_best(model, res.objective)[chans]
        above = (res.values > noise).float().mean().item()
        below = int((res.values < start).sum())
        ratio = (res.values / noise).median().item()
        print(
            f"{name}: objective {res.objective}, {len(chans)} channels, {res.history.shape[0]} steps: "
            f"{above:.1%} above the best of 64 noise images, {below} below their start, "
            f"median value/noise {ratio:.2f}; {seconds:.1f} s ({seconds / len(chans):.2f} s/channel), "
            f"load {os.getloadavg()[0]:.1f}, {args.threads} threads"
        )


if __name__ == "__main__":
    main()
