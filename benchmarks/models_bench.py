"""Model zoo benchmark (issue 3, part 1): counting parameters on the meta device against building.

The work: the parameter count of every registered model at the paper's input channels and
classes (what `convlens models` prints).

- ours: `convlens.models.num_parameters`, which builds each model under `torch.device("meta")`:
  parameters have shapes but no storage, and initialisers do nothing;
- reference: the textbook way, `sum(p.numel() for p in create(name).parameters())`, building
  each model on the CPU (allocating and initialising 1.4 billion parameters over the zoo).

Both run in this one process; the counts must agree exactly. Printed: seconds for each and the
ratio. Target: the whole listing in well under a second of CPU, >= 20x faster than the reference.

Run: `.venv/bin/python benchmarks/models_bench.py` (about a minute on 2 cores; `--names` picks
a subset).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from convlens import models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", nargs="*", default=None, help="models (default: all registered)")
    args = parser.parse_args()
    names = args.names or models.names()
    torch.set_num_threads(2)

    # Warm-up: imports and first-call overheads out of both timings.
    models.num_parameters("resnet20")
    sum(p.numel() for p in models.create("resnet20").parameters())

    t0 = time.perf_counter()
    ours = {n: models.num_parameters(n) for n in names}
    t_ours = time.perf_counter() - t0

    t_ref = 0.0
    reference = {}
    for n in names:
        spec = models.info(n)
        t0 = time.perf_counter()
        model = models.create(n, num_classes=spec.num_classes, in_channels=spec.input_size[0])
        reference[n] = sum(p.numel() for p in model.parameters())
        t_ref += time.perf_counter() - t0
        del model
    assert ours == reference, {n: (ours[n], reference[n]) for n in names if ours[n] != reference[n]}

    total = sum(ours.values())
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, 2 threads")
    print(f"{len(names)} models, {total:,} parameters in all (counts agree)")
    print(f"ours (meta device)   {t_ours:8.3f} s")
    print(f"reference (CPU build) {t_ref:7.3f} s")
    print(f"ratio                {t_ref / t_ours:8.1f}x")


if __name__ == "__main__":
    main()
