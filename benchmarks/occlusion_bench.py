"""Occlusion: convlens's incremental engine against Captum's `Occlusion`, in one process.

Same model (random weights, eval mode), same image, window, stride and baseline (0) for both; Captum
runs at its best `perturbations_per_eval` of {1, 16, 64}. Cases (issue 6):

* ResNet-18 and VGG-16 at 224x224, window 16, stride 8 (27 x 27 = 729 windows);
* LeNet-5 at 28x28, window 4, stride 1 (25 x 25 = 625 windows).

Captum's best `perturbations_per_eval` is chosen on a pilot run (the same model and image, stride
doubled, about a quarter of the windows; all three values timed) and then timed on the full grid; with
`--full-sweep` every value is timed on the full grid (VGG-16 then takes tens of minutes). Prints
wall and process CPU seconds for both, the ratio, and the largest absolute difference between the
two attributions (relative to the largest attribution).

This VM's speed drifts by +-20 % over minutes, so ``--repeat N`` runs N rounds of ours then Captum
back to back and prints each round's ratio and their median.

Usage::

    .venv/bin/python benchmarks/occlusion_bench.py [--models resnet18,vgg16,lenet5] [--threads 2]
        [--repeat 1]
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
    occlusion(
        model, x[:, :, :64, :64] if shape[1] > 64 else x, window=window, stride=stride
    )  # warm-up

    def run_ours() -> tuple[torch.Tensor, Timing]:
        return timed(lambda: occlusion(model, x, target, window=window, stride=stride).attribution)

    if full_sweep:
        ours, t_ours = run_ours()
        sweep = {p: timed(lambda p=p: captum(model, x, window, stride, target, p)) for p in PPE}
        best = min(PPE, key=lambda p: sweep[p][1].wall)
        ref, t_ref = sweep[best]
        pilot = ", ".join(f"ppe={p}: {sweep[p][1].wall:.1f}s" for p in PPE)
        rounds = [(t_ref, t_ours)]
    else:
        pw, ps = max(window, 2 * stride), 2 * stride  # about a quarter of the windows
        pilot_times = {p: timed(lambda p=p: captum(model, x, pw, ps, target, p))[1] for p in PPE}
        best = min(PPE, key=lambda p: pilot_times[p].wall)
        pilot = f"pilot (window {pw}, stride {ps}): " + ", ".join(
            f"ppe={p}: {pilot_times[p].wall:.2f}s" for p in PPE
        )
        # Rounds of ours then Captum, back to back: the machine's speed drifts over minutes, and
        # each round's ratio compares the two at (nearly) the same moment.
        rounds = []
        for _ in range(repeat):
            ours, t_ours = run_ours()
            ref, t_ref = timed(lambda: captum(model, x, window, stride, target, best))
            rounds.append((t_ref, t_ours))

    diff = float((ours - ref).abs().max())
    scale = float(ref.abs().max()) or 1.0
    for t_ref, t_ours in rounds:
        print(
            f"{name:9s} {shape[1]}x{shape[2]} window {window} stride {stride}: "
            f"captum (ppe={best}) {t_ref.wall:7.2f}s wall {t_ref.cpu:7.2f}s cpu | "
            f"convlens {t_ours.wall:6.2f}s wall {t_ours.cpu:6.2f}s cpu | "
            f"speed-up {t_ref.wall / t_ours.wall:5.1f}x wall {t_ref.cpu / t_ours.cpu:5.1f}x cpu | "
            f"max |diff| {diff:.2e} ({diff / scale:.1e} of max |attr|)"
        )
    if len(rounds) > 1:
        ratios = sorted(r.wall / o.wall for r, o in rounds)
        print(f"          median speed-up of {len(rounds)} rounds {ratios[len(ratios) // 2]:.1f}x")
    print(f"          captum {pilot}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,vgg16,lenet5")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--full-sweep", action="store_true", help="time every ppe on the full grid")
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds of ours then Captum (each ratio, and the median)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in args.models.split(","):
        bench(name.strip(), args.full_sweep, args.repeat)


if __name__ == "__main__":
    main()
