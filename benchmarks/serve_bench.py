"""`convlens serve` latency (issue 18) on a trained ResNet-20 CIFAR-10 run, over real HTTP.

Targets on a 2-core CPU:
1. the image view of an uploaded photo (upload + predictions + activations of every conv and pooling
   layer): p95 <= 150 ms;
2. a cached layer grid (64 channels: actmax images and top patches): p95 <= 100 ms;
3. a cold 64-channel layer grid: its first progress event within 1 s.

The app runs in uvicorn on 127.0.0.1 in this process (a thread) with a fresh cache; requests go
through httpx, as a browser's would. The reference for (1) is the same work without HTTP: the
predictions and `convlens.inspect.activations` called directly, in this process; the ratio is the
cost of serving.

Run: `python benchmarks/serve_bench.py RUN_DIR [--repeat 50] [--layer layer3.2.conv2]`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch
import uvicorn
from PIL import Image

from convlens import inspect
from convlens.serve import create_app, from_run_dir


def percentiles(ms: list[float]) -> str:
    a = np.asarray(ms)
    return f"p50 {np.percentile(a, 50):6.1f} ms  p95 {np.percentile(a, 95):6.1f} ms  (n={len(a)})"


def photo(seed: int) -> bytes:
    """A 640 x 427 photo (scikit-learn's china.jpg), one pixel changed per seed: a new upload each time."""
    from sklearn.datasets import load_sample_image

    arr = load_sample_image("china.jpg").copy()
    arr[0, 0] = (seed * 37 % 256, seed * 11 % 256, seed % 256)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def start(app: object) -> tuple[uvicorn.Server, str]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))  # type: ignore[arg-type]
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    return server, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="A trained ResNet-20 CIFAR-10 run directory.")
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--layer", default="layer3.2.conv2", help="A 64-channel layer for the grid.")
    ap.add_argument(
        "--steps", type=int, default=48, help="Activation-maximisation steps (the app's default)."
    )
    ap.add_argument(
        "--browser", action="store_true", help="Also time the t-SNE canvas in chromium."
    )
    ap.add_argument("--points", type=int, default=50_000, help="Points on the t-SNE canvas.")
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    print(f"# serve benchmark: {args.run}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip

    served = from_run_dir(args.run)
    app = create_app([served], cache_dir=tempfile.mkdtemp(prefix="convlens-serve-bench-"))
    server, url = start(app)
    api = f"{url}/api/subjects/{served.name}"
    with httpx.Client(timeout=600) as client:
        # 1. The image view of an uploaded photo.
        def image_view(seed: int) -> dict:
            up = client.post(f"{api}/uploads", files={"file": ("p.jpg", photo(seed), "image/jpeg")})
            up.raise_for_status()
            r = client.post(f"{api}/predict", json={"image": up.json()["image"]})
            r.raise_for_status()
            return dict(r.json())

        for seed in range(5):  # warm-up: summary, first forward passes, allocator
            body = image_view(10_000 + seed)
        photos = [photo(seed) for seed in range(args.repeat)]  # encoded before timing
        ms = []
        for seed in range(args.repeat):
            t = time.perf_counter()
            up = client.post(
                f"{api}/uploads", files={"file": ("p.jpg", photos[seed], "image/jpeg")}
            )
            client.post(f"{api}/predict", json={"image": up.json()["image"]}).raise_for_status()
            ms.append((time.perf_counter() - t) * 1e3)
        n_layers = len(body["layers"])
        print(f"image view (upload + top-5 + {n_layers} layers' activations): {percentiles(ms)}")

        s = served.subject
        x = s.normalize(s.images.images[:1]) if s.images is not None else torch.zeros(1, 3, 32, 32)
        ref = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            with torch.inference_mode():
                s.model(x).softmax(1).topk(5)
            inspect.activations(s.model, x, max_layers=10_000)
            ref.append((time.perf_counter() - t) * 1e3)
        print(
            f"  reference, the same computation without HTTP:  {percentiles(ref)}  "
            f"ratio of medians {statistics.median(ms) / statistics.median(ref):.2f}x"
        )

        # 3. A cold 64-channel layer grid: time to the first progress event, to each step, to the end.
        params = {"layer": args.layer, "count": 64, "steps": args.steps}
        t = time.perf_counter()
        job = client.post(f"{api}/jobs/layer", json=params).json()
        first = None
        with client.stream("GET", f"{url}/api/jobs/{job['id']}/events") as events:
            for line in events.iter_lines():
                if not line.startswith("data: "):
                    continue
                e = json.loads(line[6:])
                now = time.perf_counter() - t
                first = first if first is not None else now
                print(f"  {now:7.2f} s  {e['done']}/{e['total']}  {e['status']:8s} {e['message']}")
        total = time.perf_counter() - t
        result = client.get(f"{url}/api/jobs/{job['id']}").json()
        assert result["status"] == "done", result["error"]
        n = len(result["result"]["channels"])
        print(
            f"cold {n}-channel grid of {args.layer}: first progress after {first * 1e3:.0f} ms, "
            f"done after {total:.1f} s"
        )

        # 2. The same grid again: cached on disk.
        ms = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            j = client.post(f"{api}/jobs/layer", json=params).json()
            body = client.get(f"{url}/api/jobs/{j['id']}").json()
            ms.append((time.perf_counter() - t) * 1e3)
        assert body["status"] == "done" and body["result"] == result["result"]
        size = len(json.dumps(body)) / 1e3
        print(f"cached {n}-channel grid ({size:.0f} kB of JSON): {percentiles(ms)}")
        if args.browser:
            canvas_frames(app, served, url, args.points)
    server.should_exit = True


def canvas_frames(app: object, served: object, url: str, points: int) -> None:
    """4. The embedding view's canvas with `points` points: frame times while zooming and panning.

    The map is synthetic (ten Gaussian clusters, stored as the cached t-SNE result), so that the
    drawing is measured without minutes of t-SNE; frames are timed in the page with
    requestAnimationFrame while wheel and drag events arrive.
    """
    from playwright.sync_api import sync_playwright

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, points)
    centres = rng.normal(0, 30, (10, 2))
    xy = centres[labels] + rng.normal(0, 4, (points, 2))
    n_images = len(served.subject.images)  # type: ignore[attr-defined]
    result = {
        "indices": [i % n_images for i in range(points)],
        "x": np.round(xy[:, 0], 3).tolist(),
        "y": np.round(xy[:, 1], 3).tolist(),
        "labels": labels.tolist(),
        "classes": served.subject.classes,  # type: ignore[attr-defined]
    }
    app.state.cache.put(served.key, "embedding", {"limit": None}, result)  # type: ignore[attr-defined]
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        t = time.perf_counter()
        page.goto(url + "/#embedding")
        page.wait_for_function(
            "document.querySelector('.legend') && document.querySelector('.legend').children.length",
            timeout=120_000,
        )
        print(f"embedding view with {points:,} points: shown after {time.perf_counter() - t:.2f} s")
        frames = page.evaluate(
            """async () => {
              const c = document.querySelector('#tsne');
              const frame = () => new Promise((r) => requestAnimationFrame(r));
              const gaps = [];
              await frame();
              for (let i = 0; i < 120; i++) {
                const t = performance.now();
                if (i % 2) c.dispatchEvent(new WheelEvent('wheel', { deltaY: i % 4 === 1 ? -120 : 120,
                  clientX: 450, clientY: 300, bubbles: true, cancelable: true }));
                else {
                  c.dispatchEvent(new MouseEvent('mousedown', { clientX: 400, clientY: 300, bubbles: true }));
                  c.dispatchEvent(new MouseEvent('mousemove', { clientX: 410, clientY: 305, buttons: 1, bubbles: true }));
                  window.dispatchEvent(new MouseEvent('mouseup', { bubbles: true }));
                }
                await frame();
                gaps.push(performance.now() - t);
              }
              return gaps;
            }"""
        )
        print(f"  frame time while zooming / panning: {percentiles(frames)}")
        browser.close()


if __name__ == "__main__":
    main()
