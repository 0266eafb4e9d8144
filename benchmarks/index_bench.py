"""Index pass benchmark (issue 22): the streaming index against the bare model, and its memory.

Three measurements, each printed with the load average (`os.getloadavg`):

1. **throughput**: images/s of `convlens.index.build_index` over a folder of JPEGs (decoded in
   DataLoader workers, every record of the index written, fresh cache) against the bare model's
   batched forward over the same images already decoded in memory (`model(normalize(batch))` under
   `torch.inference_mode()`, same batch size), in this one process: bare, index, bare again (the
   mean of the two bare runs is the reference). Target: index >= 80 % of bare.
   - ResNet-20 at 32x32 over CIFAR-10 JPEGs (`--cifar-images`, full size 50,000: the train split);
   - torchvision ResNet-18 (random weights) at 224x224 over CIFAR-10 JPEGs upscaled to 224x224 and
     saved as JPEG (`--big-images`, full size 20,000).
2. **rss**: peak RSS of `convlens index build` (a subprocess: its own peak and its largest
   DataLoader worker's, from `getrusage`) over `--rss-sizes` ResNet-20 / CIFAR-10 folders.
   Target: the two within 10 %.
3. **neighbours**: milliseconds per query of `Index.neighbours` (exact, chunked, float64) over
   `--points` x 512 memory-mapped float16 features, against the one-shot NumPy reference (the whole
   matrix in float32 in memory, one product, `argpartition`), p50 and p95 of 30 queries. Target of
   the web app: p95 <= 100 ms at 50,000 points (FAISS only if this misses it).
4. **evaluate**: peak RSS of `convlens evaluate --model my_net.py:build --weights w.safetensors
   --images DIR` over `--eval-images` 224x224 JPEGs in class folders (a small CNN of the user's:
   what is measured is memory, not the network). Target: < 2.5 GB at 30,000.
5. **gpu** (only with `--parts gpu`, on a CUDA machine): see :func:`gpu`.

Full size (the lead's run; an hour or more on 2 cores):
`CONVLENS_DATA=../shared/data .venv/bin/python benchmarks/index_bench.py --cifar-images 50000
--big-images 20000 --rss-sizes 10000,50000 --eval-images 30000 --points 50000 --rounds 3`
On a GPU machine: `... index_bench.py --parts gpu --gpu-images 20000`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
from pathlib import Path
from unittest.mock import patch

import torch
from PIL import Image

# Peak RSS of the command: VmHWM of its own memory (ru_maxrss would carry over the peak of the
# benchmark process it was forked from: Linux keeps it across exec), and ru_maxrss of its
# DataLoader workers (they are forked from it, so the pages they share with it count in theirs).
CHILD = """
import json, re, resource, sys
from convlens.cli.main import main
code = main(sys.argv[1:])
status = open("/proc/self/status").read()
me = int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"code": code, "self_kb": me, "children_kb": kids}), file=sys.stderr)
"""

MY_NET = """
import torch
from torch import nn

def build() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 7, stride=4, padding=3), nn.ReLU(),      # N x 16 x 56 x 56
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),     # N x 32 x 28 x 28
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),     # N x 64 x 14 x 14
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )
"""


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.1f} {five:.1f} {fifteen:.1f}"


def extract(data: Path, out: Path, n: int, split: str, size: int | None = None) -> Path:
    """The first `n` JPEGs of a CIFAR-10 split as class folders (resized to `size` when given)."""
    if out.is_dir() and sum(1 for _ in out.rglob("*.jpg")) >= n:
        return out
    per = -(-n // 10)
    counts: dict[str, int] = {}
    with tarfile.open(data / "cifar10" / "cifar10-jpeg.tar.gz") as tf:
        for m in tf:
            parts = m.name.split("/")
            if not m.isfile() or len(parts) != 3 or parts[0] != split:
                continue
            if counts.get(parts[1], 0) >= per or sum(counts.values()) >= n:
                continue
            counts[parts[1]] = counts.get(parts[1], 0) + 1
            dst = out / parts[1] / parts[2]
            dst.parent.mkdir(parents=True, exist_ok=True)
            f = tf.extractfile(m)
            assert f is not None
            if size is None:
                dst.write_bytes(f.read())
            else:
                with Image.open(f) as im:
                    im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC).save(
                        dst, quality=90
                    )
    return out


def throughput(name: str, spec: str, folder: Path, batch: int, work: Path, rounds: int) -> None:
    """Interleaved rounds: bare, index, bare, index, ..., bare; each round's ratio is its index pass
    against the mean of the bare forwards just before and after it (this machine's speed drifts by
    +-20 % over minutes); the median round is the figure."""
    from convlens.index import build_index
    from convlens.subjects import open_subject
    from convlens.subjects.images import load_images, scan_image_list

    sub = open_subject(spec, images=folder, in_memory=False)
    images = sub.image_list
    assert images is not None
    # Decoded once, for the bare forward: 20,000 images at 224x224 are 3 GB, above what a subject
    # may hold in memory (the index pass streams them); the reference is allowed to.
    with patch("convlens.subjects.images.MAX_FOLDER_BYTES", 1 << 40):
        pixels, _ = load_images(images.files, sub.preprocess)

    def bare() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(pixels), batch):
                sub.model(sub.normalize(pixels[i : i + batch]))
        return len(pixels) / (time.perf_counter() - t0)

    before = bare()
    ratios = []
    for r in range(rounds):
        shutil.rmtree(work / f"cache-{name}", ignore_errors=True)  # a fresh pass: nothing cached
        t0 = time.perf_counter()
        build_index(sub, scan_image_list(folder), cache_dir=work / f"cache-{name}",
                    batch_size=batch, progress=False)  # fmt: skip
        ours = len(pixels) / (time.perf_counter() - t0)
        after = bare()
        ref = (before + after) / 2
        ratios.append(ours / ref)
        print(
            f"throughput {name} round {r + 1}/{rounds}: {len(pixels):,} images, batch {batch}: "
            f"bare forward {ref:.1f} img/s ({before:.1f}, {after:.1f}), index pass {ours:.1f} "
            f"img/s, ratio {ours / ref:.3f} [{load()}]",
            flush=True,
        )
        before = after
    ratios.sort()
    print(f"throughput {name}: median ratio {ratios[len(ratios) // 2]:.3f} over {rounds} rounds "
          f"(min {ratios[0]:.3f}, max {ratios[-1]:.3f})", flush=True)  # fmt: skip


def gpu(folder: Path, work: Path, small: int) -> None:
    """Issue 22's GPU item: torchvision ResNet-50 (random weights) at 224x224 over the folder on
    CUDA, batch 256: the bare forward of the decoded images (copied from pinned memory per batch)
    against the index pass (DataLoader workers decode, pinned batches, every record written;
    target >= 2,000 img/s), then the index pass over the first `small` images on the GPU and on
    the CPU (nothing may be slower on the GPU)."""
    from convlens.index import build_index
    from convlens.subjects import open_subject
    from convlens.subjects.images import ImageList, load_images, scan_image_list

    if not torch.cuda.is_available():
        print("gpu: no CUDA device; skipped", flush=True)
        return
    print(f"gpu: {torch.cuda.get_device_name()}, {os.cpu_count()} CPUs", flush=True)
    sub = open_subject("torchvision:resnet50", images=folder, in_memory=False)
    images = sub.image_list
    assert images is not None
    with patch("convlens.subjects.images.MAX_FOLDER_BYTES", 1 << 40):
        pixels, _ = load_images(images.files, sub.preprocess)
    pixels = pixels.pin_memory()
    batch = 256
    sub.model.cuda()

    def bare() -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(pixels), batch):
                sub.model(sub.normalize(pixels[i : i + batch].cuda(non_blocking=True)))
        torch.cuda.synchronize()
        return len(pixels) / (time.perf_counter() - t0)

    def index(files: ImageList, tag: str) -> float:
        shutil.rmtree(work / f"cache-gpu-{tag}", ignore_errors=True)
        t0 = time.perf_counter()
        build_index(sub, files, cache_dir=work / f"cache-gpu-{tag}", batch_size=batch,
                    progress=False)  # fmt: skip
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return len(files) / (time.perf_counter() - t0)

    bare()  # cuDNN's algorithm search and the allocator's warm-up
    b1 = bare()
    ours = index(scan_image_list(folder), "all")
    b2 = bare()
    print(f"gpu resnet50@224 over {len(pixels):,} images, batch {batch}: bare forward "
          f"{(b1 + b2) / 2:.0f} img/s ({b1:.0f}, {b2:.0f}), index pass {ours:.0f} img/s "
          f"(target >= 2,000), ratio {ours / ((b1 + b2) / 2):.2f}", flush=True)  # fmt: skip
    few = ImageList(images.source, images.files[:small], images.labels[:small], images.classes)
    on_gpu = index(few, "few-gpu")
    sub.model.cpu()
    on_cpu = index(few, "few-cpu")
    print(f"gpu resnet50@224 index pass over {small} images: GPU {on_gpu:.1f} img/s, CPU "
          f"{on_cpu:.1f} img/s ({'not slower' if on_gpu >= on_cpu else 'SLOWER'} on the GPU)",
          flush=True)  # fmt: skip


def neighbours(points: int, work: Path) -> None:
    import numpy as np

    from convlens.index.search import nearest

    class Features:  # what `nearest` reads from an Index: its features, its derived values
        def __init__(self, path: Path) -> None:
            self.path = path
            self.derived: dict[str, object] = {}

        def features(self) -> np.ndarray:
            return np.load(self.path, mmap_mode="r")

    path = work / f"features-{points}.npy"
    rng = np.random.default_rng(0)
    np.save(path, rng.standard_normal((points, 512)).astype(np.float16))
    index = Features(path)
    queries = rng.integers(0, points, 30)
    nearest(index, 0, 10)  # type: ignore[arg-type]  # the row norms, once per opened index
    for metric in ("cosine", "euclidean"):
        ours = []
        for q in queries:
            t0 = time.perf_counter()
            nearest(index, int(q), 10, metric)  # type: ignore[arg-type]
            ours.append(1000 * (time.perf_counter() - t0))
        x = np.load(path).astype(np.float32)  # the reference holds all features in memory
        ref = []
        for q in queries:
            t0 = time.perf_counter()
            if metric == "cosine":
                xn = x / np.linalg.norm(x, axis=1, keepdims=True)
                d = 1.0 - xn @ xn[q]
            else:
                d = np.linalg.norm(x - x[q], axis=1)
            np.argpartition(d, 11)[:11]
            ref.append(1000 * (time.perf_counter() - t0))
        p = np.percentile
        print(f"neighbours {metric} over {points:,} x 512: ours p50 {p(ours, 50):.1f} ms, p95 "
              f"{p(ours, 95):.1f} ms; NumPy in memory p50 {p(ref, 50):.1f} ms, p95 "
              f"{p(ref, 95):.1f} ms [{load()}]", flush=True)  # fmt: skip


def peak_rss(args: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """(seconds, peak RSS of the process, of its largest child) in MB."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, env=env)
    secs = time.perf_counter() - t0
    last = r.stderr.decode().strip().splitlines()[-1]
    info = json.loads(last)
    if info["code"] != 0:
        raise SystemExit(r.stderr.decode()[-2000:])
    return secs, info["self_kb"] / 1024, info["children_kb"] / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("CONVLENS_DATA"))
    p.add_argument(
        "--work", default=None, help="Folder for the extracted images (default: a temp dir)."
    )
    p.add_argument("--cifar-images", type=int, default=2000)
    p.add_argument("--big-images", type=int, default=128)
    p.add_argument("--rss-sizes", default="2000,10000")
    p.add_argument("--eval-images", type=int, default=3000)
    p.add_argument("--points", type=int, default=50_000)
    p.add_argument("--parts", default="throughput,rss,neighbours,evaluate")
    p.add_argument("--rounds", type=int, default=3, help="Interleaved throughput rounds.")
    p.add_argument("--gpu-images", type=int, default=20_000, help="Images of the `gpu` part.")
    a = p.parse_args()
    if not a.data_dir:
        raise SystemExit("pass --data-dir or set CONVLENS_DATA")
    data = Path(a.data_dir)
    work = Path(a.work or tempfile.mkdtemp(prefix="index-bench-"))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads [{load()}]", flush=True)  # fmt: skip
    parts = a.parts.split(",")
    if "throughput" in parts:
        split = "train" if a.cifar_images > 10_000 else "test"
        if a.cifar_images:
            small = extract(data, work / f"cifar-{a.cifar_images}", a.cifar_images, split)
            throughput("resnet20@32", "resnet20", small, 256, work, a.rounds)
        if a.big_images:
            split = "train" if a.big_images > 10_000 else "test"
            big = extract(data, work / f"big-{a.big_images}", a.big_images, split, size=224)
            throughput("resnet18@224", "torchvision:resnet18", big, 64, work, a.rounds)
    if "gpu" in parts:
        split = "train" if a.gpu_images > 10_000 else "test"
        big = extract(data, work / f"big-{a.gpu_images}", a.gpu_images, split, size=224)
        gpu(big, work, min(512, a.gpu_images))
    if "rss" in parts:
        for n in (int(s) for s in a.rss_sizes.split(",")):
            split = "train" if n > 10_000 else "test"
            folder = extract(data, work / f"cifar-{n}", n, split)
            shutil.rmtree(work / f"rss-cache-{n}", ignore_errors=True)  # a fresh pass
            secs, me, kid = peak_rss(
                ["index", "build", "--model", "resnet20", "--images", str(folder), "-q",
                 "--cache-dir", str(work / f"rss-cache-{n}")], env,
            )  # fmt: skip
            print(f"rss index build resnet20 over {n:,} images: {secs:.0f} s, peak RSS "
                  f"{me:.0f} MB (largest worker {kid:.0f} MB) [{load()}]", flush=True)  # fmt: skip
    if "neighbours" in parts:
        neighbours(a.points, work)
    if "evaluate" in parts:
        folder = extract(data, work / f"eval-{a.eval_images}", a.eval_images, "train"
                         if a.eval_images > 10_000 else "test", size=224)  # fmt: skip
        net = work / "my_net.py"
        net.write_text(textwrap.dedent(MY_NET))
        from safetensors.torch import save_file

        sys.path.insert(0, str(work))
        import my_net  # type: ignore[import-not-found]

        torch.manual_seed(0)
        save_file(my_net.build().state_dict(), str(work / "w.safetensors"))
        shutil.rmtree(work / "eval-cache", ignore_errors=True)
        classes = work / "classes.txt"
        classes.write_text("\n".join(sorted(d.name for d in folder.iterdir())) + "\n")
        secs, me, kid = peak_rss(
            ["evaluate", "--model", f"{net}:build", "--weights", str(work / "w.safetensors"),
             "--images", str(folder), "--classes", str(classes), "--json"],
            {**env, "CONVLENS_CACHE": str(work / "eval-cache")},
        )  # fmt: skip
        print(f"rss evaluate my_net.py over {a.eval_images:,} images at 224x224: {secs:.0f} s, "
              f"peak RSS {me:.0f} MB (largest worker {kid:.0f} MB) [{load()}]", flush=True)  # fmt: skip
    print(f"work folder: {work}")


if __name__ == "__main__":
    main()
