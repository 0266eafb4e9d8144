"""Occlusion: convlens's `occlusion()` (its auto choice, and its plain path) against Captum, in one process.

Same model (random weights, eval mode), same image, window, stride and baseline (0) for all; Captum
runs at its best `perturbations_per_eval` of {1, 16, 64}. Cases (issues 6 and 15):

* ResNet-18 and VGG-16 at 224x224, window 16, stride 8 (27 x 27 = 729 windows);
* LeNet-5 at 28x28, window 4, stride 1 (25 x 25 = 625 windows).

Captum's best `perturbations_per_eval` is chosen on a pilot run (the same model and image, stride
doubled, about a quarter of the windows; all three values timed); with `--full-sweep` every value is
timed on the full grid (VGG-16 then takes tens of minutes). Then ``--repeat N`` rounds of Captum,
``occlusion(method="auto")`` and ``occlusion(method="plain")`` back to back, in a rotating order
(this VM's speed drifts over minutes). Prints wall and process CPU seconds, each ratio to Captum,
which path auto chose, the largest difference from Captum's attribution (relative to its largest
value), and the median ratio over the rounds.

Usage::

    .venv/bin/python benchmarks/occlusion_bench.py [--models resnet18,vgg16,lenet5] [--threads 2]
        [--repeat 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from captum.attr import Occlusion

from convlens import models
from convlens.inspect.occlusion import occlusion

CASES = {  # model: (input shape, window, stride)
    "resnet18": ((3, 224, 224), 16, 8),
    "vgg16": ((3, 224, 224), 16, 8),
    "lenet5": ((1, 28, 28), 4, 1),
}
PPE = (1, 16, 64)


@dataclass
class Timing:
    wall: float
    cpu: float


def timed(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, Timing]:
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, Timing(time.perf_counter() - w, time.process_time() - c)


def captum(
    model: torch.nn.Module, x: torch.Tensor, window: int, stride: int, target: int, ppe: int
) -> torch.Tensor:
    C = x.shape[1]
    with torch.no_grad():
        return Occlusion(model).attribute(
            x, sliding_window_shapes=(C, window, window), strides=(C, stride, stride),
            baselines=0.0, target=target, perturbations_per_eval=ppe,
        )  # fmt: skip


def bench(name: str, full_sweep: bool, repeat: int) -> None:
    shape, window, stride = CASES[name]
    torch.manual_seed(0)
    model = models.create(
        name, in_channels=shape[0], num_classes=10 if name == "lenet5" else 1000
    ).eval()
    x = torch.randn(1, *shape)
    with torch.no_grad():
        target = int(model(x).argmax())
    small = x[:, :, :64, :64] if shape[1] > 64 else x
    for method in ("incremental", "plain"):  # warm-up
        occlusion(model, small, window=window, stride=stride, method=method)

    def ours(method: str) -> tuple[torch.Tensor, Timing]:
        res, t = timed(
            lambda: occlusion(model, x, target, window=window, stride=stride, method=method)
        )  # type: ignore[arg-type]
        if method == "auto":
            chosen.append(res.method)
        return res.attribution, t

    chosen: list[str] = []
    if full_sweep:
        sweep = {p: timed(lambda p=p: captum(model, x, window, stride, target, p))[1] for p in PPE}
        best = min(PPE, key=lambda p: sweep[p].wall)
        pilot = "full grid: " + ", ".join(f"ppe={p}: {sweep[p].wall:.1f}s" for p in PPE)
    else:
        pw, ps = max(window, 2 * stride), 2 * stride  # about a quarter of the windows
        sweep = {p: timed(lambda p=p: captum(model, x, pw, ps, target, p))[1] for p in PPE}
        best = min(PPE, key=lambda p: sweep[p].wall)
        pilot = f"pilot (window {pw}, stride {ps}): " + ", ".join(
            f"ppe={p}: {sweep[p].wall:.2f}s" for p in PPE
        )
    print(f"{name}: captum's best perturbations_per_eval {best}; {pilot}", flush=True)
    # Rounds of Captum, our auto choice and our plain path back to back, in a rotating order: the
    # machine's speed drifts over minutes, and each round compares the three at nearly one moment.
    runs: dict[str, Callable[[], tuple[torch.Tensor, Timing]]] = {
        "captum": lambda: timed(lambda: captum(model, x, window, stride, target, best)),
        "auto": lambda: ours("auto"),
        "plain": lambda: ours("plain"),
    }
    order = list(runs)
    ratios: dict[str, list[float]] = {"auto": [], "plain": []}
    for r in range(repeat):
        got = {k: runs[k]() for k in order[r % 3 :] + order[: r % 3]}
        ref, t_ref = got["captum"]
        scale = float(ref.abs().max()) or 1.0
        line = [f"round {r + 1}: captum (ppe={best}) {t_ref.wall:6.2f}s wall {t_ref.cpu:6.2f}s cpu"]
        for k in ("auto", "plain"):
            attr, t = got[k]
            ratios[k].append(t_ref.wall / t.wall)
            diff = float((attr - ref).abs().max()) / scale
            label = f"auto={chosen[-1]}" if k == "auto" else k
            line.append(
                f"{label} {t.wall:6.2f}s wall {t.cpu:6.2f}s cpu, {t_ref.wall / t.wall:4.1f}x wall "
                f"{t_ref.cpu / t.cpu:4.1f}x cpu, max |diff| {diff:.1e} of max |attr|"
            )
        print(
            f"{name:9s} {shape[1]}x{shape[2]} w{window} s{stride} " + " | ".join(line), flush=True
        )
    for k, v in ratios.items():
        v = sorted(v)
        print(
            f"          median speed-up over captum's best, {k}: {v[len(v) // 2]:.2f}x ({len(v)} rounds)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,vgg16,lenet5")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--full-sweep", action="store_true", help="time every ppe on the full grid")
    ap.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="rounds of Captum, auto and plain (each ratio, and the median)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in args.models.split(","):
        bench(name.strip(), args.full_sweep, args.repeat)


if __name__ == "__main__":
    main()
