"""Web image view (POST .../predict) of ResNet-20 at 32x32: the view-based compute.predict (every
conv, pool and block output, the logits, min/max) against main's computation (softmax + every conv
and pool layer), in one process, interleaved.

Run: `PYTHONPATH=src python benchmarks/views_predict_bench.py` (random weights: latency only).
"""

import os
import statistics
import time

import torch

from convlens import inspect, models
from convlens.serve import compute, from_subject
from convlens.serve.encode import atlas, data_url, image_png
from convlens.subjects import subject

torch.set_num_threads(2)
torch.manual_seed(0)
net = models.create("resnet20", num_classes=10, in_channels=3)
s = subject(net, input_size=(3, 32, 32))
served = from_subject(s, name="r20")
img = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)


def old():
    x = s.normalize(img[None])
    with torch.inference_mode():
        probs = s.model(x).softmax(dim=1)[0]
    acts = inspect.activations(s.model, x, max_layers=10_000)
    p, idx = probs.topk(5)
    return {
        "input": data_url(image_png(img)),
        "top": [(int(i), float(v)) for v, i in zip(p, idx, strict=True)],
        "layers": [{"name": n, **atlas(a[0])} for n, a in acts.items()],
    }


def new():
    return compute.predict(served, img)


for f in (old, new):
    f()
a, b = [], []
for _ in range(30):
    t = time.perf_counter()
    old()
    a.append(1000 * (time.perf_counter() - t))
    t = time.perf_counter()
    new()
    b.append(1000 * (time.perf_counter() - t))


def q(v: list[float]) -> tuple[float, float]:
    return statistics.median(v), sorted(v)[int(0.95 * len(v)) - 1]


print(f"layers: main {len(old()['layers'])}, views {len(new()['layers'])}")
print(f"main  median {q(a)[0]:.1f} ms p95 {q(a)[1]:.1f} ms")
print(f"views median {q(b)[0]:.1f} ms p95 {q(b)[1]:.1f} ms  ratio {q(b)[0] / q(a)[0]:.2f}")
print("load", os.getloadavg())
