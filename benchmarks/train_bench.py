"""Training throughput: `convlens.train.fit` against the textbook PyTorch loop, one process.

The textbook loop is what tutorials write: `torchvision.datasets.FashionMNIST` read from the same
IDX files (copied into the layout torchvision expects, in a temporary folder), `ToTensor` +
`Normalize`, a `DataLoader` with batch 64, a Python loop with SGD (lr 0.01, momentum 0.9). Ours is
`fit` with the recipe for the model. Same model (from the registry), same data, same epochs; both
report training images per second (training time only) and the final test accuracy.

Then the wall time for `convlens train lenet5 --data fashion-mnist` to reach 90 % test accuracy,
measured from the command's start (process start-up, imports and data loading included).

Usage (CONVLENS_DATA must point at the folder holding fashion-mnist/):

    python benchmarks/train_bench.py                      # LeNet-5 and ResNet-20, full epochs
    python benchmarks/train_bench.py --epochs 1 --limit 10000 --resnet-limit 2000   # short

Targets on a 2-core CPU: LeNet-5 >= 4x the textbook loop at equal or better accuracy; 90 % in < 30 s.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def torchvision_layout(src: Path, tmp: Path) -> Path:
    """Copy the gzipped IDX files to `tmp/FashionMNIST/raw/` uncompressed, as torchvision expects."""
    raw = tmp / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        gz = src / f"{name}.gz"
        with (
            gzip.open(gz) if gz.exists() else open(src / name, "rb") as f,
            open(raw / name, "wb") as o,
        ):
            shutil.copyfileobj(f, o)
    return tmp


def textbook(model_name: str, root: Path, epochs: int, limit: int | None) -> dict[str, float]:
    """The tutorial loop: per-sample transforms, DataLoader(batch_size=64), constant-lr SGD."""
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    from convlens import models

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.2860,), (0.3530,))])
    train = datasets.FashionMNIST(str(root), train=True, download=False, transform=tf)
    test = datasets.FashionMNIST(str(root), train=False, download=False, transform=tf)
    if limit:
        train = Subset(train, range(limit))  # type: ignore[assignment]
    torch.manual_seed(0)
    net = models.create(model_name, num_classes=10, in_channels=1)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    loader = DataLoader(train, batch_size=64, shuffle=True)
    seconds, images = 0.0, 0
    for _ in range(epochs):
        net.train()
        t0 = time.perf_counter()
        for x, y in loader:
            opt.zero_grad()
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            images += len(y)
        seconds += time.perf_counter() - t0
    net.eval()
    correct = 0
    with torch.no_grad():
        for x, y in DataLoader(test, batch_size=1000):
            correct += int((net(x).argmax(1) == y).sum())
    return {"images_per_s": images / seconds, "test_acc": correct / len(test), "seconds": seconds}


def ours(model_name: str, epochs: int, limit: int | None, threads: int) -> dict[str, float]:
    from convlens.train import fit, recipe

    cfg = recipe(model_name, "fashion-mnist", epochs=epochs, limit_train=limit, threads=threads)
    with tempfile.TemporaryDirectory() as tmp:
        run = fit(model_name, "fashion-mnist", out=Path(tmp) / "run", config=cfg, progress=False)
    n = min(limit or 60_000, 60_000)  # training images per epoch
    train_seconds = sum(n / h["images_per_s"] for h in run.history)  # training time, no evaluation
    train_images = n * len(run.history)
    seconds = sum(h["seconds"] for h in run.history)
    return {
        "images_per_s": train_images / train_seconds,
        "test_acc": run.history[-1]["test_acc"],
        "seconds": seconds,
        "batch": cfg.batch_size,
    }


def time_to(target: float, epochs: int, threads: int) -> tuple[float | None, float]:
    """Seconds from `convlens train` starting to the first epoch at `target` test accuracy."""
    exe = Path(sys.executable).parent / "convlens"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        t0 = time.perf_counter()
        args = ["lenet5", "--data", "fashion-mnist", "--epochs", str(epochs), "--threads"]
        proc = subprocess.Popen(
            [str(exe), "train", *args, str(threads), "--out", str(out), "-q"],
            stdout=subprocess.DEVNULL,
        )
        reached: float | None = None
        best = 0.0
        while reached is None:
            done = proc.poll() is not None
            metrics = out / "metrics.jsonl"
            if metrics.exists():
                for line in metrics.read_text().splitlines():
                    acc = json.loads(line)["test_acc"]
                    best = max(best, acc)
                    if acc >= target and reached is None:
                        reached = time.perf_counter() - t0
            if done:
                break
            time.sleep(0.1)
        proc.kill()
        proc.wait()
    return reached, best


def _load() -> str:
    """The 1-minute load average: figures taken while others load a small machine are noisy."""
    return f"load {os.getloadavg()[0]:.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--epochs", type=int, default=None, help="epochs of both loops (default: recipe)"
    )
    p.add_argument("--limit", type=int, default=None, help="LeNet-5: first N training images")
    p.add_argument("--resnet-epochs", type=int, default=1)
    p.add_argument("--resnet-limit", type=int, default=10_000, help="ResNet-20: first N images")
    p.add_argument("--skip-resnet", action="store_true")
    p.add_argument("--skip-time", action="store_true")
    p.add_argument("--time-epochs", type=int, default=4, help="epochs of the time-to-90 %% run")
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads for both (default: cores)"
    )
    p.add_argument(
        "--repeat", type=int, default=1, help="rounds of textbook then fit (each, and the median)"
    )
    args = p.parse_args()

    from convlens.train import recipe
    from convlens.train.runtime import physical_cores

    threads = args.threads or int(os.environ.get("OMP_NUM_THREADS", 0)) or physical_cores()
    torch.set_num_threads(threads)
    data_root = Path(os.environ.get("CONVLENS_DATA", "")) / "fashion-mnist"
    if not data_root.is_dir():
        sys.exit("set CONVLENS_DATA to the folder holding fashion-mnist/")
    print(f"torch {torch.__version__}, {threads} thread(s), {os.cpu_count()} CPUs")
    cases = [("lenet5", args.epochs or recipe("lenet5", "fashion-mnist").epochs, args.limit)]
    if not args.skip_resnet:
        cases.append(("resnet20", args.resnet_epochs, args.resnet_limit))
    with tempfile.TemporaryDirectory() as tmp:
        root = torchvision_layout(data_root, Path(tmp))
        for name, epochs, limit in cases:
            ratios = []
            for _ in range(args.repeat):  # rounds back to back: this VM's speed drifts
                torch.set_num_threads(threads)
                a = textbook(name, root, epochs, limit)
                b = ours(name, epochs, limit, threads)
                ratios.append(b["images_per_s"] / a["images_per_s"])
                print(
                    f"{name:9s} {epochs} epoch(s) x {limit or 60000:,} images | textbook "
                    f"{a['images_per_s']:8,.0f} img/s, test {a['test_acc']:.2%} | fit "
                    f"{b['images_per_s']:8,.0f} img/s (batch {b['batch']}), test "
                    f"{b['test_acc']:.2%} | ratio {ratios[-1]:.1f}x | {_load()}",
                    flush=True,
                )
            if len(ratios) > 1:
                print(
                    f"{name:9s} median ratio of {len(ratios)} rounds {sorted(ratios)[len(ratios) // 2]:.1f}x"
                )
    if not args.skip_time:
        reached, best = time_to(0.90, args.time_epochs, threads)
        when = f"{reached:.1f} s" if reached is not None else "not reached"
        print(
            f"lenet5 to 90 % Fashion-MNIST test accuracy ({args.time_epochs} epochs): {when} "
            f"from the command's start (best {best:.2%}) | {_load()}"
        )


if __name__ == "__main__":
    main()
