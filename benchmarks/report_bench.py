"""The demo and the HTML report (issue 8): wall time of `convlens demo`, its accuracy, report time.

Targets on a 2-core CPU: the whole `convlens demo` (LeNet-5 on the bundled sample, then the report) in
at most 3 minutes at >= 85 % test accuracy; the report of that run in at most 60 s.

1. `convlens demo --out TMP` as a subprocess, exactly as `make demo` runs it: wall time from start to
   exit (imports, training, report), the final test accuracy from the run's metrics.jsonl.
2. `convlens report TMP --out TMP/again.html` as a subprocess: wall time of the report alone.
3. The report once more in this process, with the seconds each section took.

Run: `.venv/bin/python benchmarks/report_bench.py [--data sample] [--keep DIR]`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def convlens(*args: str) -> float:
    """Run the `convlens` console script of this interpreter's environment; return its wall time."""
    exe = Path(sys.executable).with_name("convlens")
    t = time.perf_counter()
    subprocess.run([str(exe), *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="sample")
    ap.add_argument("--keep", type=Path, default=None, help="Write the demo run here and keep it.")
    args = ap.parse_args()

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
