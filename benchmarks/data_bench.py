"""Data loading benchmark (issue 2): our BatchLoader against the textbook torchvision pipelines.

The work: one epoch of CIFAR-10 training batches, batch 512, shuffled, random crop 32 with 4 pixels of
zero padding, horizontal flip, normalised float32 `(512, 3, 32, 32)` on the CPU.

- ours: `convlens.data.BatchLoader` over the in-memory uint8 tensor, augmentation per batch as tensor
  operations (no per-image Python);
- reference A, `ImageFolder`: the tar.gz extracted to a temporary folder,
  `torchvision.datasets.ImageFolder` + `transforms.Compose([RandomCrop(32, padding=4),
  RandomHorizontalFlip(), ToTensor(), Normalize(mean, std)])` + `DataLoader(num_workers=2)`;
- reference B, `datasets.CIFAR10`-style: the same decoded uint8 arrays in memory, one
  `Image.fromarray` + the same transforms per image (what `torchvision.datasets.CIFAR10.__getitem__`
  does) + `DataLoader(num_workers=2)`.

All three run in this one process (the references' workers are its children) on the same data; the
references are timed over `--ref-batches` batches after a first batch that pays for the workers' start,
ours over `--epochs` full epochs (98 batches each) after one warm-up batch, with torch's default
intra-op threads and with one thread (the references' workers run one thread each). Printed:
batches/s of each, and the ratios to ours (the better of the two thread settings). Target: >= 10x.

Run: `CONVLENS_DATA=../shared/data .venv/bin/python benchmarks/data_bench.py` (1-3 minutes on 2 cores;
the first run also decodes CIFAR-10 once into ~/.cache/convlens).
"""

from __future__ import annotations

import argparse
import os
import platform
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from convlens.data import Augment, BatchLoader, load, locate

BATCH = 512


def time_batches(batches: Iterable[object], n: int | None, warmup: int = 1) -> tuple[float, int]:
    """Batches per second over `n` batches (None: all) after `warmup` untimed batches."""
    it: Iterator[object] = iter(batches)
    for _ in range(warmup):
        next(it)
    count = 0
    t0 = time.perf_counter()
    for _ in it:
        count += 1
        if n is not None and count >= n:
            break
    return count / (time.perf_counter() - t0), count


class CifarStyle(torch.utils.data.Dataset):
    """`torchvision.datasets.CIFAR10`'s item path over in-memory HWC uint8 arrays."""

    def __init__(self, data: np.ndarray, targets: list[int], transform: transforms.Compose) -> None:
        self.data, self.targets, self.transform = data, targets, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = Image.fromarray(self.data[i])
        return self.transform(img), self.targets[i]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--data-dir", default=None, help="folder holding cifar10/ (default CONVLENS_DATA)"
    )
    ap.add_argument("--epochs", type=int, default=2, help="epochs timed for ours")
    ap.add_argument("--ref-batches", type=int, default=15, help="batches timed for each reference")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the references")
    ap.add_argument("--skip-imagefolder", action="store_true")
    args = ap.parse_args()

    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"
    )
    t0 = time.perf_counter()
    ds = load("cifar10", "train", root=args.data_dir)
    print(
        f"load('cifar10', 'train'): {time.perf_counter() - t0:.2f} s ({len(ds):,} images; "
        "decoded once, then read from the cache)"
    )
    mean, std = ds.mean, ds.std

    # ours, with torch's default intra-op threads and with one thread (on a machine oversubscribed by
    # other work, OpenMP threads waiting at barriers can make 2 threads far slower than 1)
    default_threads = torch.get_num_threads()
    ours_by_threads = {}
    for threads in dict.fromkeys([default_threads, 1]):
        torch.set_num_threads(threads)
        loader = BatchLoader(
            ds.images,
            ds.labels,
            batch_size=BATCH,
            mean=mean,
            std=std,
            shuffle=True,
            augment=Augment(crop_padding=4, flip=True),
            seed=0,
        )
        rates = []
        for e in range(args.epochs):
            loader.set_epoch(e)
            rates.append(time_batches(loader, None)[0])
        rate = ours_by_threads[threads] = float(np.median(rates))
        print(
            f"ours  BatchLoader, {threads} torch thread(s), per-batch crop+flip   : {rate:8.1f} "
            f"batches/s ({rate * BATCH:,.0f} images/s; median of {args.epochs} epochs)"
        )
    torch.set_num_threads(default_threads)
    ours = max(ours_by_threads.values())

    tf = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    results = {}

    # reference B: CIFAR10-style in memory
    hwc = ds.images.permute(0, 2, 3, 1).contiguous().numpy()
    ref_b = DataLoader(
        CifarStyle(hwc, ds.labels.tolist(), tf),
        batch_size=BATCH,
        shuffle=True,
        num_workers=args.workers,
    )
    rate_b, _ = time_batches(ref_b, args.ref_batches)
    results["datasets.CIFAR10-style + transforms + DataLoader"] = rate_b

    # reference A: ImageFolder over the extracted JPEG tree
    if not args.skip_imagefolder:
        loc = locate("cifar10", args.data_dir)
        tars = sorted(Path(loc.found).glob("*.tar.gz")) if loc.found else []
        if not tars:
            print("no cifar10 .tar.gz found: skipping the ImageFolder reference")
        else:
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                with tarfile.open(tars[0]) as t:
                    t.extractall(tmp, filter="data")
                train_dir = next(Path(tmp).rglob("train"))
                print(
                    f"extracted {tars[0].name} for ImageFolder in {time.perf_counter() - t0:.1f} s"
                )
                ref_a = DataLoader(
                    datasets.ImageFolder(str(train_dir), transform=tf),
                    batch_size=BATCH,
                    shuffle=True,
                    num_workers=args.workers,
                )
                rate_a, _ = time_batches(ref_a, args.ref_batches)
                results["ImageFolder (JPEG) + transforms + DataLoader"] = rate_a

    for name, rate in results.items():
        print(f"ref   {name:56s}: {rate:8.2f} batches/s -> ours (best) is {ours / rate:5.1f}x")


if __name__ == "__main__":
    main()
