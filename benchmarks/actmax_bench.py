"""Activation maximisation: all channels as one batch (ours) against the Keras-style loop, one process.

The reference is the Keras `conv_filter_visualization.py` example written in PyTorch: one filter at
a time, the network cut at the layer (a graph truncated with torchvision's
`create_feature_extractor`, as the Keras example builds a model that ends at the layer; our hooks
are not used), the mean activation of the filter, its gradient with respect to the input only,
divided by its L2 norm, plain ascent, 20 steps from grey plus noise.

Ours runs the same steps, size and layer, with its defaults (float32; on a CPU, chunks of images
sized to the cache), which is what `convlens visualize RUN actmax` runs:

* `simple=True`: the same algorithm, all channels batched (the fair comparison; the headline ratio);
* the readable default (Fourier parameterisation, colour decorrelation, random transforms, Adam),
  also batched, with the same number of steps;
* extra lines that separate the levers: ours `simple` under `precision="bf16"`, and the Keras
  loop itself under bfloat16 autocast (what bf16 alone gives the one-filter-at-a-time loop).

Cases: `--channels` (default 16, issue 15) channels of ResNet-20's `layer3` at 32x32 and of
VGG-16's `features.10` (conv3_1) at 64x64. Random weights, eval mode: the time does not depend on the training.
Prints channels per second for each and the ratios; for `simple` it also checks that ours and the
reference produce the same images (largest absolute pixel difference).

Usage::

    .venv/bin/python benchmarks/actmax_bench.py [--cases resnet20,vgg16] [--channels 16]
        [--threads 2] [--device cpu] [--repeat 1]
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch
from torchvision.models.feature_extraction import create_feature_extractor

from convlens import models
from convlens.inspect import activation_maximization

CASES = {  # model: (layer, image size)
    "resnet20": ("layer3", 32),
    "vgg16": ("features.10", 64),
}
STEPS = 20
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # CIFAR-10


def cut_at(model: torch.nn.Module, layer: str) -> torch.nn.Module:
    """The network ending at `layer`, built without our hooks: torchvision's graph truncation, or for
    VGG (whose `forward` slices its classifier, which FX cannot trace) the prefix of `features`."""
    if layer.startswith("features."):
        return torch.nn.Sequential(*model.features[: int(layer.split(".")[1]) + 1])  # type: ignore[index]
    fx = create_feature_extractor(model, {layer: "out"})
    return torch.nn.Sequential(fx, _Out())


class _Out(torch.nn.Module):
    def forward(self, d: dict[str, torch.Tensor]) -> torch.Tensor:
        return d["out"]


def keras_loop(
    cut: torch.nn.Module, channels: list[int], size: int, device: str, bf16: bool = False
) -> torch.Tensor:
    """One filter at a time, as the Keras example; same start images as ours (seed + channel)."""
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    step = (3 * size * size) ** 0.5 / 255  # one grey level per pixel per step (root-mean-square)
    out = []
    for c in channels:
        g = torch.Generator().manual_seed(c)
        x = ((128 + 20 * torch.rand((1, 3, size, size), generator=g)) / 255).to(device)
        for _ in range(STEPS):
            x.requires_grad_(True)
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
                act = cut((x - mean) / std)
            loss = act[0, c].float().mean()
            (grad,) = torch.autograd.grad(loss, x)
            x = (x + step * grad / (grad.norm() + 1e-12)).detach()
        out.append(x.clamp(0, 1).cpu())
    return torch.cat(out)


def timed(fn):  # type: ignore[no-untyped-def]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default="resnet20,vgg16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=1, help="rounds of every case")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n = args.channels
    print(f"torch {torch.__version__}, {args.threads} threads, device {args.device}; "
          f"{n} channels, {STEPS} steps")  # fmt: skip
    channels = list(range(n))
    for name in args.cases.split(",") * args.repeat:
        layer, size = CASES[name]
        torch.manual_seed(0)
        model = models.create(name, num_classes=10, in_channels=3).to(args.device).eval()
        for p in model.parameters():
            p.requires_grad_(
                False
            )  # the Keras example differentiates with respect to the input only
        common: dict = dict(size=size, steps=STEPS, mean=MEAN, std=STD, seed=0, device=args.device)
        # warm-up (allocator, oneDNN primitive caches, keyed by shape): the loop on 2 channels, ours
        # one step at its own batch size
        cut = cut_at(model, layer)
        keras_loop(cut, [0, 1], size, args.device)
        keras_loop(cut, [0, 1], size, args.device, bf16=True)
        for precision in ("fp32", "bf16"):
            warm = {**common, "steps": 1}
            activation_maximization(
                model, layer, channels, simple=True, precision=precision, **warm
            )
        ref, t_ref = timed(partial(keras_loop, cut, channels, size, args.device))
        ours = partial(activation_maximization, model, layer, channels, **common)
        simple, t_simple = timed(partial(ours, simple=True))
        _, t_read = timed(ours)
        simple16, t_simple16 = timed(partial(ours, simple=True, precision="bf16"))
        _, t_ref16 = timed(partial(keras_loop, cut, channels, size, args.device, bf16=True))
        print(f"\n{name} {layer} at {size}x{size}:")
        rows = [
            ("Keras-style loop, one channel at a time", t_ref),
            ("ours, simple (same algorithm, batched)", t_simple),
            ("ours, readable (Fourier+transforms+Adam)", t_read),
            ("extra: ours, simple, precision=bf16", t_simple16),
            ("extra: Keras-style loop under bf16 autocast", t_ref16),
        ]
        for label, t in rows:
            print(f"  {label:44s} {n / t:8.2f} channels/s  {t:7.1f} s  {t_ref / t:5.1f}x")
        print(f"  ours simple (default) vs the bf16 loop: {t_ref16 / t_simple:.1f}x")
        for label, imgs in [("default", simple.images), ("bf16", simple16.images)]:
            diff = (imgs - ref).flatten(1).abs().amax(1)  # (n,) per channel
            print(f"  simple ({label}) vs Keras loop: {int((diff <= 1e-3).sum())}/{n} images "
                  f"within 1e-3 (median max-diff {float(diff.median()):.1e}); a rounding difference "
                  "that flips a ReLU is amplified by the normalised step")  # fmt: skip


if __name__ == "__main__":
    main()
