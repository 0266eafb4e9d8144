"""Activation maximisation's readable default: this tree's against another tree's (the old default).

Two questions, for each case:

* **time per channel** of the readable default (all requested channels as one batch, default steps),
  on a trained LeNet-5 at 28x28 (its last convolution, `conv2`) and ResNet-20 at 32x32 (`layer3`; a
  run given with `--resnet20-run`, else random weights: the time does not depend on the training);
* **do the images of different channels differ?** the mean pairwise Pearson correlation of the
  synthesised images of a layer's channels (lower: more distinct), on the trained networks; and for
  LeNet-5's first convolution the mean pixel standard deviation inside each image (a flat colour
  square, the old channel-mean default on a linear filter, has almost none).

The old default is the code on another branch (`--old-src /work/main/src`); it cannot be imported
beside this one, so each tree runs this same file as a worker in its own process (`--worker`,
printing JSON) on the same machine, one after the other, and the driver prints both and the ratio.
LeNet-5 is trained by `convlens.train.fit` on the bundled `sample` data (the tests' recipe, seconds)
unless `--lenet-run` names a run.

Usage::

    .venv/bin/python benchmarks/actmax_default_bench.py --old-src /work/main/src [--channels 16]
        [--threads 2] [--lenet-run RUN] [--resnet20-run RUN]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def mean_pairwise_correlation(images: torch.Tensor) -> float:
    """Mean Pearson correlation over all pairs of `(K, C, S, S)` images (flattened)."""
    c = np.corrcoef(images.flatten(1).double().numpy())
    return float(c[np.triu_indices(len(c), 1)].mean())


def worker(args: argparse.Namespace) -> None:
    from convlens import models
    from convlens.inspect import activation_maximization
    from convlens.train import load_run

    torch.set_num_threads(args.threads)
    out: dict[str, dict[str, float]] = {}
    lenet = load_run(args.lenet_run)
    if args.resnet20_run:
        r20 = load_run(args.resnet20_run)
        resnet, r_mean, r_std = r20.model, r20.data.mean, r20.data.std
    else:
        torch.manual_seed(0)
        resnet = models.create("resnet20", num_classes=10, in_channels=3).eval()
        r_mean, r_std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    cases = [
        ("lenet5 conv2", lenet.model, "conv2", 28, lenet.data.mean, lenet.data.std),
        ("lenet5 conv1", lenet.model, "conv1", 28, lenet.data.mean, lenet.data.std),
        ("resnet20 layer3", resnet, "layer3", 32, r_mean, r_std),
    ]
    for name, model, layer, size, mean, std in cases:
        chans = list(range(min(args.channels, 6 if layer == "conv1" else args.channels)))
        t0 = time.perf_counter()
        res = activation_maximization(model, layer, chans, size=size, mean=mean, std=std)
        seconds = time.perf_counter() - t0
        out[name] = {
            "s_per_channel": seconds / len(chans),
            "channels": len(chans),
            "steps": res.history.shape[0],
            "correlation": mean_pairwise_correlation(res.images),
            "pixel_std": float(res.images.flatten(1).std(1).mean()),
            "objective": res.objective,  # type: ignore[dict-item]
        }
        print(name, out[name], file=sys.stderr, flush=True)  # progress, passed through
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old-src", default="/work/main/src", help="the other tree's src folder")
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lenet-run", default=None)
    ap.add_argument("--resnet20-run", default=None)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    tmp = tempfile.TemporaryDirectory()
    if args.lenet_run is None:
        from convlens.train import fit, recipe

        args.lenet_run = str(Path(tmp.name) / "lenet5-sample")
        fit("lenet5", "sample", out=args.lenet_run,
            config=recipe("lenet5", "sample", device="cpu", threads=args.threads), progress=False)  # fmt: skip
    ours_src = str(Path(__file__).resolve().parents[1] / "src")
    results = {}
    for label, src in (("old", args.old_src), ("new", ours_src)):
        cmd = [sys.executable, __file__, "--worker", "--channels", str(args.channels),
               "--threads", str(args.threads), "--lenet-run", args.lenet_run]  # fmt: skip
        if args.resnet20_run:
            cmd += ["--resnet20-run", args.resnet20_run]
        env = {**os.environ, "PYTHONPATH": src}
        print(f"{label}: {src}", file=sys.stderr, flush=True)
        done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True)
        results[label] = json.loads(done.stdout.strip().splitlines()[-1])
    for case in results["new"]:
        o, n = results["old"][case], results["new"][case]
        print(
            f"{case}: {n['channels']} channels, {n['steps']} steps; s/channel old {o['s_per_channel']:.3f} "
            f"new {n['s_per_channel']:.3f} (new/old {n['s_per_channel'] / o['s_per_channel']:.2f}); "
            f"objective old {o['objective']} new {n['objective']}; mean pairwise correlation "
            f"old {o['correlation']:.3f} new {n['correlation']:.3f}; "
            f"pixel std old {o['pixel_std']:.3f} new {n['pixel_std']:.3f}"
        )
    print(f"load {os.getloadavg()[0]:.1f}, {args.threads} threads")
    tmp.cleanup()


if __name__ == "__main__":
    main()
