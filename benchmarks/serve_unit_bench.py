"""Latency of the unit-computation endpoint (issue 24): GET /api/subjects/NAME/unit, target <= 100 ms.

Subjects: LeNet-5 (1 x 28 x 28) and ResNet-20 (3 x 32 x 32), random weights (the numbers do not
change the work), 16 random images each. Each request asks for a random unit (layer, channel, row,
column) of a random conv layer for a random image, through FastAPI's TestClient (the app in this
process, no socket). The reference is the unavoidable part: one plain forward pass of the model on
one image under `torch.inference_mode()`; the ratio is what the hooks, the hand computation and the
JSON cost on top.

Run: `python benchmarks/serve_unit_bench.py [--repeat 200] [--threads 1]`.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time

import numpy as np
import torch
from fastapi.testclient import TestClient

from convlens import models, subjects
from convlens.data.dataset import Dataset
from convlens.serve import create_app, from_subject


def percentiles(ms: list[float]) -> str:
    a = np.asarray(ms)
    return f"p50 {np.percentile(a, 50):6.1f} ms  p95 {np.percentile(a, 95):6.1f} ms  (n={len(a)})"


def make(name: str, shape: tuple[int, int, int]) -> subjects.Subject:
    torch.manual_seed(0)
    c = shape[0]
    model = models.create(name, in_channels=c, num_classes=10)
    images = torch.randint(0, 256, (16, *shape), dtype=torch.uint8)
    data = Dataset(
        name="random",
        split="test",
        images=images,
        labels=torch.zeros(16, dtype=torch.int64),
        classes=[str(i) for i in range(10)],
        mean=(0.5,) * c,
        std=(0.25,) * c,
    )
    pre = subjects.Preprocess(channels=c, size=shape[1:], mean=(0.5,) * c, std=(0.25,) * c)
    return subjects.subject(model, preprocess=pre, images=data, name=name)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: steady on a busy CPU)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}")
    rng = random.Random(0)
    for name, shape in (("lenet5", (1, 28, 28)), ("resnet20", (3, 32, 32))):
        s = make(name, shape)
        convs = list(models.conv_layers(s.model))
        with tempfile.TemporaryDirectory() as cache:
            app = create_app([from_subject(s, name=name)], cache_dir=cache)
            with TestClient(app) as client:
                net = client.get(f"/api/subjects/{name}/network").json()
                shapes = {r["name"]: r["output_shape"] for r in net["layers"]}
                x = s.normalize(s.images.images[:1])  # type: ignore[union-attr]
                ref: list[float] = []
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    with torch.inference_mode():
                        s.model(x)
                    ref.append((time.perf_counter() - t) * 1e3)
                ours: list[float] = []
                for i in range(args.repeat + 10):
                    layer = rng.choice(convs)
                    c, h, w = shapes[layer]
                    params = {
                        "image": f"test:{rng.randrange(16)}",
                        "layer": layer,
                        "channel": rng.randrange(c),
                        "row": rng.randrange(h),
                        "col": rng.randrange(w),
                    }
                    t = time.perf_counter()
                    r = client.get(f"/api/subjects/{name}/unit", params=params)
                    dt = (time.perf_counter() - t) * 1e3
                    assert r.status_code == 200 and r.json()["equal"], r.text
                    if i >= 10:  # the first requests warm up the hooks and the allocator
                        ours.append(dt)
        print(f"{name:9s} bare forward  {percentiles(ref)}")
        print(f"{name:9s} GET .../unit  {percentiles(ours)}")
        print(f"{name:9s} ratio p50 {np.percentile(ours, 50) / np.percentile(ref, 50):.1f}x")
    print(f"load after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
