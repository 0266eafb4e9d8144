"""Summary benchmark (issue 3): `convlens.summary` against `torchinfo.summary`, ResNet-152 at 224x224.

Both summarise the same model object in this one process: ours traces it on the meta device (shapes,
parameters, MACs and receptive fields, no arithmetic), torchinfo runs a real forward pass on a zero
batch of one image (its default). The totals are asserted equal before any timing is trusted:
parameters exactly; MACs up to the documented convention difference (torchinfo also counts one
mult-add per bias per output position and one per BatchNorm parameter; ResNet-152 has no conv biases,
so the difference is the fc bias plus the BatchNorm parameters).

Printed: the totals of both, the median wall time of `--repeats` runs of each (after one untimed
warm-up run each), and the ratio. Target: ours >= 5x faster. Every timed call is a whole summary
from scratch: nothing is kept from one call to the next. The median CPU time (all threads) and the
load average are printed too: torchinfo's forward uses every thread, ours one core, so on a busy
machine the wall-clock ratio moves with the load.

Run: `.venv/bin/python benchmarks/summary_bench.py` (about a minute on 2 busy cores).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torchinfo
import torchvision
from torch import nn

import convlens


def median_seconds(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds of `repeats` calls after one untimed warm-up call."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet152", help="a torchvision model name")
    parser.add_argument("--size", type=int, default=224, help="input height = width")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    model: nn.Module = torchvision.models.get_model(args.model, weights=None).eval()
    size = (3, args.size, args.size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = convlens.summary(model, size)
        theirs = torchinfo.summary(model, input_size=(1, *size), verbose=0, depth=100)

    # Same totals, or the timing compares different work.
    n_params = sum(p.numel() for p in model.parameters())
    assert ours.totals["params"] == theirs.total_params == n_params, (
        ours.totals["params"],
        theirs.total_params,
    )
    bn_params = sum(
        p.numel()
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for p in m.parameters()
    )
    bias_terms = sum(
        m.bias.numel() * (1 if isinstance(m, nn.Linear) else 0)
        for m in model.modules()
        if isinstance(m, nn.Linear | nn.Conv2d) and m.bias is not None
    )
    assert not any(isinstance(m, nn.Conv2d) and m.bias is not None for m in model.modules())
    assert theirs.total_mult_adds == ours.totals["macs"] + bn_params + bias_terms, (
        theirs.total_mult_adds,
        ours.totals["macs"],
    )

    load = os.getloadavg()[0]
    t_ours, cpu_ours = median_seconds(
        lambda: convlens.summary(model, size, warn=False), args.repeats
    )
    t_theirs, cpu_theirs = median_seconds(
        lambda: torchinfo.summary(model, input_size=(1, *size), verbose=0, depth=100),
        args.repeats,
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), torchinfo {torchinfo.__version__}"
    )
    print(f"model: {args.model} at {'x'.join(map(str, size))}, {len(ours.layers)} rows")
    print(f"params: ours {ours.totals['params']:,}  torchinfo {theirs.total_params:,}")
    print(
        f"MACs:   ours {ours.totals['macs']:,}  torchinfo {theirs.total_mult_adds:,} "
        f"(= ours + {bn_params:,} BatchNorm params + {bias_terms:,} fc biases)"
    )
    print(
        f"time (median of {args.repeats}): ours {t_ours * 1e3:.1f} ms  torchinfo {t_theirs * 1e3:.1f} ms"
        f"  (CPU time: ours {cpu_ours * 1e3:.1f} ms  torchinfo {cpu_theirs * 1e3:.1f} ms)"
    )
    print(f"load average before timing: {load:.2f} (1 min)")
    print(f"speed-up: {t_theirs / t_ours:.1f}x (target >= 5x)")


if __name__ == "__main__":
    main()
