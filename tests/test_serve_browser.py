"""`convlens serve` end to end in a real browser (Debian's chromium through Playwright).

The app runs in uvicorn on 127.0.0.1 on a trained LeNet-5 run; every request to anywhere else is
blocked and recorded, so the page must work offline. The walk: open the network view and click a
layer (its channel grid appears), upload a photo (predictions, a Grad-CAM overlay), click a unit of
a feature map (its receptive-field box appears, 14 x 14 input pixels for conv2), hover a t-SNE point
(its thumbnail appears), move a slider of the arithmetic view. Screenshots of every view go to
artifacts/serve-*.png (docs/serve-*.png are copies of them).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
import uvicorn

from convlens.serve import create_app, from_run_dir

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CONVLENS_CHROMIUM", "/usr/bin/chromium")
NAME = "lenet5-sample"


def _browser_or_skip() -> str:
    ci = bool(os.environ.get("CI"))
    found = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if not found:
        if ci:
            pytest.fail("chromium is required on CI (.ci/run installs Debian's chromium)")
        pytest.skip(
            "Debian's chromium is not installed (apt-get install chromium); CI runs this test"
        )
    pytest.importorskip("playwright.sync_api")
    return found


@pytest.fixture(scope="module")
def url(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app on a free port of 127.0.0.1, served by uvicorn in a thread."""
    folder = tmp_path_factory.mktemp("runs")
    (folder / NAME).symlink_to(trained_run, target_is_directory=True)
    app = create_app([from_run_dir(folder / NAME)], cache_dir=tmp_path_factory.mktemp("cache"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real photo (scikit-learn's bundled china.jpg), 640 x 427 RGB JPEG."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    path = tmp_path_factory.mktemp("photo") / "china.jpg"
    Image.fromarray(load_sample_image("china.jpg")).save(path, quality=90)
    return path


@pytest.mark.browser
def test_serve_in_a_real_browser(url: str, photo: Path) -> None:
    executable = _browser_or_skip()
    from playwright.sync_api import expect, sync_playwright

    outside: list[str] = []
    errors: list[str] = []
    shots = REPO / "artifacts"
    shots.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=executable,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update"],
        )  # fmt: skip
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})

            def route(r: object) -> None:
                req = r.request  # type: ignore[attr-defined]
                if req.url.startswith((url, "data:", "blob:")):
                    r.continue_()  # type: ignore[attr-defined]
                else:
                    outside.append(req.url)
                    r.abort()  # type: ignore[attr-defined]

            page.route("**/*", route)
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.set_default_timeout(30_000)

            # 1. Network view -> click a layer -> its channel grid.
            page.goto(url, wait_until="load")
            expect(page.locator("g.layer")).to_have_count(13)  # the input and 12 layers
            page.screenshot(path=str(shots / "serve-network.png"))
            page.locator('g[data-layer="conv1"]').click()
            expect(page.locator("figure.channel")).to_have_count(6)
            expect(page.locator("figure.channel img.actmax")).to_have_count(6)
            expect(page.locator("figure.channel img.filter")).to_have_count(6)
            page.screenshot(path=str(shots / "serve-layer.png"))

            # 2. Image view: upload a photo -> predictions -> Grad-CAM overlay.
            page.goto(url + "#image")
            expect(page.locator("#top5 li")).to_have_count(5)
            page.set_input_files("#upload", str(photo))
            expect(page.locator("#top5 li")).to_have_count(5)
            page.wait_for_function("document.querySelector('img.input').src.length > 100")
            page.locator('button[data-method="gradcam"]').click()
            overlay = page.locator('img.overlay[data-method="gradcam"]')
            expect(overlay).to_be_visible()
            assert page.evaluate("document.querySelector('img.overlay').naturalWidth") == 28

            # 3. Click a unit of conv2: its receptive field, 14 x 14 of the 28 input pixels.
            tile = page.locator('canvas[data-layer="conv2"]').first
            tile.click(position={"x": 2, "y": 2})
            box = page.locator("#rf-box")
            expect(box).to_be_visible()
            stage = page.locator(".stage").bounding_box()
            rf = box.bounding_box()
            assert stage is not None and rf is not None
            assert abs(rf["width"] - stage["width"] * 14 / 28) < 2
            expect(page.locator("#rf-note")).to_contain_text("14×14")
            page.screenshot(path=str(shots / "serve-image.png"), full_page=True)

            # 4. Embedding: hover a point -> its thumbnail.
            page.goto(url + "?limit=300#embedding")
            page.wait_for_function(
                "(() => { const c = document.querySelector('#tsne'); if (!c) return false;"
                " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                " for (let i = 3; i < d.length; i += 4) if (d[i]) return true; return false; })()"
            )
            xy = page.evaluate(
                "(() => { const c = document.querySelector('#tsne');"
                " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                " for (let i = 3; i < d.length; i += 4) if (d[i] === 255) {"
                "   const p = (i - 3) / 4; return [p % c.width + 1, Math.floor(p / c.width) + 1]; } })()"
            )
            canvas = page.locator("#tsne").bounding_box()
            assert canvas is not None
            page.mouse.move(canvas["x"] + xy[0], canvas["y"] + xy[1])
            tip = page.locator("#tsne-tip img")
            expect(tip).to_be_visible()
            page.wait_for_function("document.querySelector('#tsne-tip img').naturalWidth === 28")
            page.mouse.click(canvas["x"] + xy[0], canvas["y"] + xy[1])
            expect(page.locator("#neighbours .strip img")).to_have_count(17)  # query + 8 + 8
            page.wait_for_function(
                "[...document.querySelectorAll('#neighbours img')].every(i => i.naturalWidth === 28)"
            )
            page.screenshot(path=str(shots / "serve-embedding.png"), full_page=True)

            # 5. Arithmetic: a slider changes the numbers.
            page.goto(url + "#arithmetic")
            expect(page.locator("#out-size")).to_have_text("4×4×2")
            page.locator('input[name="padding"]').fill("0")
            expect(page.locator("#out-size")).to_have_text("3×3×2")
            expect(page.locator("#params-unshared")).to_have_text(str(3 * 3 * 2 * 28))
            page.screenshot(path=str(shots / "serve-arithmetic.png"))
        finally:
            browser.close()
    assert outside == []
    assert errors == []
