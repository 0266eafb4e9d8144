"""`convlens report`: the self-contained HTML page.

Oracles: the numbers on the page are checked against independent computations (scikit-learn's
confusion matrix and accuracy on predictions from a plain forward pass, `sum(p.numel())` and the
published LeNet-5 parameter count, the accuracy the training loop measured); every embedded picture
must decode with Pillow; a real browser (Debian's chromium through Playwright) opens the page from a
file URL with the network blocked and must load every image, log no console error, make no request.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convlens.cli.main import main
from convlens.render.report import (
    ReportOptions,
    Section,
    SectionSpec,
    build_report,
    report_context,
    write_report,
)
from convlens.render.report_sections import SECTIONS

SECTION_IDS = [s.id for s in SECTIONS]
SECTION_TITLES = [s.title for s in SECTIONS]
REPO = Path(__file__).resolve().parents[1]
# Cheap settings for tests on random-weight runs: same code paths, less work.
CHEAP = ReportOptions(
    tsne_images=200, neighbor_pool=500, neighbor_queries=2, neighbors_k=3, top_channels=2,
    top_images=3, actmax_channels=2, actmax_steps=2, attribution_images=1, erf_samples=2,
    activation_images=1,
)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


class PageParser(HTMLParser):
    """Collects what matters for self-containment: tags, image sources, links, section statuses."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.images: list[dict[str, str | None]] = []
        self.urls: list[str] = []
        self.sections: dict[str, str] = {}  # id -> status
        self.h2: list[str] = []
        self._in_h2 = False
        self.meta: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.images.append(a)
        if tag == "meta":
            self.meta.append(a)
        for key in ("src", "href", "srcset", "data", "action", "poster"):
            if a.get(key):
                self.urls.append(str(a[key]))
        if tag == "section":
            status = next(c for c in str(a["class"]).split() if c.startswith("status-"))
            self.sections[str(a["id"])] = status.removeprefix("status-")
        if tag == "h2":
            self._in_h2 = True
            self.h2.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2":
            self._in_h2 = False

    def handle_data(self, data: str) -> None:
        if self._in_h2:
            self.h2[-1] += data


def flat(text: str) -> str:
    """Rich wraps long lines on a narrow terminal; compare messages with whitespace collapsed."""
    return " ".join(text.split())


def parse(html: str) -> PageParser:
    p = PageParser()
    p.feed(html)
    return p


def section_html(html: str, section_id: str) -> str:
    m = re.search(rf'<section id="{re.escape(section_id)}".*?</section>', html, re.S)
    assert m, f"no section {section_id}"
    return m.group(0)


def make_run(
    root: Path,
    *,
    weights: bool = True,
    checkpoint: bool = False,
    metrics: bool = True,
    status: str = "complete",
    data: str = "sample",
    seed: int = 0,
) -> tuple[Path, torch.nn.Module]:
    """A run directory of LeNet-5 with random weights, following run_dir.py's schema."""
    from safetensors.torch import save_file

    from convlens import models
    from convlens.data import load
    from convlens.train.checkpoint import save_checkpoint

    ds = load("sample", split="train")
    torch.manual_seed(seed)
    model = models.create("lenet5", num_classes=10, in_channels=1).eval()
    root.mkdir(parents=True, exist_ok=True)
    history = [
        {"epoch": e, "train_loss": 2.0 / (e + 1), "train_acc": 0.5 + e / 10, "test_loss": 2.1 / (e + 1),
         "test_acc": 0.5 + e / 11, "lr": 0.1 / (e + 1), "images_per_s": 1000.0, "seconds": 1.0}
        for e in range(3)
    ]  # fmt: skip
    raw = {
        "format": 1, "status": status,
        "model": {"name": "lenet5", "options": {"num_classes": 10, "in_channels": 1}},
        "data": {"name": data, "classes": ds.classes, "mean": list(ds.mean), "std": list(ds.std),
                 "image_shape": [1, 28, 28], "root": None},
        "train": {"epochs": 5}, "seed": seed, "versions": {"convlens": "test"},
    }  # fmt: skip
    (root / "run.json").write_text(json.dumps(raw))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if weights:
        save_file(state, str(root / "model.safetensors"))
    if checkpoint:
        save_checkpoint(
            root / "checkpoint.pt", {"model": state, "epoch": 3, "batch": 0, "history": history}
        )
    if metrics:
        (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    return root, model


def oracle_accuracy(model: torch.nn.Module) -> tuple[float, np.ndarray]:
    """Accuracy and per-class recall on the sample's test split, from a plain forward pass + sklearn."""
    from sklearn.metrics import accuracy_score, confusion_matrix

    from convlens.data import load, normalize

    ds = load("sample", split="test")
    train = load("sample", split="train")
    with torch.no_grad():
        pred = model.eval()(normalize(ds.images, train.mean, train.std)).argmax(1).numpy()
    cm = confusion_matrix(ds.labels.numpy(), pred, labels=list(range(10)))
    return float(accuracy_score(ds.labels.numpy(), pred)), cm.diagonal() / cm.sum(1)


# --------------------------------------------------------------------------------------------------
# The report of a trained run, written once through the real command line
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_report(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "nested" / "report.html"
    assert main(["report", str(trained_run), "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_report_of_trained_run_has_every_section(trained_report: Path) -> None:
    html = trained_report.read_text()
    page = parse(html)
    assert list(page.sections) == SECTION_IDS
    for sid, status in page.sections.items():
        assert status == "ok", section_html(html, sid)[:2000]
    # Each section is led by its sentences and its heading; the contents list links to every one.
    for spec in SECTIONS:
        assert spec.intro in unescape(html)
        assert f'href="#{spec.id}"' in html
    assert [re.sub(r"^\d+\.", "", h).strip() for h in page.h2[1:]] == SECTION_TITLES
    assert not list(trained_report.parent.glob(".*.tmp"))  # written atomically, no temp file left


@pytest.mark.slow
def test_report_numbers_match_independent_oracles(trained_run: Path, trained_report: Path) -> None:
    from convlens.train.run_dir import load_run

    html = trained_report.read_text()
    run = load_run(trained_run)
    acc, per_class = oracle_accuracy(run.model)
    confusion = section_html(html, "confusion")
    assert f"Test accuracy {100 * acc:.2f} %" in confusion
    for name, r in zip(run.data.classes, per_class, strict=True):
        assert re.search(
            rf"<td>{re.escape(name)}</td><td class=num>200</td><td class=num>{100 * r:.1f} %</td>",
            confusion,
        )
    # The training loop measured the same accuracy on the same split.
    assert abs(float(run.history[-1]["test_acc"]) - acc) < 1e-6
    assert acc >= 0.85
    # Parameter total: torch's own count, and the published 61,706 of the modern LeNet-5.
    n_params = sum(p.numel() for p in run.model.parameters())
    assert n_params == 61_706
    summary = section_html(html, "summary")
    assert f"<td class=num>{n_params:,}</td>" in summary
    # conv1: 6 maps of 28x28, 5x5x1 weights + 1 bias each: 4,704 neurons, 156 shared, 4,704*26 unshared.
    assert (
        "<td>conv1</td><td>Conv2d</td><td>6x28x28</td><td class=num>4,704</td><td class=num>156</td><td class=num>122,304</td>"
        in summary
    )


@pytest.mark.slow
def test_report_is_self_contained(trained_report: Path) -> None:
    html = trained_report.read_text()
    page = parse(html)
    assert not {"script", "link", "iframe", "object", "embed", "video", "audio", "base"} & set(
        page.tags
    )
    assert all(u.startswith(("#", "data:image/png;base64,")) for u in page.urls), page.urls
    assert (
        "url(" not in html
        and "@import" not in html
        and "http://" not in html
        and "https://" not in html
    )
    csp = [m for m in page.meta if m.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in str(csp[0]["content"])
    assert len(page.images) >= 10
    for im in page.images:
        assert im.get("alt")
        png = base64.b64decode(str(im["src"]).split(",", 1)[1], validate=True)
        with Image.open(io.BytesIO(png)) as pic:
            pic.load()
            assert pic.format == "PNG" and pic.width > 20 and pic.height > 20
    assert "@media print" in html


# --------------------------------------------------------------------------------------------------
# A real browser
# --------------------------------------------------------------------------------------------------

CHROMIUM = os.environ.get("CONVLENS_CHROMIUM", "/usr/bin/chromium")


def _browser_or_skip() -> str:
    ci = bool(os.environ.get("CI"))
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        if ci:
            pytest.fail("chromium is required on CI (.ci/run installs Debian's chromium)")
        pytest.skip(
            "Debian's chromium is not installed (apt-get install chromium); CI runs this test"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        if ci:
            raise
        pytest.skip("the playwright package is not installed (pip install -e '.[dev]')")
    return CHROMIUM if Path(CHROMIUM).exists() else str(shutil.which("chromium"))


@pytest.mark.browser
@pytest.mark.slow
def test_report_in_a_real_browser_offline(trained_report: Path) -> None:
    executable = _browser_or_skip()
    from playwright.sync_api import sync_playwright

    requests: list[str] = []
    errors: list[str] = []
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
                if req.url.startswith(("file://", "data:")):
                    r.continue_()  # type: ignore[attr-defined]
                else:
                    requests.append(req.url)
                    r.abort()  # type: ignore[attr-defined]

            page.route("**/*", route)
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(f"failed: {r.url}"))
            page.goto(trained_report.as_uri(), wait_until="load")
            images = page.evaluate(
                "Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])"
            )
            headings = page.locator("section h2").all_inner_texts()
            toc = page.locator("nav.toc a").count()
            artifacts = REPO / "artifacts"
            artifacts.mkdir(exist_ok=True)
            page.screenshot(path=str(artifacts / "report.png"), full_page=True)
            page.emulate_media(media="print")
            printed_width = page.evaluate(
                "document.querySelector('main').getBoundingClientRect().width"
            )
        finally:
            browser.close()
    assert requests == []
    assert errors == []
    assert len(images) >= 10
    assert all(complete and width > 0 for _, complete, width in images), images
    assert [re.sub(r"^\d+\.\s*", "", h) for h in headings] == SECTION_TITLES
    assert toc == len(SECTIONS)
    assert printed_width > 0
    assert (REPO / "artifacts" / "report.png").stat().st_size > 10_000


# --------------------------------------------------------------------------------------------------
# Bad input: not a run, missing files, an interrupted run, data that cannot be found
# --------------------------------------------------------------------------------------------------


def test_not_a_run_directory_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(tmp_path / "nope")]) == 1
    err = flat(capsys.readouterr().err)
    assert "no run directory" in err and "Traceback" not in err
    assert main(["report", str(tmp_path)]) == 1
    err = flat(capsys.readouterr().err)
    assert "no run.json" in err and "Traceback" not in err
    (tmp_path / "run.json").write_text("{not json")
    assert main(["report", str(tmp_path)]) == 1
    assert "corrupt" in flat(capsys.readouterr().err)


def test_out_that_is_a_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, _ = make_run(tmp_path / "run")
    assert main(["report", str(run), "--out", str(tmp_path)]) == 1
    assert "is a folder" in flat(capsys.readouterr().err)


def test_bad_device_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = make_run(tmp_path / "run", weights=False)
    assert main(["report", str(run), "--device", "tpu"]) == 1
    assert "unknown device 'tpu'" in flat(capsys.readouterr().err)
    assert not (run / "report.html").exists()


def test_missing_weights_are_an_error_saying_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The report loads a run with load_run: no weights (an interrupted run) is one clear line,
    never a report quietly drawn from checkpoint.pt."""
    run, _ = make_run(tmp_path / "run", weights=False, checkpoint=True, status="running")
    assert main(["report", str(run)]) == 1
    err = flat(capsys.readouterr().err)
    assert "has no model.safetensors" in err and "--resume" in err and "Traceback" not in err
    assert not (run / "report.html").exists()


def test_missing_metrics_skip_only_the_curves(tmp_path: Path) -> None:
    run, _ = make_run(tmp_path / "run", metrics=False, status="failed")
    _, report = write_report(run, options=CHEAP, strict=True)
    assert report.outcome("training").status == "skipped"
    assert "no metrics.jsonl" in report.outcome("training").reason
    assert report.outcome("filters").status == "ok"
    assert any("metrics.jsonl is missing" in p for p in report.problems)
    assert any("status is 'failed'" in p for p in report.problems)


def test_torn_metrics_line_is_ignored(tmp_path: Path) -> None:
    run, _ = make_run(tmp_path / "run")
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 3, "train_lo')  # a crash mid-write
    _, report = write_report(run, options=CHEAP, strict=True)
    assert report.outcome("training").status == "ok"
    assert "3 epochs" in report.outcome("training").body


@pytest.mark.parametrize("damage", ["truncated", "mismatched"])
def test_unusable_weights_are_an_error_not_a_fallback(
    tmp_path: Path, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Truncated or another model's weights stop the report with the reason, even when a readable
    checkpoint.pt sits beside them (no quiet fallback)."""
    from safetensors.torch import save_file

    run, _ = make_run(tmp_path / "run", checkpoint=True)
    w = run / "model.safetensors"
    if damage == "truncated":
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    else:
        save_file({"conv1.weight": torch.zeros(3, 1, 5, 5)}, str(w))
    assert main(["report", str(run)]) == 1
    err = flat(capsys.readouterr().err)
    assert ("truncated or corrupt" if damage == "truncated" else "does not hold weights") in err
    assert "Traceback" not in err and not (run / "report.html").exists()


def test_data_that_cannot_be_found_skips_only_data_sections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "no-data"
    empty.mkdir()
    monkeypatch.setenv("CONVLENS_DATA", str(empty))
    run, _ = make_run(tmp_path / "run", data="mnist")
    _, report = write_report(run, options=CHEAP, data_root=str(empty), strict=True)
    statuses = {s.id: s.status for s in report.sections}
    for sid in ("summary", "training", "filters", "erf"):
        assert statuses[sid] == "ok", report.outcome(sid).reason
    for sid in ("confusion", "activations", "neighbors", "tsne", "top-patches", "attribution"):
        assert statuses[sid] == "skipped"
        assert "could not be loaded" in report.outcome(sid).reason


def test_model_without_conv_layers_says_why(tmp_path: Path) -> None:
    """Any nn.Module: a fully-connected network gets every section that applies, and reasons for the rest."""
    from convlens.data import load
    from convlens.subjects import from_run
    from convlens.train.run_dir import DataInfo, Run

    ds = load("sample", split="train")
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(784, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
    ).eval()
    raw = {"status": "complete", "model": {"name": "mlp", "options": {}},
           "data": {"name": "sample", "classes": ds.classes, "mean": list(ds.mean), "std": list(ds.std),
                    "image_shape": [1, 28, 28], "root": None}}  # fmt: skip
    info = DataInfo("sample", ds.classes, ds.mean, ds.std, (1, 28, 28))
    run = Run(
        path=tmp_path, model=mlp, model_name="mlp", model_options={}, data=info, config={}, raw=raw
    )
    report = build_report(report_context(from_run(run), options=CHEAP), strict=True)
    statuses = {s.id: s.status for s in report.sections}
    assert statuses["summary"] == statuses["confusion"] == "ok"
    for sid in ("filters", "activations", "top-patches", "actmax", "attribution", "erf"):
        assert statuses[sid] == "skipped", sid
        assert "no convolutional layer" in report.outcome(sid).reason
    acc, _ = oracle_accuracy(mlp)
    assert f"Test accuracy {100 * acc:.2f} %" in report.outcome("confusion").body


def test_a_failing_section_does_not_stop_the_report(tmp_path: Path) -> None:
    from convlens.subjects import open_subject

    run, _ = make_run(tmp_path / "run")
    sub = open_subject(str(run))

    def broken(ctx: object) -> Section:
        raise RuntimeError("boom <b>")

    specs = [SectionSpec("broken", "Broken", "Fails on purpose.", broken), SECTIONS[1]]
    report = build_report(report_context(sub, options=CHEAP), sections=specs)
    assert [s.status for s in report.sections] == ["failed", "ok"]
    assert "RuntimeError: boom &lt;b&gt;" in report.html  # escaped, shown in place of the section
    with pytest.raises(RuntimeError):
        build_report(report_context(sub, options=CHEAP), sections=specs, strict=True)
