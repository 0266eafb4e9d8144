"""The HTML report's wall time: of the demo run (issue 8), and of a torchvision model on photos (issue 17).

`demo` (the default). Targets on a 2-core CPU: the whole `convlens demo` (LeNet-5 on the bundled
sample, then the report) in at most 3 minutes at >= 85 % test accuracy; the report of that run in at
most 60 s.

1. `convlens demo --out TMP` as a subprocess, exactly as `make demo` runs it: wall time from start to
   exit (imports, training, report), the final test accuracy from the run's metrics.jsonl.
2. `convlens report TMP --out TMP/again.html` as a subprocess: wall time of the report alone.
3. The report once more in this process, with the seconds each section took.

`resnet18`. Target on a 2-core CPU: `convlens report --model torchvision:resnet18 --weights DEFAULT
--images DIR` with 64 photos at 224x224 in at most 120 s, every section shown (but the training
curves: a model that is not a run has none). The photos are crops of scikit-learn's two bundled
sample photos (china, flower), resized to 224x224, in class folders named as ImageNet's classes
(palace/, daisy/) so that the confusion matrix applies; the weights file is
a random-init ResNet-18 saved where torch hub keeps the real one (no network here; the time does not
depend on the weights' values). One subprocess, exactly as a user runs it: wall time from start to
exit, and the seconds of each section as the command prints them.

Run: `.venv/bin/python benchmarks/report_bench.py [demo|resnet18] [--data sample] [--keep DIR]
[--photos 64]`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def convlens(*args: str) -> float:
    """Run the `convlens` console script of this interpreter's environment; return its wall time."""
    exe = Path(sys.executable).with_name("convlens")
    t = time.perf_counter()
    subprocess.run([str(exe), *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


# The two sample photos show a palace and a flower: class folders named as ImageNet's classes, so
# that the confusion matrix applies too.
PHOTO_CLASSES = ("palace", "daisy")


def make_photos(folder: Path, n: int, seed: int = 0) -> None:
    """`n` 224x224 JPEGs in class folders: random square crops (160-420 px) of the two bundled
    sample photos (china.jpg in palace/, flower.jpg in daisy/)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # two (427, 640, 3) uint8 photos
    rng = np.random.default_rng(seed)
    for name in PHOTO_CLASSES:
        (folder / name).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        a = photos[i % 2]
        s = int(rng.integers(160, 421))
        y, x = int(rng.integers(0, a.shape[0] - s + 1)), int(rng.integers(0, a.shape[1] - s + 1))
        crop = Image.fromarray(a[y : y + s, x : x + s]).resize(
            (224, 224), Image.Resampling.BILINEAR
        )
        crop.save(folder / PHOTO_CLASSES[i % 2] / f"photo{i:03d}.jpg", quality=92)


def resnet18_report(n_photos: int) -> None:
    """Time `convlens report --model torchvision:resnet18 --weights DEFAULT --images DIR`."""
    import torchvision

    tmp = Path(tempfile.mkdtemp(prefix="convlens-report-r18-"))
    try:
        w = torchvision.models.ResNet18_Weights.DEFAULT
        hub = tmp / "torch-home" / "hub" / "checkpoints"
        hub.mkdir(parents=True)
        torch.manual_seed(0)
        torch.save(torchvision.models.resnet18().state_dict(), hub / Path(w.url).name)
        make_photos(tmp / "photos", n_photos)
        exe = Path(sys.executable).with_name("convlens")
        cmd = [str(exe), "report", "--model", "torchvision:resnet18", "--weights", "DEFAULT",
               "--images", str(tmp / "photos"), "--out", str(tmp / "report.html")]  # fmt: skip
        env = {**os.environ, "TORCH_HOME": str(tmp / "torch-home"), "COLUMNS": "200"}
        load0 = os.getloadavg()
        t = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t
        load1 = os.getloadavg()
        print(f"# convlens report --model torchvision:resnet18 --weights DEFAULT --images "
              f"<{n_photos} photos 224x224>: {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs, torch {torch.__version__}")  # fmt: skip
        print(f"load average before {load0[0]:.1f}, after {load1[0]:.1f} (1 min)")
        print("\n| section | status | seconds |\n| --- | --- | ---: |")
        line = re.compile(r"^\s+(.+?): (done|not shown|failed) \(([\d.]+) s\)")
        for text in done.stderr.splitlines():
            m = line.match(text)
            if m:
                print(f"| {m.group(1)} | {m.group(2)} | {m.group(3)} |")
        print(f"| **wall, process start to exit** | | **{wall:.1f}** |")
        summary = [t for t in done.stderr.splitlines() if t.startswith("report:")]
        print("\n" + "\n".join(summary))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", nargs="?", choices=["demo", "resnet18"], default="demo")
    ap.add_argument("--data", default="sample")
    ap.add_argument("--keep", type=Path, default=None, help="Write the demo run here and keep it.")
    ap.add_argument("--photos", type=int, default=64, help="resnet18: how many photos.")
    args = ap.parse_args()
    if args.what == "resnet18":
        resnet18_report(args.photos)
        return

    tmp = Path(tempfile.mkdtemp(prefix="convlens-demo-"))
    out = args.keep or tmp / "demo"
    if args.keep and out.exists():
        shutil.rmtree(out)
    try:
        print(f"# convlens demo / report benchmark: {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs, torch {torch.__version__}, load average "
              f"{os.getloadavg()[0]:.1f}")  # fmt: skip
        demo_s = convlens("demo", "--data", args.data, "--out", str(out))
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        train_s = sum(float(r.get("seconds", 0.0)) for r in rows)
        print(f"convlens demo: {demo_s:.1f} s wall (training {train_s:.1f} s over {len(rows)} epochs), "
              f"test accuracy {100 * rows[-1]['test_acc']:.2f} %")  # fmt: skip
        report_s = convlens("report", str(out), "--out", str(out / "again.html"))
        print(f"convlens report: {report_s:.1f} s wall (process start to exit)")

        from convlens.render.report import write_report

        _, report = write_report(out, out / "again.html")
        print("\n| section | status | seconds |\n| --- | --- | ---: |")
        for s in report.sections:
            print(f"| {s.title} | {s.status} | {s.seconds:.1f} |")
        print(f"| total (in process) | | {report.seconds:.1f} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
