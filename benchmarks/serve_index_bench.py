"""The web app on an indexed subject (issue 22): latency of the views that read the index.

Targets on the 2-core CPU, ResNet-20 over CIFAR-10's 50,000 training images (the neighbours' pool is
all of them):
1. the layer page without activation maximisation (filters and top patches of 16 channels, read
   from the index; a cold request each time, never the result cache): p95 <= 200 ms;
2. a neighbour click (feature neighbours from the index, pixel neighbours by brute force): p95 <= 100 ms;
3. the image view of a data-set image (top-5, every layer's activations with min/max): p95 <= 150 ms.

The index is built first (`build_index`, timed and compared with the bare batched forward of the same
images: the throughput ratio of issue 22). The app runs in uvicorn on 127.0.0.1 in this process; the
requests go through httpx as a browser's would. A ResNet-20 with random weights is enough for
latency (the work does not depend on the weights); pass a run directory to use a trained one.

Run: `CONVLENS_DATA=../shared/data python benchmarks/serve_index_bench.py [--images 50000] [--repeat 40] [--run RUN_DIR]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch
import uvicorn

from convlens import data, models
from convlens.index import build_index
from convlens.serve import create_app
from convlens.serve.catalog import from_subject
from convlens.subjects import Preprocess, from_run, subject
from convlens.train.run_dir import load_run


def percentiles(ms: list[float]) -> str:
    a = np.asarray(ms)
    return f"p50 {np.percentile(a, 50):7.1f} ms  p95 {np.percentile(a, 95):7.1f} ms  (n={len(a)})"


def start(app: object) -> tuple[uvicorn.Server, str]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))  # type: ignore[arg-type]
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    return server, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=50_000, help="CIFAR-10 training images indexed")
    ap.add_argument("--repeat", type=int, default=40)
    ap.add_argument("--run", type=Path, default=None, help="a trained ResNet-20 run directory")
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    print(
        f"# serve-on-index benchmark: {args.images} images, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, load average {os.getloadavg()[0]:.2f}"
    )
    ds = data.load("cifar10", split="train")
    if args.images < len(ds):  # evenly spread, so every class is there
        keep = torch.linspace(0, len(ds) - 1, args.images).round().long()
        ds = dataclasses.replace(ds, images=ds.images[keep], labels=ds.labels[keep])
    if args.run is not None:
        sub = from_run(load_run(args.run), images=ds)
    else:
        torch.manual_seed(0)
        net = models.create("resnet20", num_classes=10)
        pre = Preprocess(channels=3, size=(32, 32), mean=ds.mean, std=ds.std)
        sub = subject(net, preprocess=pre, classes=ds.classes, images=ds, name="resnet20")

    cache = Path(tempfile.mkdtemp(prefix="convlens-serve-index-"))
    # The bare batched forward of the same images: the reference of the index pass's throughput.
    x_all = ds.images
    t = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(ds), 256):
            sub.model(sub.normalize(x_all[i : i + 256]))
    bare = time.perf_counter() - t
    t = time.perf_counter()
    index = build_index(sub, cache_dir=cache, batch_size=256, progress=False)
    built = time.perf_counter() - t
    print(
        f"index pass: {built:.1f} s ({len(ds) / built:,.0f} images/s); bare batched forward "
        f"{bare:.1f} s ({len(ds) / bare:,.0f} images/s): {bare / built:.0%} of the bare throughput; "
        f"layers {index.layers}"
    )

    served = from_subject(sub)
    served.index_dir = cache
    app = create_app([served], cache_dir=cache / "results")
    server, url = start(app)
    api = f"{url}/api/subjects/{served.name}"
    rng = np.random.default_rng(0)
    with httpx.Client(timeout=600) as client:

        def job(body: dict) -> dict:
            j = client.post(f"{api}/jobs/layer", json=body).json()
            while j.get("status", "failed") not in ("done", "failed", "cancelled"):
                time.sleep(0.005)
                j = client.get(f"{url}/api/jobs/{j['id']}").json()
            assert j.get("status") == "done", j
            return dict(j)

        assert served.index is not None, "the server did not find the index"
        # Warm-up: summary, default layer, first forward passes.
        client.post(f"{api}/predict", json={"image": "test:0"}).raise_for_status()
        client.get(f"{api}/neighbors", params={"index": 0, "k": 8}).raise_for_status()

        # 1. Layer page without actmax: every (layer, 16-channel window) once, so never cached.
        ms = []
        windows = [
            (layer, s)
            for s in range(0, 64)
            for layer in index.layers
            if s + 16 <= index.units(layer).values.shape[0]
        ]
        for n, (layer, s) in enumerate(windows[: args.repeat]):
            t = time.perf_counter()
            job({"layer": layer, "start": s, "count": 16, "parts": ["filters", "patches"]})
            ms.append((time.perf_counter() - t) * 1e3)
            if n == 0:
                ms.pop()  # the first one also traces the receptive fields
        print(f"layer page without actmax (16 channels, index):  {percentiles(ms)}")

        # 2. Neighbour clicks on random images.
        ms = []
        for i in rng.choice(len(ds), args.repeat, replace=False):
            t = time.perf_counter()
            client.get(f"{api}/neighbors", params={"index": int(i), "k": 8}).raise_for_status()
            ms.append((time.perf_counter() - t) * 1e3)
        print(f"neighbour click ({len(ds):,} points):            {percentiles(ms)}")

        # 3. Image view of a data-set image.
        ms = []
        for i in rng.choice(len(ds), args.repeat, replace=False):
            t = time.perf_counter()
            client.post(f"{api}/predict", json={"image": f"test:{int(i)}"}).raise_for_status()
            ms.append((time.perf_counter() - t) * 1e3)
        print(f"image view (top-5 + every layer's activations): {percentiles(ms)}")
    server.should_exit = True
    print(f"# load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
