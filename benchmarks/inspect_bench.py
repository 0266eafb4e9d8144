"""Inspection benchmarks (issue 5), each reference and ours in one process, ratios printed.

1. t-SNE: `convlens.inspect.tsne` (openTSNE's public API, FFT-accelerated interpolation) against
   scikit-learn's `TSNE` (Barnes-Hut) on 20,000 penultimate feature vectors of Fashion-MNIST from a
   LeNet-5 trained here for `--epochs` epochs (0 = random weights). Both at perplexity 30, PCA
   initialisation, all cores, sklearn at its default 1000 iterations, ours 250 + 500. Reported:
   seconds (ours also per phase), each library's own KL divergence, and the KL of both maps under ONE common affinity matrix P (openTSNE's
   perplexity-30 affinities of the same features) with the exact normalisation Z over all N^2 pairs, so
   the two numbers are comparable. The ratio is whatever openTSNE's public API gives (issue 15).
2. Top-activating patches: `convlens.inspect.top_patches` ranks 64 channels of a conv layer over the
   60,000 training images in ONE pass, against the textbook loop (a full pass over the data per
   channel). The loop's time is measured on `--loop-channels` channels and scaled to 64 (every channel's
   pass is the same work) unless `--loop-channels 64`; the loop's results are checked equal to ours.

Run: `CONVLENS_DATA=../shared/data .venv/bin/python benchmarks/inspect_bench.py` (about 5-10 minutes on
a 2-core CPU). Options: --n-tsne, --epochs, --loop-channels, --device, --skip-tsne, --skip-top.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convlens import models
from convlens.data import BatchLoader, load
from convlens.inspect import extract_features, top_patches, tsne
from convlens.inspect.features import batches, to_input
from convlens.models.hooks import evaluating, truncated_forward


def train_lenet(
    images: torch.Tensor, labels: torch.Tensor, mean: tuple, std: tuple, epochs: int, device: str
) -> nn.Module:
    """LeNet-5, Adam 1e-3, batch 128: about 85 % test accuracy after one epoch on Fashion-MNIST."""
    torch.manual_seed(0)
    model = models.create("lenet5", in_channels=1).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = BatchLoader(images, labels, batch_size=128, mean=mean, std=std, device=device, seed=0)
    model.train()
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


def exact_kl(
    coords: np.ndarray, p_rows: np.ndarray, p_cols: np.ndarray, p_vals: np.ndarray
) -> float:
    """KL(P || Q) of a 2-D map for a sparse symmetric P (sum 1), Q from the Student-t kernel, exact Z."""
    y = torch.from_numpy(coords).double()
    z = 0.0
    for sl in batches(len(y), 2048):  # Z = sum over all i != j of 1 / (1 + |y_i - y_j|^2)
        d2 = torch.cdist(y[sl], y).square_()
        z += float((1.0 / (1.0 + d2)).sum()) - (sl.stop - sl.start)  # minus the diagonal's ones
    d2_ij = ((y[p_rows] - y[p_cols]) ** 2).sum(1).numpy()
    q = 1.0 / (1.0 + d2_ij) / z
    return float((p_vals * np.log(p_vals / q)).sum())


@contextmanager
def timed_optimize_calls(record: list[float]) -> Iterator[None]:
    """Append the wall time of every openTSNE `TSNEEmbedding.optimize` call (one per t-SNE phase)."""
    from openTSNE import TSNEEmbedding

    original = TSNEEmbedding.optimize

    def timed(self: TSNEEmbedding, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            record.append(time.perf_counter() - t0)

    TSNEEmbedding.optimize = timed
    try:
        yield
    finally:
        TSNEEmbedding.optimize = original


def bench_tsne(args: argparse.Namespace) -> None:
    from openTSNE.affinity import PerplexityBasedNN
    from sklearn.manifold import TSNE as SKTSNE

    train = load("fashion-mnist", "train", root=args.data_dir)
    t0 = time.perf_counter()
    model = train_lenet(train.images, train.labels, train.mean, train.std, args.epochs, args.device)
    t_train = time.perf_counter() - t0
    test = load("fashion-mnist", "test", root=args.data_dir)
    with torch.inference_mode():
        acc = (
            (
                model(to_input(test.images, test.mean, test.std, torch.device(args.device)))
                .argmax(1)
                .cpu()
                == test.labels
            )
            .float()
            .mean()
        )
    g = torch.Generator().manual_seed(0)
    pick = torch.randperm(len(train), generator=g)[: args.n_tsne]
    feats = extract_features(
        model, train.images[pick], mean=train.mean, std=train.std, batch_size=1024
    )
    x = feats.double().numpy()
    print(
        f"LeNet-5, {args.epochs} epoch(s) in {t_train:.1f} s, test accuracy {acc:.3f}; features {tuple(x.shape)}"
    )

    phases: list[float] = []
    t0, c0 = time.perf_counter(), time.process_time()
    with timed_optimize_calls(phases):
        ours = tsne(feats, seed=0)
    t_ours, c_ours = time.perf_counter() - t0, time.process_time() - c0
    print(
        f"openTSNE (convlens.inspect.tsne): {t_ours:.1f} s ({c_ours:.1f} CPU-s), KL {ours.kl_divergence:.4f}"
    )
    names = ["early exaggeration", "normal phase"]
    breakdown = ", ".join(f"{name} {t:.1f} s" for name, t in zip(names, phases, strict=False))
    print(f"  neighbours, affinities, PCA {t_ours - sum(phases):.1f} s; {breakdown}")

    t0, c0 = time.perf_counter(), time.process_time()
    sk = SKTSNE(n_components=2, perplexity=30.0, init="pca", random_state=0, n_jobs=os.cpu_count())
    sk_coords = sk.fit_transform(x)
    t_sk, c_sk = time.perf_counter() - t0, time.process_time() - c0
    print(
        f"sklearn TSNE (barnes_hut):       {t_sk:.1f} s ({c_sk:.1f} CPU-s), KL {sk.kl_divergence_:.4f}"
    )

    p = PerplexityBasedNN(x, perplexity=30.0, n_jobs=os.cpu_count(), random_state=0).P.tocoo()
    p_vals = p.data / p.data.sum()
    kl_ours = exact_kl(ours.coords, p.row, p.col, p_vals)
    kl_sk = exact_kl(sk_coords, p.row, p.col, p_vals)
    print(f"KL under one common P, exact Z:  openTSNE {kl_ours:.4f}, sklearn {kl_sk:.4f}")
    print(f"t-SNE speed-up: {t_sk / t_ours:.1f}x (KL ours / sklearn: {kl_ours / kl_sk:.4f})")


class SixtyFour(nn.Module):
    """A small conv net whose `conv2` has 64 channels on a 14x14 map (28x28 input): the probed layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))  # (N, 32, 14, 14)
        x = F.relu(self.conv2(x))  # (N, 64, 14, 14)
        return self.head(x.mean((2, 3)))


def per_channel_loop(
    model: nn.Module,
    layer: str,
    images: torch.Tensor,
    channels: list[int],
    n: int,
    mean: tuple,
    std: tuple,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The textbook way: for each channel, a pass over the data keeping that channel's top-n."""
    values, indices = [], []
    with evaluating(model), torch.inference_mode():
        for c in channels:
            best = torch.empty(0, device=device)
            idx = torch.empty(0, dtype=torch.int64, device=device)
            for sl in batches(len(images), 256):
                a = truncated_forward(model, layer, to_input(images[sl], mean, std, device))[:, c]
                m = a.flatten(1).amax(1)  # (B,)
                best = torch.cat([best, m])
                idx = torch.cat([idx, torch.arange(sl.start, sl.stop, device=device)])
                best, keep = best.topk(min(n, len(best)))
                idx = idx[keep]
            values.append(best.cpu())
            indices.append(idx.cpu())
    return torch.stack(values), torch.stack(indices)


def bench_top_patches(args: argparse.Namespace) -> None:
    train = load("fashion-mnist", "train", root=args.data_dir)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    model = SixtyFour().to(dev).eval()
    channels, n = list(range(64)), 9
    t0 = time.perf_counter()
    ours = top_patches(
        model, "conv2", train.images, channels, n, mean=train.mean, std=train.std, batch_size=256
    )
    t_ours = time.perf_counter() - t0
    looped = channels[: args.loop_channels]
    t0 = time.perf_counter()
    lv, li = per_channel_loop(model, "conv2", train.images, looped, n, train.mean, train.std, dev)
    t_loop = time.perf_counter() - t0
    assert torch.equal(li, ours.indices[: len(looped)]), (
        "the loop and the one-pass ranking disagree"
    )
    torch.testing.assert_close(lv, ours.values[: len(looped)])
    t_loop64 = t_loop * 64 / len(looped)
    scaled = (
        "" if len(looped) == 64 else f" (measured on {len(looped)} channels, x{64 / len(looped):g})"
    )
    print(f"top-patches, {len(train)} images, 64 channels of a 64x14x14 layer, top {n}:")
    print(f"  one pass (convlens.inspect.top_patches): {t_ours:.1f} s")
    print(f"  per-channel loop: {t_loop64:.1f} s{scaled}; same results on the channels looped")
    print(f"  ratio: {t_loop64 / t_ours:.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data-dir", default=None, help="Folder holding fashion-mnist/ (default $CONVLENS_DATA)."
    )
    ap.add_argument("--n-tsne", type=int, default=20_000)
    ap.add_argument(
        "--epochs", type=int, default=1, help="LeNet-5 training epochs (0 = random weights)."
    )
    ap.add_argument(
        "--loop-channels", type=int, default=4, help="Channels timed in the per-channel loop."
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-tsne", action="store_true")
    ap.add_argument("--skip-top", action="store_true")
    args = ap.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {args.device}")  # fmt: skip
    if not args.skip_tsne:
        bench_tsne(args)
    if not args.skip_top:
        bench_top_patches(args)


if __name__ == "__main__":
    main()
