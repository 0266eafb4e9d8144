"""`convlens serve` end to end in a real browser (Debian's chromium through Playwright).

One uvicorn server and one browser page serve the whole module: a trained LeNet-5 run (the bundled
sample data) and a random-weight ResNet-20 without images. Every request to anywhere but the server
is blocked and recorded (the page must work offline), and every console error fails the test that
caused it. Each test walks one interaction a learner makes: the URL keeps the subject, view, layer,
channel and image (reload, back/forward); switching subject keeps the layer valid; overlapping
navigation renders one view; jobs are cancelled when left or on request; the server's own error
sentence is shown; a broken subject is listed but never blocks the others; the image view shows the
true label, colour bars, clipped receptive fields and the unit's computation; the network view has
kernel/stride/padding, zoom and keyboard access; the layer view enlarges patches and explains grey;
the embedding marks the query and its neighbours; the arithmetic steps with numbers and takes
AlexNet's 227, 11, 4; the layout holds at 760 px. Screenshots go to artifacts/serve-*.png
(docs/serve-*.png are copies of them).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
import uvicorn

from convlens.serve import create_app, from_run_dir
from convlens.serve.catalog import from_subject

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CONVLENS_CHROMIUM", "/usr/bin/chromium")
NAME = "lenet5-sample"
RESNET = "resnet20-random"
HALF = "half-trained"
GOOGLENET = "googlenet-random"
SHOTS = REPO / "artifacts"

pytestmark = pytest.mark.browser


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


def _googlenet_subject() -> Any:
    """torchvision's GoogLeNet with random weights (no auxiliary heads), 3 x 224 x 224."""
    import torchvision

    from convlens.subjects import subject

    net = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False)
    return subject(net, input_size=(3, 224, 224), name=GOOGLENET)


def _resnet20_subject() -> Any:
    """A random-weight ResNet-20 on 32 x 32 RGB input, without images (seed 0)."""
    import torch

    from convlens import models
    from convlens.subjects import subject

    torch.manual_seed(0)
    net = models.create("resnet20", num_classes=10, in_channels=3)
    return subject(net, input_size=(3, 32, 32), name=RESNET)


@pytest.fixture(scope="module")
def url(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app on a free port of 127.0.0.1, served by uvicorn in a thread."""
    folder = tmp_path_factory.mktemp("runs")
    (folder / NAME).symlink_to(trained_run, target_is_directory=True)
    # A run whose training has not written its weights yet: listed, greyed, never blocking.
    (folder / HALF).mkdir()
    shutil.copy(trained_run / "run.json", folder / HALF / "run.json")
    served = [
        from_run_dir(folder / HALF),
        from_run_dir(folder / NAME),
        from_subject(_resnet20_subject(), name=RESNET),
        from_subject(_googlenet_subject(), name=GOOGLENET),
    ]
    app = create_app(served, cache_dir=tmp_path_factory.mktemp("cache"))
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


class Watch:
    """What the page did that it must not: requests outside the server, console errors."""

    def __init__(self) -> None:
        self.outside: list[str] = []
        self.errors: list[str] = []


@pytest.fixture(scope="module")
def session(url: str) -> Iterator[tuple[Any, Watch]]:
    """One chromium and one page for the module; requests outside the server are blocked."""
    executable = _browser_or_skip()
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(exist_ok=True)
    watch = Watch()
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=executable,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update"],
        )  # fmt: skip
        page = browser.new_page(viewport={"width": 1280, "height": 900})

        def route(r: Any) -> None:
            req = r.request
            if req.url.startswith((url, "data:", "blob:")):
                r.fallback()
            else:
                watch.outside.append(req.url)
                r.abort()

        def console(m: Any) -> None:
            # A 4xx answer the page turns into a banner is logged by chromium as a failed resource:
            # that is the page working, not an error of its own.
            if m.type == "error" and "the server responded with a status of 4" not in m.text:
                watch.errors.append(m.text)

        page.route("**/*", route)
        page.on("console", console)
        page.on("pageerror", lambda e: watch.errors.append(str(e)))
        page.set_default_timeout(30_000)
        try:
            yield page, watch
        finally:
            browser.close()


@pytest.fixture
def page(session: tuple[Any, Watch], url: str) -> Iterator[Any]:
    """The shared page, at 1280 x 900, checked for outside requests and console errors after."""
    pg, watch = session
    pg.set_viewport_size({"width": 1280, "height": 900})
    watch.errors.clear()
    watch.outside.clear()
    yield pg
    assert watch.outside == []
    assert watch.errors == []


def _open(page: Any, url: str, hash_: str, query: str = "") -> None:
    """Load the page afresh at `hash_` (a full load, so no state leaks between tests)."""
    page.goto("about:blank")
    page.goto(f"{url}{query}#{hash_}", wait_until="load")


def _no_undefined(page: Any) -> None:
    text = page.locator("body").inner_text()
    assert "undefined" not in text and "NaN" not in text and "[object" not in text


def _api(url: str, path: str) -> Any:
    with urllib.request.urlopen(url + path.lstrip("/")) as r:
        return json.loads(r.read())


# ---------------------------------------------------------------- 1. serving that never hides


def test_url_keeps_subject_image_and_history(page: Any, url: str) -> None:
    from playwright.sync_api import expect

    _open(page, url, f"image?subject={NAME}&image=test:0")
    expect(page.locator("#top5 li")).to_have_count(5)
    expect(page.locator('#thumbs img[data-image="test:0"]')).to_have_class(re.compile("selected"))
    second = page.locator("#thumbs img").nth(3)
    chosen = second.get_attribute("data-image")
    second.click()
    expect(page.locator(f'#thumbs img[data-image="{chosen}"]')).to_have_class(
        re.compile("selected")
    )
    assert f"image={chosen.replace(':', '%3A')}" in page.url
    page.reload()
    expect(page.locator(f'#thumbs img[data-image="{chosen}"]')).to_have_class(
        re.compile("selected")
    )
    assert page.locator("#subject").input_value() == NAME
    page.go_back()
    expect(page.locator('#thumbs img[data-image="test:0"]')).to_have_class(re.compile("selected"))
    page.go_forward()
    expect(page.locator(f'#thumbs img[data-image="{chosen}"]')).to_have_class(
        re.compile("selected")
    )
    # The reload keeps the other subject too.
    _open(page, url, f"network?subject={RESNET}")
    expect(page.locator("h2")).to_contain_text(RESNET)
    page.reload()
    expect(page.locator("h2")).to_contain_text(RESNET)
    assert page.locator("#subject").input_value() == RESNET


def test_switching_subject_keeps_the_layer_valid(page: Any, url: str) -> None:
    from playwright.sync_api import expect

    _open(page, url, f"network?subject={NAME}&layer=conv2")
    page.locator("#subject").select_option(RESNET)
    expect(page.locator("h2")).to_contain_text(RESNET)
    # ResNet-20 has conv1 (like LeNet) but no conv2: on the layer view conv2 falls back.
    _open(page, url, f"layer?subject={NAME}&layer=conv2")
    expect(page.locator("#layer-pick")).to_have_value("conv2")
    page.locator("#subject").select_option(RESNET)
    expect(page.locator("#error")).to_contain_text(f"{RESNET} has no layer conv2")
    expect(page.locator("#layer-pick")).not_to_have_value("conv2")
    layer = page.locator("#layer-pick").input_value()
    names = [r["name"] for r in _api(url, f"/api/subjects/{RESNET}/network")["layers"]]
    assert layer in names
    assert "layer=conv2" not in page.url
    page.goto(url + f"#network?subject={NAME}")  # leave: the layer job is cancelled
    expect(page.locator("g.layer").first).to_be_visible()


def test_overlapping_navigation_renders_one_view(page: Any, url: str) -> None:
    from playwright.sync_api import expect

    _open(page, url, f"network?subject={NAME}")
    expect(page.locator("g.layer").first).to_be_visible()
    page.evaluate(
        f"""() => {{
        for (const v of ["image", "layer", "embedding", "image", "arithmetic", "network"])
          location.hash = v + "?subject={NAME}";
        }}"""
    )
    expect(page.locator("g.layer").first).to_be_visible()
    page.wait_for_timeout(1500)  # the abandoned renders finish (or are cancelled) meanwhile
    assert page.locator("main > .viewroot").count() == 1
    assert page.locator("main > .viewroot").get_attribute("data-view") == "network"
    assert page.locator("#top5, #tsne, #channel-grid, #slide").count() == 0


def test_jobs_are_cancelled_when_left_and_on_request(page: Any, url: str) -> None:
    from playwright.sync_api import expect

    held: list[Any] = []
    # Hold the job's progress stream: the job stays "running" as far as the page knows.
    page.route("**/api/jobs/*/events", lambda r: held.append(r))
    try:
        _open(page, url, f"embedding?subject={NAME}", query="?limit=57")
        cancel = page.locator(".progress button.cancel")
        expect(cancel).to_be_visible()
        with page.expect_request(lambda r: r.method == "DELETE" and "/api/jobs/" in r.url):
            cancel.click()
        expect(page.locator(".viewroot")).to_contain_text("cancelled")
        _open(page, url, f"embedding?subject={NAME}", query="?limit=58")
        expect(page.locator(".progress button.cancel")).to_be_visible()
        # Leave for a view that needs no model (the cancelled job may hold the subject's lock
        # until its current step ends).
        with page.expect_request(lambda r: r.method == "DELETE" and "/api/jobs/" in r.url):
            page.evaluate(f"location.hash = 'arithmetic?subject={NAME}'")
        expect(page.locator("#out-size")).to_be_visible()
    finally:
        page.unroute("**/api/jobs/*/events")
        for r in held:
            r.abort()


def test_server_error_is_shown_readably(page: Any, url: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    _open(page, url, f"image?subject={NAME}&image=test:99999")
    banner = page.locator("#error")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("no image 99999")
    expect(page.locator("#top5 li")).to_have_count(5)  # it went on with the first image
    text = tmp_path / "notes.txt"
    text.write_text("not an image at all\n")
    page.set_input_files("#upload", str(text))
    expect(banner).to_be_visible()
    said = banner.inner_text()
    assert "object at 0x" not in said and "HTTP" not in said and "undefined" not in said
    banner.locator("button.close").click()
    expect(banner).to_be_hidden()


def test_broken_subject_is_listed_and_never_blocks(page: Any, url: str) -> None:
    from playwright.sync_api import expect

    listed = {s["name"]: s for s in _api(url, "/api/subjects")}
    assert listed[HALF]["status"] == "unfinished" and listed[NAME]["status"] == "ok"
    _open(page, url, f"network?subject={HALF}")
    expect(page.locator("#error")).to_contain_text(f"{HALF} cannot be opened")
    expect(page.locator("#error")).to_contain_text("has not finished")
    option = page.locator(f'#subject option[value="{HALF}"]')
    assert option.is_disabled()
    assert "has not finished" in option.inner_text()
    expect(page.locator("h2")).to_contain_text(NAME)  # a good one opened instead
    assert f"subject={NAME}" in page.url
    page.locator("#subject-note summary").click()
    expect(page.locator(f'#subject-note li[data-subject="{HALF}"]')).to_be_visible()
    # With no subject named, the first good one opens (the unfinished one is listed first).
    _open(page, url, "network")
    expect(page.locator("h2")).to_contain_text(NAME)


def test_subject_without_images_says_so(page: Any, url: str) -> None:
    from playwright.sync_api import expect

    _open(page, url, f"image?subject={RESNET}")
    expect(page.locator("#no-images")).to_be_visible()
    expect(page.locator("#stage")).to_be_hidden()
    expect(page.locator("#upload-note")).to_contain_text("32×32")
    _open(page, url, f"embedding?subject={RESNET}")
    expect(page.locator("#no-images")).to_be_visible()
    _no_undefined(page)


# ---------------------------------------------------------------- 2. the image view


def test_image_view_for_a_learner(page: Any, url: str, photo: Path) -> None:
    from playwright.sync_api import expect

    _open(page, url, f"image?subject={NAME}&image=test:0")
    expect(page.locator("#top5 li")).to_have_count(5)
    layers = page.locator("#activations section.actlayer")
    expect(layers.first).to_be_visible()
    n = layers.count()
    assert n >= 5
    # A colour bar per layer with its min and max; zero marked where the map has negative values.
    bars = page.locator("#activations .colourbar[data-min]")
    assert bars.count() >= n - 1
    for i in range(bars.count()):
        lo = float(bars.nth(i).get_attribute("data-min"))
        hi = float(bars.nth(i).get_attribute("data-max"))
        assert lo <= hi
        assert bars.nth(i).locator(".min").inner_text().startswith("min")
        assert bars.nth(i).locator(".zero").count() == (1 if lo < 0 < hi else 0)
    # A unit of conv2 -> its box inside the stage, in the URL.
    page.locator('canvas[data-layer="conv2"]').click(position={"x": 3, "y": 3})
    box = page.locator("#rf-box")
    expect(box).to_be_visible()
    stage = page.locator("#stage").bounding_box()
    rf = box.bounding_box()
    assert stage is not None and rf is not None
    assert rf["x"] >= stage["x"] - 1 and rf["y"] >= stage["y"] - 1
    assert rf["x"] + rf["width"] <= stage["x"] + stage["width"] + 1
    expect(page.locator("#rf-note")).to_contain_text("14×14")
    assert "layer=conv2" in page.url and "row=0" in page.url and "col=0" in page.url
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(SHOTS / "serve-image-rf.png"))
    # The last conv (1 x 1 map, field larger than the image): the box is the whole image.
    page.locator('canvas[data-layer="conv3"]').click(position={"x": 2, "y": 2})
    expect(page.locator("#rf-note")).to_contain_text("covers the whole image")
    rf = page.locator("#rf-box").bounding_box()
    assert rf is not None and abs(rf["width"] - stage["width"]) < 2
    # Attribution with its bar.
    page.locator('button[data-method="gradcam"]').click()
    expect(page.locator('img.overlay[data-method="gradcam"]')).to_be_visible()
    expect(page.locator("#attr-bar .colourbar")).to_be_visible()
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(SHOTS / "serve-image-gradcam.png"))
    # The upload note, then an upload.
    expect(page.locator("#upload-note")).to_contain_text("prepared exactly as the report")
    expect(page.locator("#upload-note")).to_contain_text("resized straight to 28×28")
    page.set_input_files("#upload", str(photo))
    page.wait_for_function("document.querySelector('#truth').textContent.includes('uploaded')")
    expect(page.locator("#top5 li")).to_have_count(5)
    _no_undefined(page)
    # Larger targets, and a zoom per map.
    conv1 = page.locator('canvas[data-layer="conv1"]')
    px = int(conv1.get_attribute("data-unit"))
    assert px >= 6  # CSS pixels a unit: a target a mouse can hit
    page.locator('button[aria-label="zoom in conv1"]').click()
    expect(page.locator('canvas[data-layer="conv1"]')).to_have_attribute("data-unit", str(2 * px))


def test_deep_link_opens_the_unit(page: Any, url: str) -> None:
    from playwright.sync_api import expect

    _open(page, url, f"image?subject={NAME}&image=test:3&layer=conv2&channel=5&row=4&col=2")
    expect(page.locator("#rf-box")).to_be_visible()
    expect(page.locator("#rf-note")).to_contain_text("conv2, channel 5, unit (4, 2)")
    expect(page.locator("#image-index")).to_have_value("3")
    expect(page.locator("#unit-panel")).to_be_visible()
    page.evaluate("window.scrollTo(0, 0)")
    # The unit's computation in real numbers, equal to the network's value.
    panel = page.locator("#unit-panel")
    expect(panel.locator("#unit-equal")).to_contain_text("equal ✓")
    expect(panel.locator(".unitchannel")).to_have_count(3)  # 3 of conv2's 6 input channels first
    assert panel.locator(".unitchannel").first.locator("table.kernel tr").count() == 5
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(SHOTS / "serve-image-unit.png"))
    panel.locator("button.more").click()
    expect(panel.locator(".unitchannel")).to_have_count(6)
    _no_undefined(page)


def test_unit_computation_on_a_resnet(page: Any, url: str, photo: Path) -> None:
    from playwright.sync_api import expect

    _open(page, url, f"image?subject={RESNET}")
    page.set_input_files("#upload", str(photo))
    expect(page.locator("#top5 li")).to_have_count(5)
    page.locator('canvas[data-layer="layer2.0.conv1"]').click(position={"x": 3, "y": 3})
    panel = page.locator("#unit-panel")
    expect(panel.locator("#unit-equal")).to_contain_text("equal ✓")
    expect(panel.locator("#unit-steps")).to_contain_text(re.compile("batchnorm", re.I))
    # A padded tap at the corner unit (0, 0): shown in grey.
    assert panel.locator("td.pad").count() > 0
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(SHOTS / "serve-unit-resnet20.png"))


# ---------------------------------------------------------------- 3. network and arithmetic


def test_network_view(page: Any, url: str) -> None:
    from playwright.sync_api import expect

    _open(page, url, f"network?subject={NAME}")
    expect(page.locator("g.layer")).to_have_count(13)  # the input and 12 layers
    conv1 = page.locator('g[data-layer="conv1"]')
    expect(conv1).to_contain_text("6 filters")
    expect(conv1).to_contain_text("kernel 5×5")
    expect(conv1).to_contain_text("stride 1")
    expect(conv1).to_contain_text("padding")
    expect(conv1).to_contain_text("6×28×28")  # C×H×W
    # Every text inside its box.
    inside = page.evaluate(
        """() => [...document.querySelectorAll('g.layer')].every(g => {
          const r = g.querySelector('rect').getBBox();
          return [...g.querySelectorAll('text')].every(t => t.getBBox().x + t.getBBox().width <= r.width);
        })"""
    )
    assert inside
    svg = page.locator("#network-svg")
    w0 = float(svg.get_attribute("width"))
    page.locator("#zoom-in").click()
    assert float(svg.get_attribute("width")) > w0
    page.locator("#zoom-fit").click()
    page.screenshot(path=str(SHOTS / "serve-network.png"))
    # Keyboard: focus the box, press Enter -> the layer view of conv1.
    conv1.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#layer-pick")).to_have_value("conv1")
    assert "layer=conv1" in page.url


def test_network_view_of_resnet(page: Any, url: str) -> None:
    from playwright.sync_api import expect

    _open(page, url, f"network?subject={RESNET}")
    expect(page.locator('g[data-layer="conv1"]')).to_be_visible()
    blocks = page.locator("g.layer.block")
    assert blocks.count() >= 3  # collapsed by default: a 60-layer network fits a screen
    height = float(page.locator("#network-svg").get_attribute("height"))
    first = blocks.first.get_attribute("data-block")
    blocks.first.focus()
    page.keyboard.press("Enter")
    expect(page.locator(f'g.blockframe[data-block="{first}"]')).to_be_visible()
    inner = page.locator("g.layer.block").first  # a residual block inside the stage
    inner.click()
    expect(page.locator("g.join").first).to_be_visible()  # its residual add
    assert float(page.locator("#network-svg").get_attribute("height")) > height
    page.screenshot(path=str(SHOTS / "serve-network-resnet20.png"))
    page.locator(f'g.blockframe[data-block="{first}"] rect.tab').click()
    expect(page.locator(f'g.blockframe[data-block="{first}"]')).to_have_count(0)
    page.locator("#expand-all").click()
    assert page.locator("g.layer.block").count() == 0


@pytest.mark.slow
def test_network_view_of_googlenet(page: Any, url: str) -> None:
    """130 layers in collapsed inception modules; one expands into its four branches side by side."""
    from playwright.sync_api import expect

    _open(page, url, f"network?subject={GOOGLENET}")
    expect(page.locator('g.block[data-block="inception3a"]')).to_be_visible(timeout=60_000)
    page.locator('g.block[data-block="inception3a"]').click()
    expect(page.locator('g.blockframe[data-block="inception3a"]')).to_be_visible()
    lanes = page.evaluate(
        r"""() => new Set([...document.querySelectorAll('g.block[data-block^="inception3a.branch"]')]
          .map(g => g.getAttribute('transform').match(/translate\(([-\d.]+)/)[1])).size"""
    )
    assert lanes == 4  # the four branches in four lanes
    page.screenshot(path=str(SHOTS / "serve-network-googlenet.png"))


def test_arithmetic_view(page: Any, url: str) -> None:
    from playwright.sync_api import expect

    _open(page, url, "arithmetic")
    expect(page.locator("#out-size")).to_have_text("2×4×4")
    page.locator('input[name="padding"]').fill("0")
    expect(page.locator("#out-size")).to_have_text("2×3×3")
    expect(page.locator("#params-unshared")).to_have_text(str(3 * 3 * 2 * 28))
    # Step and pause.
    page.locator("#play").click()
    expect(page.locator("#play")).to_have_text("play")
    before = int(page.locator("#where").get_attribute("data-position"))
    page.locator("#step").click()
    expect(page.locator("#where")).to_have_attribute("data-position", str((before + 1) % 9))
    expect(page.locator("#where")).to_contain_text("Σ of 27 products")
    # Never-seen pixels: 8 wide, kernel 3, stride 2 -> the last row and column are skipped.
    for name, v in {"size": "8", "kernel": "3", "stride": "2", "padding": "0"}.items():
        page.locator(f'input[name="{name}-number"]').fill(v)
        page.locator(f'input[name="{name}-number"]').dispatch_event("change")
    expect(page.locator("#where")).to_contain_text("never seen")
    page.screenshot(path=str(SHOTS / "serve-arithmetic.png"))
    # AlexNet's first layer: 227, 11, 4 -> 96×55×55.
    page.locator("#alexnet").click()
    expect(page.locator("#out-size")).to_have_text("96×55×55")
    # The notes' W×H×D text is translated into this page's C×H×W order.
    expect(page.locator("pre.explain")).to_contain_text("227x227x3 is 3×227×227")
    expect(page.locator("pre.explain")).to_contain_text("55x55x96 is 96×55×55")
    assert page.locator('input[name="size"]').input_value() == "227"
    assert page.locator('input[name="kernel"]').input_value() == "11"


# ---------------------------------------------------------------- 4. layer view


def test_layer_view(page: Any, url: str) -> None:
    from playwright.sync_api import expect

    _open(page, url, f"layer?subject={NAME}&layer=conv1&channel=2")
    expect(page.locator("figure.channel")).to_have_count(6)
    expect(page.locator("figure.channel img.actmax")).to_have_count(6)
    expect(page.locator("figure.channel img.filter")).to_have_count(6)
    expect(page.locator('figure.channel[data-channel="2"]')).to_have_class(re.compile("selected"))
    expect(page.locator("#grey-legend")).to_contain_text("outside the image")
    # Top patches with their activation value and class label.
    patches = page.locator('figure.channel[data-channel="2"] figure.patch')
    assert patches.count() >= 1
    values = [float(v) for v in patches.locator("figcaption b").all_inner_texts()]
    assert values == sorted(values, reverse=True)
    classes = _api(url, f"/api/subjects/{NAME}")["classes"]
    assert all(c in classes for c in patches.locator("figcaption span").all_inner_texts())
    page.screenshot(path=str(SHOTS / "serve-layer.png"))
    page.locator('figure.channel[data-channel="4"] > figcaption').click()
    assert "channel=4" in page.url
    page.locator('figure.channel[data-channel="4"] button.pic').first.click()
    dialog = page.locator("#enlarge")
    expect(dialog).to_be_visible()
    expect(dialog.locator("img")).to_be_visible()
    dialog.locator("button").click()
    expect(dialog).to_be_hidden()
    _no_undefined(page)


# ---------------------------------------------------------------- 5. embedding


def _a_point(page: Any) -> tuple[float, float]:
    page.wait_for_function(
        "(() => { const c = document.querySelector('#tsne'); if (!c) return false;"
        " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " for (let i = 3; i < d.length; i += 4) if (d[i] === 255) return true; return false; })()"
    )
    xy = page.evaluate(
        "(() => { const c = document.querySelector('#tsne');"
        " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " const w = c.width, h = c.height;"
        # the point nearest the centre: zooming about the centre keeps it in view
        " let best = null, bd = Infinity;"
        " for (let i = 3; i < d.length; i += 4) if (d[i] === 255) {"
        "   const p = (i - 3) / 4, x = p % w + 1, y = Math.floor(p / w) + 1;"
        "   const dd = (x - w / 2) ** 2 + (y - h / 2) ** 2; if (dd < bd) { bd = dd; best = [x, y]; } }"
        " return best; })()"
    )
    box = page.locator("#tsne").bounding_box()
    return box["x"] + xy[0], box["y"] + xy[1]


def test_embedding_view(page: Any, url: str) -> None:
    from playwright.sync_api import expect

    _open(page, url, f"embedding?subject={NAME}", query="?limit=300")
    x, y = _a_point(page)
    page.mouse.move(x, y)
    tip = page.locator("#tsne-tip")
    expect(tip.locator("img")).to_be_visible()
    page.wait_for_function("document.querySelector('#tsne-tip img').naturalWidth === 28")
    before = tip.bounding_box()
    page.mouse.wheel(0, -300)  # zoom in about the cursor: the tooltip stays with its point
    page.wait_for_timeout(200)
    after = tip.bounding_box()
    assert before is not None and after is not None
    assert abs(after["x"] - before["x"]) < 40 and abs(after["y"] - before["y"]) < 40
    page.mouse.click(x, y)
    expect(page.locator("#neighbours figure.nb")).to_have_count(17)  # query + 8 + 8
    expect(page.locator("#neighbours figure.nb figcaption .cls").first).not_to_be_empty()
    assert "image=test" in page.url
    # Search by index: the query moves there.
    page.locator("#search").fill("#7")
    page.locator("#search").press("Enter")
    expect(
        page.locator("#neighbours .strip").first.locator('figure.nb[data-image="7"]')
    ).to_be_visible()
    expect(page.locator("#search-result")).to_contain_text("#7")
    # Centred on it and zoomed in: the points near it are drawn as their images, the query and its
    # neighbours ringed.
    page.wait_for_function("+document.querySelector('#tsne').dataset.thumbnails > 0")
    page.screenshot(path=str(SHOTS / "serve-embedding.png"), full_page=True)
    # Search by class: that class highlighted.
    cls = _api(url, f"/api/subjects/{NAME}")["classes"][1]
    page.locator("#search").fill(cls)
    page.locator("#search").press("Enter")
    expect(page.locator("#search-result")).to_contain_text(f"images of {cls}")
    expect(page.locator("#legend .key.on")).to_have_count(1)
    page.locator("#colour-by").select_option("correct")
    expect(page.locator("#legend")).to_contain_text("wrong")
    assert "colour=correct" in page.url
    href = page.locator("#projector").get_attribute("href")
    assert href.startswith(f"/api/subjects/{NAME}/projector.zip")


# ---------------------------------------------------------------- 6. narrow windows


def test_layout_from_760_pixels(page: Any, url: str) -> None:
    from playwright.sync_api import expect

    _open(page, url, f"image?subject={NAME}&image=test:0")
    expect(page.locator('canvas[data-layer="conv2"]')).to_be_visible()
    wide = page.locator('canvas[data-layer="conv2"]').evaluate("c => c.width")
    page.set_viewport_size({"width": 760, "height": 900})
    page.wait_for_function(
        f"document.querySelector('canvas[data-layer=\"conv2\"]').width !== {wide}"
    )
    for view in ("image", "network", "layer", "arithmetic"):
        page.evaluate(f"location.hash = '{view}?subject={NAME}'")
        page.wait_for_timeout(400)
        overflow = page.evaluate("document.documentElement.scrollWidth")
        wide = page.evaluate(
            "[...document.querySelectorAll('body *')]"
            ".filter(e => e.getBoundingClientRect().right > 761).slice(0, 5)"
            ".map(e => e.tagName + '#' + e.id + '.' + e.className)"
        )
        assert overflow <= 760 + 1, f"{view} is {overflow} px wide at 760: {wide}"
        page.screenshot(path=str(SHOTS / f"serve-{view}-760.png"))
